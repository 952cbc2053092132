"""The trainer service: labelled data in, better models out. Today: the lite guard's text head."""
