"""Image thumbnails for the review page, fetched through the worker's fetcher: the same allowed locations,
address rules, byte and pixel limits. Made thumbnails are kept (bounded by bytes), so a page seen again,
by the same reviewer or another, fetches and decodes nothing."""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict

from PIL import Image

from console.settings import ReviewSettings
from schemas.events import ImageRef
from workers.fetch import ImageFetcher

CACHE_BYTES = ReviewSettings.model_fields["thumbnail_cache_bytes"].default


def _thumbnail(image: Image.Image, size: int) -> bytes:
    copy = image.copy()
    copy.thumbnail((size, size))
    out = io.BytesIO()
    copy.save(out, format="PNG", optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """PNGs by image reference, least recently used dropped first once over `max_bytes`. A reference names
    its bytes for this purpose: the fetch that made a thumbnail applied the reference's rules (its sha256
    included, when it declares one)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._pngs: OrderedDict[ImageRef, bytes] = OrderedDict()

    def get(self, ref: ImageRef) -> bytes | None:
        png = self._pngs.get(ref)
        if png is not None:
            self._pngs.move_to_end(ref)
        return png

    def put(self, ref: ImageRef, png: bytes) -> None:
        if len(png) > self.max_bytes or ref in self._pngs:
            return
        self._pngs[ref] = png
        self.nbytes += len(png)
        while self.nbytes > self.max_bytes:
            self.nbytes -= len(self._pngs.popitem(last=False)[1])


class Thumbnails:
    def __init__(self, fetcher: ImageFetcher, size: int, cache_bytes: int = CACHE_BYTES) -> None:
        self.fetcher = fetcher
        self.size = size
        self.cache = ThumbnailCache(cache_bytes)

    async def png(self, ref: ImageRef) -> bytes:
        """The thumbnail as PNG; a FetchError (not allowed, too large, missing…) if the image cannot be shown."""
        cached = self.cache.get(ref)
        if cached is not None:
            return cached
        fetched = await self.fetcher.fetch(ref)
        png = await asyncio.to_thread(_thumbnail, fetched.image, self.size)
        self.cache.put(ref, png)
        return png
