"""The top floor: the `guardstream` command, which mounts each package's commands (`cli.py`), the commands that
span packages (`replay_cli.py`; `topics_cli.py` and `broker_cli.py`, whose Kafka plumbing is `topics/`), and the
demos (`demo.py`, the local stack and a worker; `demo_loop.py`, the retraining loop on top of it). Nothing below
imports this package."""
