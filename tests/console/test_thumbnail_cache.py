"""The thumbnail cache keeps at most its bytes, dropping the least recently shown first."""

from __future__ import annotations

from console.thumbnails import ThumbnailCache
from schemas.events import ImageRef


def ref(name: str) -> ImageRef:
    return ImageRef(uri=f"file:///img/{name}.png")


def test_the_thumbnail_cache_drops_the_least_recently_shown_once_over_its_bytes() -> None:
    cache = ThumbnailCache(max_bytes=10)
    cache.put(ref("a"), b"aaaa")
    cache.put(ref("b"), b"bbbb")
    assert cache.get(ref("a")) == b"aaaa"  # shown again: "b" is now the least recently shown
    cache.put(ref("c"), b"cccc")
    assert (cache.get(ref("a")), cache.get(ref("b")), cache.get(ref("c"))) == (b"aaaa", None, b"cccc")
    assert cache.nbytes == 8
    cache.put(ref("huge"), b"x" * 11)  # larger than the whole cache: not kept, nothing dropped for it
    assert cache.get(ref("huge")) is None and cache.nbytes == 8
