"""Image fetching: the address filter as pure functions, then real fetches from moto's S3, a folder, and an
https server on loopback with a self-signed certificate."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.conftest import S3
from tests.factories import image_ref, png, sha256
from tests.tls import SelfSignedCert, self_signed_cert
from topics.local_broker import free_loopback_port
from workers.errors import (
    FetchError,
    FetchUnavailable,
    ImageDecodeFailed,
    ImageDigestMismatch,
    ImageNotAllowed,
    ImageNotFound,
    ImageShapeRefused,
    ImageTooLarge,
)
from workers.fetch import FetchedImage, ImageFetcher, decode_image, fit_pixel_budget, s3_store
from workers.image_address import AddressRefused, FilteringResolver, address_allowed, resolve_location
from workers.settings import FetchSettings


@pytest.fixture
def rules(tmp_path: Path) -> FetchSettings:
    return FetchSettings(file_root=tmp_path / "root", https_allowed_hosts=["images.example.com"])


def test_allowed_locations_resolve_to_their_store(rules: FetchSettings) -> None:
    (rules.file_root / "a").mkdir(parents=True)
    s3 = resolve_location("s3://bucket/dir/cat%201.png", rules)
    assert (s3.scheme, s3.root, s3.path) == ("s3", "bucket", "dir/cat 1.png")
    local = resolve_location((rules.file_root / "a" / "b.png").as_uri(), rules)
    assert (local.scheme, local.path) == ("file", "a/b.png")
    https = resolve_location("https://Images.Example.com/x/y.png", rules)
    assert (https.root, https.path) == ("https://images.example.com", "x/y.png")


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example.net/x.png",
        "https://images.example.com.evil.net/x.png",
        "https://images.example.com:8443/x.png",
        "https://user:pw@images.example.com/x.png",
        "http://images.example.com/x.png",
        "ftp://images.example.com/x.png",
        "data:image/png;base64,AAAA",
        "/etc/passwd",
        "file:///etc/passwd",
        "file://otherhost/root/x.png",
        "s3://bucket-only",
    ],
)
def test_disallowed_locations_are_refused_before_any_io(uri: str, rules: FetchSettings) -> None:
    with pytest.raises(ImageNotAllowed):
        resolve_location(uri, rules)


def test_paths_cannot_escape_the_root(rules: FetchSettings, tmp_path: Path) -> None:
    rules.file_root.mkdir()
    (tmp_path / "secret.png").write_bytes(png())
    (rules.file_root / "link.png").symlink_to(tmp_path / "secret.png")
    for uri in [f"file://{rules.file_root}/../secret.png", (rules.file_root / "link.png").as_uri()]:
        with pytest.raises(ImageNotAllowed, match="outside"):
            resolve_location(uri, rules)


def test_file_images_are_off_without_a_root() -> None:
    with pytest.raises(ImageNotAllowed, match="disabled"):
        resolve_location("file:///tmp/x.png", FetchSettings())


def test_pixel_budget_keeps_aspect_and_never_upscales() -> None:
    assert fit_pixel_budget((100, 50), 10_000) == (100, 50)
    width, height = fit_pixel_budget((4000, 2000), 1_000_000)
    assert width * height <= 1_000_000 and abs(width / height - 2) < 0.01


@pytest.fixture
def s3_settings(s3: S3, tmp_path: Path) -> FetchSettings:
    return FetchSettings(s3_endpoint=s3.endpoint, s3_access_key_id="test", s3_secret_access_key="test",
                         s3_allow_http=True, file_root=tmp_path, max_bytes=50_000, max_pixels=1_000_000,
                         pixel_budget=10_000, timeout_s=2, backoff_base_s=0.01)


async def test_s3_images_are_fetched_verified_and_resized(s3: S3, s3_settings: FetchSettings) -> None:
    data = png(400, 200)
    fetched = await ImageFetcher(s3_settings).fetch(image_ref(s3.put("f/wide.png", data), data))
    assert fetched.sha256 == sha256(data) and fetched.original_size == (400, 200)
    assert fetched.image.size[0] * fetched.image.size[1] <= 10_000 and fetched.image.mode == "RGB"


async def test_file_images_under_the_root_are_fetched(s3_settings: FetchSettings) -> None:
    data = png(20, 10)
    path = s3_settings.file_root / "small.png"
    path.write_bytes(data)
    fetched = await ImageFetcher(s3_settings).fetch(image_ref(path.as_uri()))
    assert fetched.sha256 == sha256(data) and fetched.image.size == (20, 10)


@pytest.mark.parametrize(
    ("key", "body", "declared", "error"),
    [
        ("f/huge.bin", b"\0" * 60_000, None, ImageTooLarge),
        ("f/many-pixels.png", png(2000, 600), None, ImageTooLarge),
        ("f/junk.png", b"GIF89a but not really", None, ImageDecodeFailed),
        ("f/ok.png", png(), b"something else", ImageDigestMismatch),
    ],
)
async def test_bad_images_raise_typed_errors(
    s3: S3, s3_settings: FetchSettings, key: str, body: bytes, declared: bytes | None, error: type
) -> None:
    with pytest.raises(error):
        await ImageFetcher(s3_settings).fetch(image_ref(s3.put(key, body), declared))


async def test_missing_objects_are_not_found_and_not_retried(s3: S3, s3_settings: FetchSettings) -> None:
    with pytest.raises(ImageNotFound) as caught:
        await ImageFetcher(s3_settings).fetch(image_ref(f"s3://{s3.bucket}/nope.png"))
    assert not caught.value.retriable


async def test_an_unreachable_store_is_retried_then_reported_retriable(s3_settings: FetchSettings) -> None:
    s3_settings.s3_endpoint = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    s3_settings.max_attempts = 3
    with capture_logs() as logs, pytest.raises(FetchUnavailable) as caught:
        await ImageFetcher(s3_settings).fetch(image_ref("s3://images/x.png"))
    assert caught.value.retriable and caught.value.code == "fetch_unavailable"
    assert [entry["attempt"] for entry in logs if entry["event"] == "fetch_retry"] == [1, 2]


# -- https: origins are host and port ----------------------------------------------------------------------


def test_https_origins_are_host_and_port() -> None:
    rules = FetchSettings(https_allowed_hosts=["images.example.com", "cdn.example.com:8443", "[2606:4700::1]:8443"])
    assert resolve_location("https://images.example.com:443/a.png", rules).root == "https://images.example.com"
    assert resolve_location("https://CDN.example.com:8443/a.png", rules).root == "https://cdn.example.com:8443"
    assert resolve_location("https://[2606:4700:0::1]:8443/a.png", rules).root == "https://[2606:4700::1]:8443"
    for uri in ["https://images.example.com:8443/a.png", "https://cdn.example.com/a.png",
                "https://cdn.example.com:8444/a.png", "https://[2606:4700::1]/a.png"]:
        with pytest.raises(ImageNotAllowed, match="allow-list"):
            resolve_location(uri, rules)


def test_a_malformed_allow_list_entry_fails_when_the_fetcher_starts() -> None:
    with pytest.raises(ValueError, match="host or host:port"):
        ImageFetcher(FetchSettings(https_allowed_hosts=["https://images.example.com"]))


@pytest.fixture
def loopback_rules(tmp_path: Path) -> FetchSettings:
    """Rules under which a malformed URI that slipped through would reach nothing but loopback port 9."""
    return FetchSettings(file_root=tmp_path / "root", https_allowed_hosts=["localhost", "localhost:9"],
                         https_allow_private_addresses=True, max_attempts=1)


MALFORMED = [
    "https://[::1/x.png",
    "https://localhost:99999/x.png",
    "https://localhost:http/x.png",
    "https://localhost:9/x\x00.png",
    "https://local\x00host:9/x.png",
    "https://localhost:9/x\n.png",  # urlsplit would drop the newline silently
    "https://local\thost:9/x.png",
    "https://localhost:9/x\x7f.png",
    "https://localhost:9/x\x85.png",
    "s3://bucket/x\x00.png",
    "file:///root/x\x00.png",
]


@pytest.mark.parametrize("uri", MALFORMED)
def test_malformed_uris_are_not_allowed(uri: str, loopback_rules: FetchSettings) -> None:
    with pytest.raises(ImageNotAllowed):
        resolve_location(uri, loopback_rules)


@pytest.mark.parametrize("uri", MALFORMED)
async def test_malformed_uris_are_refused_by_the_fetcher(uri: str, loopback_rules: FetchSettings) -> None:
    async with ImageFetcher(loopback_rules) as fetcher:
        with pytest.raises(ImageNotAllowed) as caught:
            await fetcher.fetch(image_ref(uri))
    assert caught.value.code == "image_not_allowed"


# -- https: the address rule, with address values only (nothing here connects) -----------------------------


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_global_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ip_address(address), allow_private=False)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "::1", "fd00::1", "fe80::1", "fe80::1%2", "fec0::1", "2001:db8::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",  # IPv4-mapped
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
    ],
)
def test_private_addresses_are_allowed_only_when_configured(address: str) -> None:
    assert not address_allowed(ip_address(address), allow_private=False)
    assert address_allowed(ip_address(address), allow_private=True)


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "240.0.0.1", "::ffff:0.0.0.0"]
)
def test_addresses_that_are_no_unicast_peer_are_never_allowed(address: str) -> None:
    assert not address_allowed(ip_address(address), allow_private=True)


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses, so the filter can be shown answers no test may connect to."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=address, port=port, proto=0, flags=0,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET)
                for address in self.addresses]

    async def close(self) -> None:
        pass


async def test_the_resolver_keeps_only_allowed_addresses() -> None:
    answers = StaticResolver("10.0.0.1", "8.8.8.8", "::ffff:127.0.0.1", "2606:4700:4700::1111", "169.254.169.254")
    kept = await FilteringResolver(answers, allow_private=False).resolve("images.example.com", 443)
    assert [answer["host"] for answer in kept] == ["8.8.8.8", "2606:4700:4700::1111"]
    with pytest.raises(AddressRefused, match="169.254.169.254"):
        await FilteringResolver(StaticResolver("10.0.0.1", "169.254.169.254"), False).resolve("metadata", 443)


def test_address_literal_hosts_are_checked_by_resolve_location() -> None:
    # aiohttp connects to an address literal without asking the resolver, so the rule applies here
    hosts = ["127.0.0.1:8443", "[::ffff:10.0.0.1]", "8.8.8.8"]
    closed = FetchSettings(https_allowed_hosts=hosts)
    for uri in ["https://127.0.0.1:8443/x.png", "https://[::ffff:10.0.0.1]/x.png", "https://[::ffff:a00:1]/x.png"]:
        with pytest.raises(ImageNotAllowed, match="not allowed for https"):
            resolve_location(uri, closed)
    assert resolve_location("https://8.8.8.8/x.png", closed).root == "https://8.8.8.8"
    opened = FetchSettings(https_allowed_hosts=hosts, https_allow_private_addresses=True)
    assert resolve_location("https://127.0.0.1:8443/x.png", opened).root == "https://127.0.0.1:8443"


# -- https: real fetches from a TLS server on loopback ---------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpsServer:
    port: int
    seen: list[str]  # request paths, in order

    def uri(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


@asynccontextmanager
async def https_server(cert: SelfSignedCert, routes: dict[str, Handler]) -> AsyncIterator[HttpsServer]:
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record])
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=cert.server_context()).start()
    try:
        yield HttpsServer(port=runner.addresses[0][1], seen=seen)
    finally:
        await runner.cleanup()


def answer(body: bytes = b"", status: int = 200, location: str | None = None) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        headers = {"Location": location} if location else None
        return web.Response(body=body, status=status, content_type="image/png", headers=headers)

    return handler


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> SelfSignedCert:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def https_settings(cert: SelfSignedCert, *hosts: str, **overrides: object) -> FetchSettings:
    values: dict[str, object] = {"https_allowed_hosts": list(hosts), "https_ca_file": cert.cert_file,
                                 "https_allow_private_addresses": True, "max_bytes": 50_000, "timeout_s": 2,
                                 "backoff_base_s": 0.01}
    return FetchSettings(**(values | overrides))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_https_images_are_fetched_from_an_allow_listed_origin(cert: SelfSignedCert, host: str) -> None:
    data = png(40, 30)
    async with (https_server(cert, {"/cat.png": answer(data)}) as server,
                ImageFetcher(https_settings(cert, f"{host}:{server.port}")) as fetcher):
        fetched = await fetcher.fetch(image_ref(server.uri("/cat.png", host), data))
    assert fetched.sha256 == sha256(data) and fetched.original_size == (40, 30)
    assert server.seen == ["/cat.png"]


async def test_https_redirects_are_refused_and_not_followed(cert: SelfSignedCert) -> None:
    async with https_server(cert, {"/cat.png": answer(png())}) as target:
        redirect = answer(status=302, location=target.uri("/cat.png"))
        async with https_server(cert, {"/cat.png": redirect}) as server:
            settings = https_settings(cert, f"localhost:{server.port}", f"localhost:{target.port}")
            async with ImageFetcher(settings) as fetcher:
                with pytest.raises(ImageNotAllowed, match="redirects are refused"):
                    await fetcher.fetch(image_ref(server.uri("/cat.png")))
    assert server.seen == ["/cat.png"] and target.seen == []


async def test_https_on_a_port_not_allow_listed_is_refused_before_any_io(cert: SelfSignedCert) -> None:
    async with https_server(cert, {"/cat.png": answer(png())}) as server:
        settings = https_settings(cert, "localhost", f"localhost:{server.port + 1}", "127.0.0.1")
        async with ImageFetcher(settings) as fetcher:
            for host in ["localhost", "127.0.0.1"]:
                with pytest.raises(ImageNotAllowed, match="allow-list"):
                    await fetcher.fetch(image_ref(server.uri("/cat.png", host)))
    assert server.seen == []


@pytest.mark.parametrize(
    ("host", "refusal"),
    [("localhost", "localhost resolves only to addresses not allowed"),  # by the resolver
     ("127.0.0.1", "address 127.0.0.1 is not allowed")],  # by resolve_location: aiohttp resolves no literal
)
async def test_https_loopback_is_refused_unless_private_addresses_are_allowed(
    cert: SelfSignedCert, host: str, refusal: str
) -> None:
    async with https_server(cert, {"/cat.png": answer(png())}) as server:
        settings = https_settings(cert, f"{host}:{server.port}", https_allow_private_addresses=False)
        async with ImageFetcher(settings) as fetcher:
            with pytest.raises(ImageNotAllowed, match=refusal) as caught:
                await fetcher.fetch(image_ref(server.uri("/cat.png", host)))
    assert server.seen == [] and not caught.value.retriable


def test_a_name_is_refused_by_what_it_resolves_to(cert: SelfSignedCert) -> None:
    # the name passes the allow-list; only its address, found by the resolver, is refused
    settings = https_settings(cert, "localhost:8443", https_allow_private_addresses=False)
    assert resolve_location("https://localhost:8443/cat.png", settings).root == "https://localhost:8443"


async def test_https_certificates_are_verified(cert: SelfSignedCert) -> None:
    async with https_server(cert, {"/cat.png": answer(png())}) as server:
        settings = https_settings(cert, f"localhost:{server.port}", https_ca_file=None, max_attempts=1)
        async with ImageFetcher(settings) as fetcher:
            with pytest.raises(FetchUnavailable, match="certificate"):
                await fetcher.fetch(image_ref(server.uri("/cat.png")))
    assert server.seen == []


@pytest.mark.parametrize(
    ("status", "error", "requests"),
    [(404, ImageNotFound, 1), (403, ImageNotAllowed, 1), (401, ImageNotAllowed, 1), (503, FetchUnavailable, 3)],
)
async def test_https_statuses_become_typed_errors(
    cert: SelfSignedCert, status: int, error: type[FetchError], requests: int
) -> None:
    async with (https_server(cert, {"/cat.png": answer(b"no", status=status)}) as server,
                ImageFetcher(https_settings(cert, f"localhost:{server.port}", max_attempts=3)) as fetcher):
        with pytest.raises(error):
            await fetcher.fetch(image_ref(server.uri("/cat.png")))
    assert server.seen == ["/cat.png"] * requests


async def chunked_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()  # no Content-Length: only the bytes read can tell
    await response.prepare(request)
    for _ in range(6):
        await response.write(b"\0" * 10_000)
    await response.write_eof()
    return response


async def test_https_bodies_over_the_byte_limit_are_refused(cert: SelfSignedCert) -> None:
    routes = {"/declared.png": answer(b"\0" * 60_000), "/chunked.png": chunked_body}
    async with (https_server(cert, routes) as server,
                ImageFetcher(https_settings(cert, f"localhost:{server.port}")) as fetcher):
        with pytest.raises(ImageTooLarge, match="60000 bytes"):
            await fetcher.fetch(image_ref(server.uri("/declared.png")))
        with pytest.raises(ImageTooLarge, match="exceeds"):
            await fetcher.fetch(image_ref(server.uri("/chunked.png")))


async def test_an_https_server_that_does_not_answer_times_out_retriably(cert: SelfSignedCert) -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    async with https_server(cert, {"/cat.png": hang}) as server:
        settings = https_settings(cert, f"localhost:{server.port}", timeout_s=0.2, max_attempts=2)
        try:
            async with ImageFetcher(settings) as fetcher:
                with pytest.raises(FetchUnavailable, match="timed out") as caught:
                    await fetcher.fetch(image_ref(server.uri("/cat.png")))
        finally:
            release.set()
    assert caught.value.retriable and server.seen == ["/cat.png", "/cat.png"]


# -- decoding: limits from the header, on the fetcher's own threads --------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`x`height` and carries no pixels: Image.open reads only the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


async def test_a_huge_image_is_too_large_not_undecodable(tmp_path: Path) -> None:
    with pytest.raises(ImageTooLarge):  # over Pillow's own bomb limit as well as ours
        decode_image(png_header(40_000, 40_000), FetchSettings())
    with pytest.raises(ImageTooLarge, match="limit 1000000"):  # over ours only, and no pixels to decode
        decode_image(png_header(2_000, 1_000), FetchSettings(max_pixels=1_000_000))
    (tmp_path / "huge.png").write_bytes(png_header(40_000, 40_000))
    async with ImageFetcher(FetchSettings(file_root=tmp_path)) as fetcher:
        with pytest.raises(ImageTooLarge) as caught:
            await fetcher.fetch(image_ref((tmp_path / "huge.png").as_uri()))
    assert caught.value.code == "image_too_large"


async def test_extreme_aspect_ratios_are_refused_from_the_header(tmp_path: Path) -> None:
    settings = FetchSettings(file_root=tmp_path)
    assert decode_image(png(2, 400), settings)[1] == (2, 400)  # 200:1 is the limit, and allowed
    for data in [png(1, 300_000), png(201, 1), png_header(1, 300_000)]:  # the last has no pixels to decode
        with pytest.raises(ImageShapeRefused, match="aspect ratio limit 200"):
            decode_image(data, settings)
    (tmp_path / "thin.png").write_bytes(png(1, 300_000))
    async with ImageFetcher(settings) as fetcher:
        with pytest.raises(ImageShapeRefused) as caught:
            await fetcher.fetch(image_ref((tmp_path / "thin.png").as_uri()))
    assert caught.value.code == "image_shape_refused"


def test_decoding_goes_on_while_the_default_executor_is_full(tmp_path: Path) -> None:
    """Guard threads stuck in the default executor (a backend past its timeout) must not stall decoding."""
    (tmp_path / "cat.png").write_bytes(png(20, 10))
    release, started = threading.Event(), threading.Semaphore(0)
    stuck_threads = 2

    def stuck() -> None:
        started.release()
        release.wait()

    async def scenario() -> FetchedImage:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(stuck_threads))
        jobs = [loop.run_in_executor(None, stuck) for _ in range(stuck_threads)]
        try:
            for _ in range(stuck_threads):
                assert started.acquire(timeout=30)  # every default thread is now taken
            async with ImageFetcher(FetchSettings(file_root=tmp_path)) as fetcher:
                # the bound turns a stall (the old to_thread) into a failure instead of a hung test
                return await asyncio.wait_for(fetcher.fetch(image_ref((tmp_path / "cat.png").as_uri())), 30)
        finally:
            release.set()
            await asyncio.gather(*jobs)

    # a loop of its own, so that the session's loop keeps its default executor
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        fetched = runner.run(scenario())
    assert fetched.image.size == (20, 10)


async def test_close_stops_the_decode_threads(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png())
    fetcher = ImageFetcher(FetchSettings(file_root=tmp_path))
    await fetcher.fetch(image_ref((tmp_path / "cat.png").as_uri()))
    await fetcher.close()
    with pytest.raises(RuntimeError):
        await fetcher.fetch(image_ref((tmp_path / "cat.png").as_uri()))


# -- secrets -------------------------------------------------------------------------------------------------


async def test_the_s3_secret_stays_out_of_reprs_logs_and_errors(s3_settings: FetchSettings) -> None:
    s3_settings.s3_secret_access_key = SecretStr("do-not-print-me")
    s3_settings.s3_endpoint = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    s3_settings.max_attempts = 2
    fetcher = ImageFetcher(s3_settings)
    with capture_logs() as logs, pytest.raises(FetchUnavailable) as caught:
        await fetcher.fetch(image_ref("s3://images/x.png"))
    shown = [repr(s3_settings), s3_settings.model_dump_json(), repr(s3_store("images", s3_settings)),
             str(caught.value), repr(logs)]
    assert not [text for text in shown if "do-not-print-me" in text]


async def test_a_public_bucket_is_read_without_keys(s3_settings: FetchSettings, s3: S3) -> None:
    """No access key set: requests go unsigned (before, building the store failed on the missing keys)."""
    s3_settings.s3_access_key_id = None
    s3_settings.s3_secret_access_key = None
    client = s3.client
    client.create_bucket(Bucket="public")  # type: ignore[attr-defined]
    client.put_bucket_policy(Bucket="public", Policy=json.dumps({  # type: ignore[attr-defined]
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::public/*"}],
    }))
    client.put_object(Bucket="public", Key="a.png", Body=png(8, 8))  # type: ignore[attr-defined]
    uri = "s3://public/a.png"
    fetched = await ImageFetcher(s3_settings).fetch(image_ref(uri))
    assert fetched.image.size == (8, 8)
