"""The trainer: audit labels in, better models out. The service (`service.py`) stores labels as a data set
(`resolve.py`, `dataset.py`); jobs (`jobs.py`, `lite_refit.py`) train candidates that `pipeline.py`
evaluates (`evaluate.py`, `eval_report.py`), gates (`gate.py`) and releases. Also: the shipped lite model's
build and evaluation (`lite_build.py`: data from `lite_data.py` and `lite_pairs.py`, heads from
`lite_head.py`, figures from `lite_eval.py`), `guardstream eval`, `guardstream audit` (`audit_file.py`) and the label export
of `guardstream replay` (`export.py`)."""
