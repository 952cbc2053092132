"""Image thumbnails for the review page, fetched through the worker's fetcher: the same allowed locations,
address rules, byte and pixel limits."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from schemas.events import ImageRef
from workers.fetch import ImageFetcher


def _thumbnail(image: Image.Image, size: int) -> bytes:
    copy = image.copy()
    copy.thumbnail((size, size))
    out = io.BytesIO()
    copy.save(out, format="PNG", optimize=True)
    return out.getvalue()


class Thumbnails:
    def __init__(self, fetcher: ImageFetcher, size: int) -> None:
        self.fetcher = fetcher
        self.size = size

    async def png(self, ref: ImageRef) -> bytes:
        """The thumbnail as PNG; a FetchError (not allowed, too large, missing…) if the image cannot be shown."""
        fetched = await self.fetcher.fetch(ref)
        return await asyncio.to_thread(_thumbnail, fetched.image, self.size)
