"""The trainer: audit labels in, better models out. The service (`service.py`) stores labels as a data set
(`resolve.py`, reading through `topics/records.py`; `dataset.py`); jobs (`job_interface.py`, named in `jobs.py`:
`lite_refit.py`, `reasoning_job.py`) train candidates that `pipeline.py`
evaluates (`evaluate.py`, `eval_report.py`), gates (`gate.py`) and releases. Also: the shipped lite model's
build and evaluation (`lite_build.py`: data from `lite_data.py`, `lite_pairs.py` and `lite_contrast.py`,
fine-tuning in `lite_tune.py`, operating points in `lite_points.py`, the report in `lite_report.py`), the gate's
regression set (`regression.py`), `guardstream eval`, `guardstream audit` (`audit_file.py`) and the label export
of `guardstream replay` (`export.py`). The retraining demo is `guardstream/demo_loop.py`."""
