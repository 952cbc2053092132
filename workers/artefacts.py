"""A release's artefact as a local path: a local path or file:// URI as it is; an s3:// object (a lite
head) or prefix (a model folder) downloaded once into a local cache, through the S3 settings that images
use. A download that completed is marked, so a restart or a second switch does not fetch it again."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import BaseError as StoreError

from workers.errors import BackendUnavailable
from workers.fetch import s3_store
from workers.settings import FetchSettings

COMPLETE = ".complete"


async def materialise(uri: str, fetch: FetchSettings, cache_dir: Path) -> Path:
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Path(unquote(parts.path))
    if parts.scheme != "s3" or not parts.netloc:
        raise BackendUnavailable(f"artefact {uri!r}: use a local path, file:// or s3://bucket/key")
    target = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:24]
    marker = target / COMPLETE
    if marker.exists():
        return target / marker.read_text()
    try:
        relative = await _download(parts.netloc, unquote(parts.path).strip("/"), fetch, target)
    except (OSError, StoreError) as exc:  # obstore raises builtin OSErrors (FileNotFoundError…) too
        raise BackendUnavailable(f"artefact {uri!r} could not be fetched: {type(exc).__name__}: {exc}") from exc
    marker.write_text(relative)
    return target / relative


async def _download(bucket: str, key: str, fetch: FetchSettings, target: Path) -> str:
    """Fetch one object or every object under a prefix; return the result's path relative to `target`."""
    store = s3_store(bucket, fetch)
    try:
        await obstore.head_async(store, key)
        objects = [key]
    except FileNotFoundError:  # not an object: a folder of them
        objects = [meta["path"] for meta in await obstore.list(store, prefix=key).collect_async()]
    if not objects:
        raise BackendUnavailable(f"nothing at s3://{bucket}/{key}")
    single = objects == [key]
    for path in objects:
        relative = PurePosixPath(path).name if single else PurePosixPath(path).relative_to(key).as_posix()
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        result = await obstore.get_async(store, path)
        destination.write_bytes(bytes(await result.bytes_async()))
    return PurePosixPath(key).name if single else "."
