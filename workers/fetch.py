"""Step 4: fetch an event's images from object storage, within limits, and decode them with Pillow.

Where an image may come from is decided by `resolve_location`, a pure function (the address filter):
s3:// any bucket of the configured endpoint; file:// only under the configured root;
https:// only from allow-listed hosts. Everything else is refused before any I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import obstore
import structlog
from obstore.exceptions import BaseError as StoreError
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import HTTPStore, LocalStore, ObjectStore, S3Store
from PIL import Image, UnidentifiedImageError

from schemas.events import ImageRef
from workers.errors import (
    FetchError,
    FetchUnavailable,
    ImageDecodeFailed,
    ImageDigestMismatch,
    ImageNotAllowed,
    ImageNotFound,
    ImageTooLarge,
)
from workers.settings import FetchSettings

log = structlog.get_logger("guardstream.fetch")


@dataclass(frozen=True)
class Location:
    scheme: Literal["s3", "file", "https"]
    root: str  # bucket, directory, or scheme://host[:port]
    path: str


@dataclass(frozen=True)
class FetchedImage:
    image: Image.Image
    sha256: str
    nbytes: int
    original_size: tuple[int, int]


def resolve_location(uri: str, settings: FetchSettings) -> Location:
    """Decide whether `uri` may be fetched, and from which store; raise ImageNotAllowed if not."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc or not parts.path.strip("/"):
            raise ImageNotAllowed(f"s3 URI needs a bucket and a key: {uri!r}")
        return Location("s3", parts.netloc, unquote(parts.path.lstrip("/")))
    if scheme == "file":
        return _resolve_file(parts.netloc, unquote(parts.path), uri, settings)
    if scheme == "https":
        host = (parts.hostname or "").lower()
        if parts.username or parts.password:
            raise ImageNotAllowed(f"credentials in image URIs are refused: {uri!r}")
        allowed = {h.lower() for h in settings.https_allowed_hosts}
        if host not in allowed:
            raise ImageNotAllowed(f"host {host!r} is not in the https allow-list")
        origin = f"https://{parts.netloc.lower()}"
        return Location("https", origin, unquote(parts.path.lstrip("/")))
    raise ImageNotAllowed(f"scheme {scheme or '(none)'!r} is not supported (s3, file, https)")


def _resolve_file(netloc: str, raw_path: str, uri: str, settings: FetchSettings) -> Location:
    if settings.file_root is None:
        raise ImageNotAllowed("file:// images are disabled (no file_root configured)")
    if netloc not in ("", "localhost"):
        raise ImageNotAllowed(f"file URI names a remote host: {uri!r}")
    root = Path(os.path.realpath(settings.file_root))
    target = Path(os.path.realpath(raw_path))
    if not raw_path.startswith("/") or not target.is_relative_to(root):
        raise ImageNotAllowed(f"file {raw_path!r} is outside the image root")
    return Location("file", str(root), target.relative_to(root).as_posix())


def fit_pixel_budget(size: tuple[int, int], budget: int) -> tuple[int, int]:
    """Largest size with the same aspect ratio and at most `budget` pixels (never upscales)."""
    width, height = size
    if width * height <= budget:
        return size
    scale = math.sqrt(budget / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def decode_image(data: bytes, settings: FetchSettings) -> tuple[Image.Image, tuple[int, int]]:
    """Decode with Pillow, refusing images over the pixel limit before their pixels are read."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            size = probe.size
            if size[0] * size[1] > settings.max_pixels:
                raise ImageTooLarge(f"image is {size[0]}x{size[1]} pixels, limit {settings.max_pixels}")
            image = probe.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageDecodeFailed(f"cannot decode image: {exc}") from exc
    target = fit_pixel_budget(image.size, settings.pixel_budget)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BICUBIC)
    return image, size


class ImageFetcher:
    """Fetches with bounded concurrency, a timeout per attempt, and retries with backoff on transient errors."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._stores: dict[tuple[str, str], ObjectStore] = {}

    async def fetch(self, ref: ImageRef) -> FetchedImage:
        location = resolve_location(ref.uri, self.settings)
        async with self._semaphore:
            data = await self._get_with_retries(location, ref.uri)
        digest = hashlib.sha256(data).hexdigest()
        if ref.sha256 is not None and ref.sha256 != digest:
            raise ImageDigestMismatch(f"{ref.uri}: declared sha256 {ref.sha256[:12]}…, got {digest[:12]}…")
        image, original = await asyncio.to_thread(decode_image, data, self.settings)
        return FetchedImage(image=image, sha256=digest, nbytes=len(data), original_size=original)

    async def _get_with_retries(self, location: Location, uri: str) -> bytes:
        attempt = 1
        while True:
            try:
                return await asyncio.wait_for(self._get(location, uri), self.settings.timeout_s)
            except (TimeoutError, OSError, StoreError) as exc:
                error = self._classify(exc, uri)
            if not error.retriable or attempt >= self.settings.max_attempts:
                raise error
            delay = self.settings.backoff_base_s * 2 ** (attempt - 1)
            log.warning("fetch_retry", uri=uri, attempt=attempt, code=error.code, delay_s=delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _get(self, location: Location, uri: str) -> bytes:
        result = await obstore.get_async(self._store(location), location.path)
        if result.meta["size"] > self.settings.max_bytes:
            raise ImageTooLarge(f"{uri} is {result.meta['size']} bytes, limit {self.settings.max_bytes}")
        chunks, total = [], 0
        async for chunk in result.stream(min_chunk_size=256 * 1024):
            total += len(chunk)
            if total > self.settings.max_bytes:  # the store's size can lie; the bytes cannot
                raise ImageTooLarge(f"{uri} exceeds {self.settings.max_bytes} bytes")
            chunks.append(bytes(chunk))
        return b"".join(chunks)

    @staticmethod
    def _classify(exc: BaseException, uri: str) -> FetchError:
        if isinstance(exc, (NotFoundError, FileNotFoundError)):  # obstore raises the builtin for a 404
            return ImageNotFound(f"{uri}: not found")
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)):
            return ImageNotAllowed(f"{uri}: access denied by the store")
        if isinstance(exc, TimeoutError):
            return FetchUnavailable(f"{uri}: timed out")
        return FetchUnavailable(f"{uri}: {type(exc).__name__}: {exc}")

    def _store(self, location: Location) -> ObjectStore:
        key = (location.scheme, location.root)
        if key not in self._stores:
            self._stores[key] = self._make_store(location)
        return self._stores[key]

    def _make_store(self, location: Location) -> ObjectStore:
        if location.scheme == "file":
            return LocalStore(prefix=location.root)
        if location.scheme == "https":
            return HTTPStore.from_url(location.root, client_options={"timeout": f"{self.settings.timeout_s}s"},
                                      retry_config=NO_RETRY)
        return s3_store(location.root, self.settings)


NO_RETRY = {"max_retries": 0}  # retries are ours, with our backoff and our metrics


def s3_store(bucket: str, settings: FetchSettings) -> S3Store:
    """A store for one bucket of the configured S3 endpoint (images, and release artefacts)."""
    return S3Store(
        bucket,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=(settings.s3_secret_access_key.get_secret_value()
                           if settings.s3_secret_access_key else None),
        virtual_hosted_style_request=False,
        skip_signature=settings.s3_access_key_id is None,
        client_options={"timeout": f"{settings.timeout_s}s", "allow_http": settings.s3_allow_http},
        retry_config=NO_RETRY,
    )
