"""The fault proxy does what each fault says, to a real TCP echo server on loopback, and only ever forwards there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.fault_proxy import FaultProxy, _host_port


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port) as started:
        yield started


async def roundtrip(port: int, payload: bytes = b"ping", timeout_s: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout_s)
    finally:
        writer.close()


async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    assert await roundtrip(proxy.port, b"x" * 200_000) == b"x" * 200_000


async def test_delay_holds_each_chunk(proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    started = time.monotonic()
    assert await roundtrip(proxy.port) == b"ping"
    assert time.monotonic() - started >= 0.6  # there and back
    proxy.restore()
    assert proxy.delay_s == 0


async def test_blackhole_answers_nothing_until_restored(proxy: FaultProxy) -> None:
    with proxy.fault("blackhole"), pytest.raises(TimeoutError):
        await roundtrip(proxy.port, timeout_s=0.5)
    assert await roundtrip(proxy.port) == b"ping"


async def test_reset_cuts_open_connections_and_new_ones(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    with proxy.fault("reset"):
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError, BrokenPipeError)):
            await roundtrip(proxy.port)
    writer.close()
    assert await roundtrip(proxy.port) == b"ping"


async def test_refuse_stops_listening_on_the_same_port(proxy: FaultProxy) -> None:
    with proxy.fault("refuse"), pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(proxy.port) == b"ping"


async def test_http_500_answers_every_request_with_a_server_error(proxy: FaultProxy) -> None:
    with proxy.fault("http_500"):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /bucket/key HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 2)).startswith(b"HTTP/1.1 500 ")
        writer.close()
    assert await roundtrip(proxy.port) == b"ping"


def test_forwards_to_loopback_only() -> None:
    for host in ("10.0.0.1", "192.168.1.10", "169.254.169.254", "example.com"):
        with pytest.raises(ValueError, match="loopback only"):
            FaultProxy(host, 80)


def test_reads_the_upstream_from_an_address_or_a_url() -> None:
    assert _host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert _host_port("redis://127.0.0.1:6379/0") == ("127.0.0.1", 6379)
    assert _host_port("postgresql://postgres@127.0.0.1:5432/db") == ("127.0.0.1", 5432)
    assert _host_port("http://[::1]:9000") == ("::1", 9000)
