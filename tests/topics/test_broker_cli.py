"""`guardstream broker`: the local broker with the project's topics, the line that points services at it, a
clean stop on Ctrl-C or SIGTERM (its broker process too), and one line when the port is taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from topics.admin import check_topics
from topics.registry import TopicNames, topic_specs

GUARDSTREAM = Path(sys.executable).with_name("guardstream")
EXPORT = "export GUARDSTREAM_KAFKA__BOOTSTRAP_SERVERS="


def broker_process(*args: str, prefix: str = "") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    env["GUARDSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    return subprocess.Popen([str(GUARDSTREAM), "broker", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def export_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:  # ends when the process does
        if line.startswith(EXPORT):
            return line.strip()
    raise AssertionError(f"no export line; exit {process.wait()}: {process.stderr.read() if process.stderr else ''}")


def accepts_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_the_broker_command_creates_the_topics_prints_the_export_and_stops_cleanly(stop: signal.Signals) -> None:
    names = TopicNames(f"b-{uuid.uuid4().hex[:8]}.")
    process = broker_process("--port", "0", "--partitions", "2", prefix=names.prefix)
    try:
        servers = export_line(process).removeprefix(EXPORT)
        checks = await check_topics(servers, topic_specs(names, partitions=2, replication_factor=1))
        assert [c.describe() for c in checks] == ["ok"] * len(checks)
        process.send_signal(stop)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert out.strip().endswith(f"local broker on {servers} stopped") and err == ""
    assert not accepts_connections(servers), "the broker process outlived the command"


def test_a_port_in_use_is_one_line_with_exit_4() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = broker_process("--port", str(port))
        out, err = process.communicate(timeout=60)
    assert process.returncode == 4 and out == ""
    assert err.splitlines() == [f"guardstream: 127.0.0.1:{port} is in use (a broker already running there?); "
                                "pick another with --port, or --port 0 for a free one"]
