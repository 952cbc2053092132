"""A worker given a Redis password and S3 credentials never writes them out.

The real worker process runs at debug level, in each log format, through an answer, a cache write, an S3 fetch
and a failed fetch; its whole output must hold neither secret, raw, URL-encoded or base64-encoded.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import redis

from schemas.events import VerdictStatus
from tests.conftest import S3, stop_process, verdicts_covering
from tests.factories import BENIGN, HARMFUL, event, image_ref, png
from tests.waiting import wait_until
from topics.io import produce_events
from topics.local_broker import free_loopback_port, wait_until_listening
from workers.settings import WorkerSettings


def new_secret(tag: str) -> str:
    """Random, with the characters that URL and base64 encoding change, as real passwords and AWS keys have."""
    return f"{tag}-{secrets.token_urlsafe(18)}+/="


def written_forms(secret: str) -> set[str]:
    """The secret as it could appear in output: raw, URL-encoded, or inside base64 at any of its 3 alignments."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret.encode()).decode()
        core = encoded[4 if shift else 0:-4]  # leave out the groups shared with whatever surrounds it
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return forms


@contextmanager
def redis_with_password(password: str) -> Iterator[int]:
    """A Redis server on a free loopback port that answers only with `password`; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: install Redis 7 (apt-get install redis-server)")
    port = free_loopback_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(process, port, timeout_s=10)
        yield port
    finally:
        stop_process(process)


def worker_env(settings: WorkerSettings, redis_url: str, s3_key_id: str, s3_secret: str, fmt: str) -> dict[str, str]:
    """What an operator would pass: the test's broker, topics and key prefix, and the secrets."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    return {
        **inherited,
        "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "GUARDSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GUARDSTREAM_KAFKA__GROUP_ID": settings.kafka.group_id,
        "GUARDSTREAM_KAFKA__COMMIT_INTERVAL_MS": "200",
        "GUARDSTREAM_FETCH__S3_ENDPOINT": str(settings.fetch.s3_endpoint),
        "GUARDSTREAM_FETCH__S3_ALLOW_HTTP": "true",
        "GUARDSTREAM_FETCH__S3_ACCESS_KEY_ID": s3_key_id,
        "GUARDSTREAM_FETCH__S3_SECRET_ACCESS_KEY": s3_secret,
        "GUARDSTREAM_FETCH__BACKOFF_BASE_S": "0.01",
        "GUARDSTREAM_CACHE__REDIS_URL": redis_url,
        "GUARDSTREAM_CACHE__KEY_PREFIX": settings.cache.key_prefix,
        "GUARDSTREAM_OBSERVABILITY__LOG_FORMAT": fmt,
        "GUARDSTREAM_OBSERVABILITY__LOG_LEVEL": "debug",
        "GUARDSTREAM_OBSERVABILITY__HEALTH_ENABLED": "false",
        "GUARDSTREAM_DRAIN_TIMEOUT_S": "10",
    }


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    """The settings the worker builds from `env`."""
    for key, value in env.items():
        if key.startswith("GUARDSTREAM_"):
            monkeypatch.setenv(key, value)
    return WorkerSettings()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_worker_output_and_settings_never_show_the_redis_password_or_s3_secret(
    fmt: str, settings: WorkerSettings, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_password, s3_secret = new_secret("redis"), new_secret("s3")
    prefix = settings.kafka.topic_prefix
    on_s3 = png(colour=(20, 140, 60))
    events = [
        event(BENIGN[0]),
        event(HARMFUL[0]),
        event("What is in this picture?", images=[image_ref(s3.put(f"{prefix}secrets/leaf.png", on_s3), on_s3)]),
        event("And this one?", images=[image_ref(f"s3://{s3.bucket}/{prefix}secrets/missing.png")]),
    ]
    missing = events[-1].event_id

    with redis_with_password(redis_password) as port:
        redis_url = f"redis://:{quote(redis_password, safe='')}@127.0.0.1:{port}/0"
        env = worker_env(settings, redis_url, f"AKIA{secrets.token_hex(8).upper()}", s3_secret, fmt)
        worker_settings = settings_from(env, monkeypatch)
        assert worker_settings.cache.redis_url.get_secret_value() == redis_url, "the secrets reached the settings"
        for shown in (repr(worker_settings), worker_settings.model_dump_json()):
            assert redis_password not in shown and quote(redis_password, safe="") not in shown
            assert s3_secret not in shown

        await produce_events(settings.kafka.bootstrap_servers, f"{prefix}chat.events", events)
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "guardstream", "worker"], env=env,
                                       stdout=stdout, stderr=stderr)
            try:
                verdicts = await verdicts_covering(settings, {e.event_id for e in events}, timeout_s=120)
                with redis.Redis(host="127.0.0.1", port=port, password=redis_password) as client:
                    await wait_until(lambda: client.keys(f"{settings.cache.key_prefix}:*"), timeout_s=30,
                                     what="the worker wrote answers to the password-protected Redis")
                process.send_signal(signal.SIGTERM)
                returncode = process.wait(timeout=60)
            finally:
                stop_process(process)
        with redis.Redis(host="127.0.0.1", port=port) as client, pytest.raises(redis.AuthenticationError):
            client.ping()  # without the password nothing is answered: the worker's writes went through it

    output = out.read_text() + err.read_text()
    assert returncode == 0, output[-4000:]
    assert {v.event_id: v.status for v in verdicts} == {
        e.event_id: VerdictStatus.ERROR if e.event_id == missing else VerdictStatus.OK for e in events}
    assert "image_not_found" in output and "committed" in output, "the error path and debug lines were logged"
    assert "cache_degraded" not in output
    started = next(line for line in output.splitlines() if "worker_started" in line)
    redacted = f"redis (redis://***@127.0.0.1:{port}/0)"
    assert (json.loads(started)["cache"] if fmt == "json" else started).count(redacted) == 1, started
    for secret in (redis_password, s3_secret):
        leaked = [form for form in written_forms(secret) if form in output]
        assert not leaked, f"{secret!r} appears in the worker's output as {leaked}"
