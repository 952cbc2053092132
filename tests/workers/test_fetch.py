"""Image fetching: the address filter as a pure function, then real fetches from moto's S3 and a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import S3
from tests.factories import image_ref, png, sha256
from topics.local_broker import free_loopback_port
from workers.errors import (
    FetchUnavailable,
    ImageDecodeFailed,
    ImageDigestMismatch,
    ImageNotAllowed,
    ImageNotFound,
    ImageTooLarge,
)
from workers.fetch import ImageFetcher, fit_pixel_budget, resolve_location
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
