"""A TCP proxy on loopback that a test puts in front of one dependency (broker, Redis, S3 server, PostgreSQL)
and turns faults on and off: every fault in the suite is injected the same way, whatever speaks through it.

The proxy runs its own event loop in a thread, so a test drives it the same way whether the service under test
runs in the test's loop, in another thread or in a subprocess. Faults:

- `delay(s)`: every chunk, either way, waits `s` seconds before it is forwarded (a slow dependency);
- `blackhole()`: connections stay open and bytes go in, nothing comes back (a hung dependency);
- `reset()`: open connections are reset (RST) and new ones are accepted and reset at once;
- `refuse()`: open connections are closed and the port stops listening (connection refused);
- `http_500()`: every connection gets one `500 Internal Server Error` and is closed (an HTTP dependency's outage);
- `restore()`: back to forwarding; the port is the same as before the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from topics.local_broker import free_loopback_port

CHUNK = 65536
HTTP_500 = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
            b"Connection: close\r\n\r\ninjected server error")


@dataclass
class _Pipe:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class FaultProxy:
    """`127.0.0.1:port` forwards to `upstream_host:upstream_port` until a fault is turned on."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        if upstream_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to loopback only, not {upstream_host}")
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_loopback_port()
        self.mode = "forward"
        self.delay_s = 0.0
        self.connections = 0  # accepted since start
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{self.port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control (from any thread) -------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close(listening=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def delay(self, seconds: float) -> None:
        self.delay_s, self.mode = seconds, "delay"

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def reset(self) -> None:
        self.mode = "reset"
        self._call(self._close(listening=False, rst=True))

    def refuse(self) -> None:
        self.mode = "refuse"
        self._call(self._close(listening=True))

    def http_500(self) -> None:
        self.mode = "http_500"
        self._call(self._close(listening=False))

    def restore(self) -> None:
        was = self.mode
        self.mode, self.delay_s = "forward", 0.0
        if was == "blackhole":  # what was swallowed is lost: the clients must see their connections end
            self._call(self._close(listening=False))
        if self._server is None:
            self._call(self._listen())

    @contextmanager
    def fault(self, name: str, *args: float) -> Iterator[FaultProxy]:
        """`with proxy.fault("blackhole"):` the fault while the block runs, forwarding again after it."""
        getattr(self, name)(*args)
        try:
            yield self
        finally:
            self.restore()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    # -- the proxy's loop ----------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self, listening: bool, rst: bool = False) -> None:
        if listening and self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            _abort(writer, rst)
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":
            _abort(writer, rst=True)
            return
        if self.mode == "http_500":
            await reader.read(CHUNK)
            writer.write(HTTP_500)
            await writer.drain()
            _abort(writer, rst=False)
            return
        self._open.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._open.discard(writer)
            _abort(writer, rst=True)
            return
        self._open.add(up_writer)
        client, upstream = _Pipe(reader, writer), _Pipe(up_reader, up_writer)
        await asyncio.gather(self._pump(client, upstream), self._pump(upstream, client), return_exceptions=True)
        for w in (writer, up_writer):
            self._open.discard(w)
            _abort(w, rst=False)

    async def _pump(self, source: _Pipe, target: _Pipe) -> None:
        while True:
            data = await source.reader.read(CHUNK)
            if not data:
                target.writer.close()
                return
            while self.mode == "blackhole":  # swallow: nothing is forwarded until the fault ends
                await asyncio.sleep(0.05)
                if source.writer.is_closing():
                    return
            if self.mode == "delay" and self.delay_s:
                await asyncio.sleep(self.delay_s)
            target.writer.write(data)
            await target.writer.drain()


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        with contextlib.suppress(OSError):  # SO_LINGER 0: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort() if rst else writer.close()


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A started proxy in front of `host:port` (or a URL's host and port), stopped after the block."""
    host, port = _host_port(upstream)
    with FaultProxy(host, port) as proxy:
        yield proxy


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)
