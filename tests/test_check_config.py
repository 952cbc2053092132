"""`guardstream worker|trainer|console --check-config` validates the settings (environment and
GUARDSTREAM_CONFIG_FILE) without connecting to anything: valid, one JSON line with the effective settings,
secrets masked, exit 0; invalid, one line per error naming its GUARDSTREAM_* variable, exit 3."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.passwords import hash_token
from runtime.cli_errors import Exit
from tests.test_startup import SECRET, guardstream, hermetic_env
from topics.settings import LOCAL_BROKER_FETCH_MAX_WAIT_MS

SERVICES = ["worker", "trainer", "console"]


class Listener:
    """A loopback port that counts the connections made to it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self.server.accept()[0].close()
                self.connections += 1
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.close()


def secret_env(tmp_path: Path, port: int) -> dict[str, str]:
    """Every dependency at `port`, and a secret in every setting that keeps one."""
    return hermetic_env(
        tmp_path,
        GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        GUARDSTREAM_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT", GUARDSTREAM_KAFKA__SASL_MECHANISM="PLAIN",
        GUARDSTREAM_KAFKA__SASL_USERNAME="svc", GUARDSTREAM_KAFKA__SASL_PASSWORD=SECRET,
        GUARDSTREAM_CACHE__REDIS_URL=f"redis://:{SECRET}@127.0.0.1:{port}/0",
        GUARDSTREAM_FETCH__S3_ENDPOINT=f"http://svc:{SECRET}@127.0.0.1:{port}",
        GUARDSTREAM_FETCH__S3_ACCESS_KEY_ID="key", GUARDSTREAM_FETCH__S3_SECRET_ACCESS_KEY=SECRET,
        GUARDSTREAM_GUARD__OPENAI_API_KEY=SECRET,
        GUARDSTREAM_DATABASE_URL=f"postgresql+psycopg://review:{SECRET}@127.0.0.1:{port}/review",
        GUARDSTREAM_ACCESS__REVIEWERS=json.dumps({"alice": hash_token("t")}),
        GUARDSTREAM_ACCESS__SESSION_SECRET=SECRET,
    )


@pytest.mark.parametrize("service", SERVICES)
def test_valid_settings_are_printed_masked_and_nothing_is_contacted(service: str, listener: Listener,
                                                                    tmp_path: Path) -> None:
    config = tmp_path / "guardstream.toml"
    config.write_text('[kafka]\ngroup_id = "from-the-file"\n')
    env = secret_env(tmp_path, listener.port) | {"GUARDSTREAM_CONFIG_FILE": str(config)}
    done = guardstream([service, "--check-config"], env)
    assert done.returncode == Exit.OK, done.stderr
    assert SECRET not in done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    checked = json.loads(line)
    assert checked["service"] == service and checked["settings_ok"] and checked["config_file"] == str(config)
    kafka = checked["settings"]["kafka"]
    assert kafka["group_id"] == "from-the-file" and kafka["sasl_password"] == "**********"
    assert kafka["bootstrap_servers"] == f"127.0.0.1:{listener.port}"
    assert kafka["fetch_max_wait_ms"] == 500  # Kafka's own default; the local broker's profile sets less
    assert LOCAL_BROKER_FETCH_MAX_WAIT_MS < 500
    assert checked["settings"]["fetch"]["s3_secret_access_key"] == "**********"
    assert listener.connections == 0


@pytest.mark.parametrize("service", SERVICES)
def test_invalid_settings_are_one_line_each_naming_the_variable(service: str, listener: Listener,
                                                                tmp_path: Path) -> None:
    env = secret_env(tmp_path, listener.port) | {
        "GUARDSTREAM_KAFKA__FETCH_MAX_WAIT_MS": "-1",
        "GUARDSTREAM_KAFKA__FETCH_MAX_WAIT": "5",  # misspelt
        "GUARDSTREAM_FETCH__TIMEOUT_S": "soon",
    }
    done = guardstream([service, "--check-config"], env)
    assert done.returncode == Exit.INPUT, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr and SECRET not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 3, done.stderr
    for variable in ("GUARDSTREAM_KAFKA__FETCH_MAX_WAIT_MS", "GUARDSTREAM_KAFKA__FETCH_MAX_WAIT",
                     "GUARDSTREAM_FETCH__TIMEOUT_S"):
        assert sum(f"({variable})" in line for line in lines) == 1, done.stderr
    assert listener.connections == 0


def test_settings_that_only_fail_together_are_named(listener: Listener, tmp_path: Path) -> None:
    """SASL settings without a SASL protocol: no single field is wrong, the combination is."""
    env = secret_env(tmp_path, listener.port) | {"GUARDSTREAM_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"}
    done = guardstream(["worker", "--check-config"], env)
    assert done.returncode == Exit.INPUT and len(done.stderr.splitlines()) == 1, done.stderr
    assert "GUARDSTREAM_KAFKA__" in done.stderr and "security_protocol=PLAINTEXT" in done.stderr
    assert SECRET not in done.stderr


def test_a_console_without_reviewers_fails_the_check(listener: Listener, tmp_path: Path) -> None:
    env = secret_env(tmp_path, listener.port)
    del env["GUARDSTREAM_ACCESS__REVIEWERS"]
    done = guardstream(["console", "--check-config"], env)
    assert done.returncode == Exit.INPUT and "GUARDSTREAM_ACCESS__REVIEWERS" in done.stderr, done.stderr


@pytest.mark.parametrize(("content", "says"), [(None, "no such file"), ("[kafka\n", "not a TOML file")])
def test_a_config_file_that_cannot_be_read_is_an_error_not_ignored(content: str | None, says: str,
                                                                  tmp_path: Path) -> None:
    config = tmp_path / "guardstream.toml"
    if content is not None:
        config.write_text(content)
    env = hermetic_env(tmp_path, GUARDSTREAM_CONFIG_FILE=str(config))
    for args in (["worker", "--check-config"], ["worker"]):
        done = guardstream(args, env)
        assert done.returncode == Exit.INPUT and len(done.stderr.splitlines()) == 1, done.stderr
        assert f"GUARDSTREAM_CONFIG_FILE={config}: {says}" in done.stderr and "Traceback" not in done.stderr
