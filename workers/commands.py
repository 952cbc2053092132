"""The worker's own command, `guardstream worker`: a long-lived worker from the settings, after its dependencies
answered (mounted by `guardstream/cli.py`)."""

from __future__ import annotations

import typer

from runtime.service import check_config_only, load_settings, start_service
from workers.dependencies import service_dependencies
from workers.settings import WorkerSettings

CHECK_CONFIG_HELP = "validate the settings, print them (secrets masked) as one JSON line and exit: no connection"


def worker_command(
    backend: str = typer.Option(None, help="guard backend (default: settings, 'lite')"),
    check_config: bool = typer.Option(False, "--check-config", help=CHECK_CONFIG_HELP),
) -> None:
    """Run a long-lived worker against the brokers in settings (GUARDSTREAM_* or GUARDSTREAM_CONFIG_FILE).
    At start the brokers, Redis (when the cache is on) and the S3 endpoint (when set) must answer, else exit 4."""
    if check_config:
        check_config_only("worker", WorkerSettings)
        return
    from workers.worker import Worker

    settings = load_settings(WorkerSettings)
    if backend:
        settings.guard.backend = backend
    start_service(lambda: Worker(settings), settings,
                  service_dependencies(settings.kafka, settings.cache, settings.fetch))
