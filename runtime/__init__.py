"""What every service (worker, trainer, console) shares to run as a process: the settings base (`settings.py`),
logging with redaction (`logs.py`), the health and metrics server (`health.py`), dependency checks at start
(`dependencies.py`) and their state while running (`dependency_state.py`), signals and shutdown
(`service.py`), backoff (`backoff.py`), and how commands end (`cli_errors.py`, `input_lines.py`). It stands
on `topics/` (the Kafka settings and clients) and `schemas/`; no service is imported here."""
