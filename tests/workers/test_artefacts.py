"""Release artefacts from moto's S3 server: a folder and a single object, downloaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import S3
from workers.artefacts import materialise
from workers.errors import BackendUnavailable
from workers.settings import FetchSettings


@pytest.fixture
def fetch(s3: S3) -> FetchSettings:
    return FetchSettings(s3_endpoint=s3.endpoint, s3_access_key_id="test", s3_secret_access_key="test",
                         s3_allow_http=True)


async def test_a_model_folder_is_downloaded_whole_and_only_once(s3: S3, fetch: FetchSettings, tiny_qwen: Path,
                                                                tmp_path: Path) -> None:
    uri = s3.put_folder(tiny_qwen, "models/tiny-once")
    local = await materialise(uri, fetch, tmp_path)
    originals = sorted(p.relative_to(tiny_qwen).as_posix() for p in tiny_qwen.rglob("*") if p.is_file())
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and p.name != ".complete") \
        == originals
    assert (local / "config.json").read_bytes() == (tiny_qwen / "config.json").read_bytes()
    s3.client.delete_object(Bucket=s3.bucket, Key="models/tiny-once/config.json")  # type: ignore[attr-defined]
    assert await materialise(uri, fetch, tmp_path) == local  # from the cache: S3 is not asked again


async def test_a_single_object_becomes_a_file(s3: S3, fetch: FetchSettings, tmp_path: Path) -> None:
    uri = s3.put("heads/lite-v2.json", b'{"weights": []}')
    local = await materialise(uri, fetch, tmp_path)
    assert local.name == "lite-v2.json" and local.read_bytes() == b'{"weights": []}'


async def test_local_paths_pass_through_and_bad_ones_are_clear_errors(s3: S3, fetch: FetchSettings,
                                                                      tmp_path: Path) -> None:
    assert await materialise("/models/x", fetch, tmp_path) == Path("/models/x")
    assert await materialise("file:///models/x%20y", fetch, tmp_path) == Path("/models/x y")
    with pytest.raises(BackendUnavailable, match="nothing at"):
        await materialise(f"s3://{s3.bucket}/no/such/prefix", fetch, tmp_path)
    with pytest.raises(BackendUnavailable, match="file:// or s3://"):
        await materialise("gs://bucket/model", fetch, tmp_path)
