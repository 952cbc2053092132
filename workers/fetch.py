"""Step 4: fetch an event's images from object storage, within limits, and decode them with Pillow.

The object stores (S3 through obstore, a local folder, https through aiohttp) and `ImageFetcher`, which fetches
with bounded concurrency, per-attempt timeouts and retries, and checks sizes and digests. Where an image may come
from (the address filter `resolve_location`, and `FilteringResolver`, which checks the addresses an https host
resolves to) is decided in workers/image_address.py. Redirects are refused,
not followed. Images are decoded on the fetcher's own threads, checked for size and shape from the header first.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
import obstore
import structlog
from aiohttp.resolver import DefaultResolver
from obstore.exceptions import BaseError as StoreError
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import LocalStore, ObjectStore, S3Store
from PIL import Image, UnidentifiedImageError
from yarl import URL

from runtime.backoff import backoff_s
from schemas.events import ImageRef
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
from workers.image_address import (
    AddressRefused,
    FilteringResolver,
    Location,
    allowed_origins,
    resolve_location,
)
from workers.settings import FetchSettings

log = structlog.get_logger("guardstream.fetch")

CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class FetchedImage:
    image: Image.Image
    sha256: str
    nbytes: int
    original_size: tuple[int, int]



def https_ssl_context(settings: FetchSettings) -> ssl.SSLContext:
    """The system's CAs, plus `https_ca_file` when set (a private CA adds to the public ones)."""
    context = ssl.create_default_context()
    if settings.https_ca_file is not None:
        context.load_verify_locations(cafile=settings.https_ca_file)
    return context


def https_status_error(status: int, uri: str) -> FetchError | None:
    """The error an https status means, or None for 200; 5xx, 408 and 429 are worth retrying."""
    if status == 200:
        return None
    if 300 <= status < 400:
        return ImageNotAllowed(f"{uri}: HTTP {status}; redirects are refused")
    if status in (401, 403):
        return ImageNotAllowed(f"{uri}: HTTP {status}, access denied by the server")
    if status in (404, 410):
        return ImageNotFound(f"{uri}: not found (HTTP {status})")
    if status >= 500 or status in (408, 429):
        return FetchUnavailable(f"{uri}: HTTP {status}")
    return FetchError(f"{uri}: HTTP {status}")


def fit_pixel_budget(size: tuple[int, int], budget: int) -> tuple[int, int]:
    """Largest size with the same aspect ratio and at most `budget` pixels (never upscales)."""
    width, height = size
    if width * height <= budget:
        return size
    scale = math.sqrt(budget / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def check_shape(size: tuple[int, int], settings: FetchSettings) -> None:
    """Refuse, from the header's size alone, images over the pixel limit or the model's aspect ratio."""
    width, height = size
    if width * height > settings.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, limit {settings.max_pixels}")
    if max(width, height) > settings.max_aspect_ratio * min(width, height):
        raise ImageShapeRefused(f"image is {width}x{height}, aspect ratio limit {settings.max_aspect_ratio:g}")


def decode_image(data: bytes, settings: FetchSettings) -> tuple[Image.Image, tuple[int, int]]:
    """Decode with Pillow, refusing images over the pixel or aspect limits before their pixels are read."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            size = probe.size
            check_shape(size, settings)
            image = probe.convert("RGB")
    except Image.DecompressionBombError as exc:
        # Pillow checks its own (process-wide) limit inside Image.open, before our check can see the size
        raise ImageTooLarge(f"image is over Pillow's decompression-bomb limit: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # Pillow: SyntaxError for a broken PNG
        raise ImageDecodeFailed(f"cannot decode image: {exc}") from exc
    target = fit_pixel_budget(image.size, settings.pixel_budget)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BICUBIC)
    return image, size


class ImageFetcher:
    """Fetches with bounded concurrency, a timeout per attempt, and retries with backoff on transient errors.

    Decoding runs on the fetcher's own threads: the default executor is shared with guard backends whose
    threads may outlive a timeout. Call `close()` (or use `async with`) to release the https session."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        allowed_origins(tuple(settings.https_allowed_hosts))  # a misspelt entry fails at start, not on an image
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._stores: dict[tuple[str, str], ObjectStore] = {}
        self._ssl = https_ssl_context(settings)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: FilteringResolver | None = None
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="guardstream-decode")

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the https session; the decode threads stop without being waited for (a decode that is
        running finishes on its own; queued ones are cancelled)."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def fetch(self, ref: ImageRef) -> FetchedImage:
        location = resolve_location(ref.uri, self.settings)
        async with self._semaphore:
            data = await self._get_with_retries(location, ref.uri)
        digest = hashlib.sha256(data).hexdigest()
        if ref.sha256 is not None and ref.sha256 != digest:
            raise ImageDigestMismatch(f"{ref.uri}: declared sha256 {ref.sha256[:12]}…, got {digest[:12]}…")
        loop = asyncio.get_running_loop()
        image, original = await loop.run_in_executor(self._decoder, decode_image, data, self.settings)
        return FetchedImage(image=image, sha256=digest, nbytes=len(data), original_size=original)

    async def _get_with_retries(self, location: Location, uri: str) -> bytes:
        attempt = 1
        while True:
            try:
                return await asyncio.wait_for(self._get(location, uri), self.settings.timeout_s)
            except FetchError as exc:
                error = exc
            except (TimeoutError, OSError, StoreError, aiohttp.ClientError) as exc:
                error = self._classify(exc, uri)
            if not error.retriable or attempt >= self.settings.max_attempts:
                raise error
            delay = backoff_s(attempt, self.settings.backoff_base_s)
            log.warning("fetch_retry", uri=uri, attempt=attempt, code=error.code, delay_s=delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _get(self, location: Location, uri: str) -> bytes:
        if location.scheme == "https":
            return await self._get_https(location, uri)
        result = await obstore.get_async(self._store(location), location.path)
        self._check_declared_size(result.meta["size"], uri)
        return await self._read_limited(result.stream(min_chunk_size=CHUNK_BYTES), uri)

    async def _get_https(self, location: Location, uri: str) -> bytes:
        url = URL(location.root).with_path("/" + location.path)
        async with self._https_session().get(url, allow_redirects=False) as response:
            error = https_status_error(response.status, uri)
            if error is not None:
                raise error
            if response.content_length is not None:
                self._check_declared_size(response.content_length, uri)
            return await self._read_limited(response.content.iter_chunked(CHUNK_BYTES), uri)

    def _check_declared_size(self, size: int, uri: str) -> None:
        if size > self.settings.max_bytes:
            raise ImageTooLarge(f"{uri} is {size} bytes, limit {self.settings.max_bytes}")

    async def _read_limited(self, chunks: AsyncIterator[bytes], uri: str) -> bytes:
        received: list[bytes] = []
        total = 0
        async for chunk in chunks:
            total += len(chunk)
            if total > self.settings.max_bytes:  # a declared size can lie; the bytes cannot
                raise ImageTooLarge(f"{uri} exceeds {self.settings.max_bytes} bytes")
            received.append(chunk)
        return b"".join(received)

    def _https_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: a session belongs to the running event loop
            self._resolver = FilteringResolver(DefaultResolver(), self.settings.https_allow_private_addresses)
            connector = aiohttp.TCPConnector(resolver=self._resolver, ssl=self._ssl,
                                             limit=self.settings.concurrency)
            # no cookies kept between images, no proxy from the environment, the bytes as sent (the limit and
            # the digest are about them)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  trust_env=False, auto_decompress=False,
                                                  headers={"Accept-Encoding": "identity"})
        return self._session

    @staticmethod
    def _classify(exc: BaseException, uri: str) -> FetchError:
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, AddressRefused):
            return ImageNotAllowed(f"{uri}: {exc.os_error}")
        if isinstance(exc, (NotFoundError, FileNotFoundError)):  # obstore raises the builtin for a 404
            return ImageNotFound(f"{uri}: not found")
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)):
            return ImageNotAllowed(f"{uri}: access denied by the store")
        if isinstance(exc, TimeoutError):
            return FetchUnavailable(f"{uri}: timed out")
        first_line = next(iter(str(exc).splitlines()), "")  # obstore appends a many-line debug dump
        return FetchUnavailable(f"{uri}: {type(exc).__name__}: {first_line}")

    def _store(self, location: Location) -> ObjectStore:
        key = (location.scheme, location.root)
        if key not in self._stores:
            self._stores[key] = self._make_store(location)
        return self._stores[key]

    def _make_store(self, location: Location) -> ObjectStore:
        if location.scheme == "file":
            return LocalStore(prefix=location.root)
        return s3_store(location.root, self.settings)


NO_RETRY = {"max_retries": 0}  # retries are ours, with our backoff and our metrics


def s3_store(bucket: str, settings: FetchSettings, prefix: str | None = None) -> S3Store:
    """A store for one bucket (or a prefix in it) of the configured S3 endpoint: images, release
    artefacts, the trainer's data set."""
    keys = {}  # none set: requests go unsigned (a public bucket)
    if settings.s3_access_key_id is not None:
        keys["access_key_id"] = settings.s3_access_key_id
    if settings.s3_secret_access_key is not None:
        keys["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return S3Store(
        bucket,
        prefix=prefix or None,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        virtual_hosted_style_request=False,
        skip_signature=settings.s3_access_key_id is None,
        client_options={"timeout": f"{settings.timeout_s}s", "allow_http": settings.s3_allow_http},
        retry_config=NO_RETRY,
        **keys,  # type: ignore[arg-type]
    )
