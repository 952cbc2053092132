"""A service whose broker or database does not answer at start ends at once with one line on stderr naming it
by address (never a password) and exit 4, before it builds anything: what an orchestrator restarts with its
backoff. Redis and object storage are not required: one that does not answer is named in one warning line, and
the service starts without it. Each test runs the installed `guardstream` script."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.passwords import hash_token
from runtime.cli_errors import Exit
from topics.local_broker import LocalBroker, free_loopback_port

GUARDSTREAM = Path(sys.executable).with_name("guardstream")
SECRET = "pw-never-shown-7f3a"
LIMIT_S = 60  # a service that does not check its dependencies runs on: the test fails at this limit


def hermetic_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any GUARDSTREAM_* of the developer's, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    env.update({"GUARDSTREAM_DATA_DIR": str(tmp_path), "GUARDSTREAM_OBSERVABILITY__HEALTH_PORT": "0",
                "GUARDSTREAM_STARTUP_TIMEOUT_S": "5", "GUARDSTREAM_STARTUP_WAIT_S": "0"})
    env.update(settings)
    return env


def guardstream(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GUARDSTREAM), *args], env=env, capture_output=True, text=True, timeout=LIMIT_S,
                          stdin=subprocess.DEVNULL)


def assert_one_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """The run ended with exit 4 and exactly one stderr line, naming each of `names`, without a secret."""
    assert done.returncode == Exit.UNREACHABLE, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("guardstream: cannot reach "), done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_loopback_port()


@pytest.fixture
def reviewers() -> str:
    return json.dumps({"alice": hash_token("t")})


@pytest.mark.parametrize("service", ["worker", "trainer", "console"])
def test_a_service_without_its_brokers_names_them_in_one_line(service: str, closed_port: int, reviewers: str,
                                                               tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port}",
                       GUARDSTREAM_CACHE__ENABLED="false", GUARDSTREAM_ACCESS__REVIEWERS=reviewers,
                       GUARDSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'review.db'}")
    line = assert_one_line(guardstream([service], env), f"the Kafka brokers at 127.0.0.1:{closed_port}")
    assert "GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS" in line
    assert not (tmp_path / "review.db").exists()  # nothing was built


def starts_with_one_warning(args: list[str], env: dict[str, str], *names: str) -> str:
    """The service printed one warning line naming each of `names` (no secret), and runs: its health server
    answers, and it stops on SIGTERM with exit 0."""
    port = free_loopback_port()
    env = {**env, "GUARDSTREAM_OBSERVABILITY__HEALTH_PORT": str(port)}
    process = subprocess.Popen([str(GUARDSTREAM), *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        warnings = []
        deadline = time.monotonic() + LIMIT_S
        while not warnings and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break  # the process ended
            warnings += [line.strip()] if line.startswith("guardstream: warning: cannot reach ") else []
        assert len(warnings) == 1, process.stderr.read() if process.poll() is not None else "no warning line"
        while not _answers(f"http://127.0.0.1:{port}/healthz") and time.monotonic() < deadline:
            assert process.poll() is None, "the service ended"
            time.sleep(0.1)
        assert _answers(f"http://127.0.0.1:{port}/healthz"), "its health server never answered"
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=LIMIT_S)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, rest
    assert "Traceback" not in rest and SECRET not in rest + warnings[0]
    assert not any(line.startswith("guardstream: warning:") for line in rest.splitlines())  # said once
    for name in names:
        assert name in warnings[0], warnings[0]
    return warnings[0]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_the_worker_without_redis_says_so_once_and_answers_without_the_cache(broker: LocalBroker, closed_port: int,
                                                                           tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                       GUARDSTREAM_CACHE__REDIS_URL=f"redis://user:{SECRET}@127.0.0.1:{closed_port}/0")
    starts_with_one_warning(["worker"], env, f"Redis at redis://***@127.0.0.1:{closed_port}/0", "connection refused",
                            "without the cache", "GUARDSTREAM_CACHE__ENABLED=false")


@pytest.mark.parametrize("service", ["worker", "trainer"])
def test_a_service_without_its_s3_endpoint_says_so_once_and_starts(service: str, broker: LocalBroker,
                                                                   closed_port: int, tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                       GUARDSTREAM_CACHE__ENABLED="false",
                       GUARDSTREAM_FETCH__S3_ENDPOINT=f"http://127.0.0.1:{closed_port}",
                       GUARDSTREAM_FETCH__S3_ALLOW_HTTP="true", GUARDSTREAM_FETCH__S3_ACCESS_KEY_ID="key",
                       GUARDSTREAM_FETCH__S3_SECRET_ACCESS_KEY=SECRET, GUARDSTREAM_DATASET__URI="s3://audit/labels")
    starts_with_one_warning([service], env, f"the S3 endpoint at 127.0.0.1:{closed_port}",
                            "GUARDSTREAM_FETCH__S3_ENDPOINT")


def test_the_console_without_its_review_store_names_it_without_its_password(broker: LocalBroker, closed_port: int,
                                                                             reviewers: str, tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                       GUARDSTREAM_ACCESS__REVIEWERS=reviewers,
                       GUARDSTREAM_DATABASE_URL=f"postgresql+psycopg://review:{SECRET}@127.0.0.1:{closed_port}/review")
    line = assert_one_line(guardstream(["console"], env), f"the review store at 127.0.0.1:{closed_port}/review",
                           "GUARDSTREAM_DATABASE_URL")
    assert "Kafka" not in line


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a broker that hangs)."""
    held: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    held.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield server.getsockname()[1]
        stop.set()
        thread.join()
    for conn in held:
        conn.close()


def test_a_dependency_that_never_answers_is_given_up_after_startup_timeout_s(silent_port: int,
                                                                            tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{silent_port}",
                       GUARDSTREAM_CACHE__REDIS_URL=f"redis://:{SECRET}@127.0.0.1:{silent_port}/0",
                       GUARDSTREAM_STARTUP_TIMEOUT_S="1")
    started = time.monotonic()
    line = assert_one_line(guardstream(["worker"], env), f"the Kafka brokers at 127.0.0.1:{silent_port} "
                           "(no answer within 1 s)")
    assert time.monotonic() - started < 20, line  # both checks at once, each bounded; the import takes the rest
