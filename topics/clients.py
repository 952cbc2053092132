"""What every Kafka client guardstream builds (worker, release watcher, topic tools) is given: the brokers,
the client id, and the security settings, checked once here so a bad combination fails with a sentence
instead of a handshake error.

    client_options(kafka)   kwargs for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient
    stop_consumer(consumer) stop() without aiokafka's stray CancelledError

The SASL password and the TLS key password are unwrapped from their SecretStr here and nowhere else; the
options print with the SASL password masked.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context

from topics.settings import KafkaSettings

__all__ = ["ClientOptions", "KafkaSecurityError", "as_kafka_settings", "client_options", "stop_consumer"]

MASKED = "**********"
SECRET_OPTIONS = frozenset({"sasl_plain_password"})


class KafkaSecurityError(ValueError):
    """The Kafka security settings do not make a working (or an honest) combination."""


class ClientOptions(Mapping[str, Any]):
    """Client kwargs (`AIOKafkaProducer(**options)`) whose printed form never shows the SASL password.
    A mapping, not a dict: a JSON log renderer falls back to repr() for it instead of dumping its values."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return repr({k: MASKED if k in SECRET_OPTIONS and v is not None else v for k, v in self._values.items()})

    __str__ = __repr__


def as_kafka_settings(kafka: KafkaSettings | str) -> KafkaSettings:
    """Settings from settings, or from a bare bootstrap address (plaintext, as the local broker speaks)."""
    return KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka


def client_options(kafka: KafkaSettings) -> ClientOptions:
    """The kwargs every aiokafka client needs; KafkaSecurityError if the security settings do not fit."""
    protocol = kafka.security_protocol
    options: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers, "client_id": kafka.client_id,
                               "security_protocol": protocol}
    if protocol.startswith("SASL_"):
        options.update(_sasl_options(kafka))
    elif kafka.sasl_mechanism or kafka.sasl_username or kafka.sasl_password:
        raise KafkaSecurityError(f"sasl_* settings are set but security_protocol={protocol} does not authenticate: "
                                 "use SASL_SSL (or SASL_PLAINTEXT), or remove them")
    if protocol.endswith("SSL"):
        options["ssl_context"] = _ssl_context(kafka)
    elif kafka.ssl_cafile or kafka.ssl_certfile or kafka.ssl_keyfile or kafka.ssl_keyfile_password:
        raise KafkaSecurityError(f"ssl_* settings are set but security_protocol={protocol} does not use TLS: "
                                 "use SSL (or SASL_SSL), or remove them")
    return ClientOptions(options)


def _sasl_options(kafka: KafkaSettings) -> dict[str, Any]:
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    given = {"sasl_mechanism": kafka.sasl_mechanism, "sasl_username": kafka.sasl_username, "sasl_password": password}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise KafkaSecurityError(f"security_protocol={kafka.security_protocol} needs {', '.join(missing)}")
    return {"sasl_mechanism": kafka.sasl_mechanism, "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": password}


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """Verifying context: the CA file (or the system's CAs), and the client certificate for mutual TLS."""
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path: Path | None = getattr(kafka, name)
        if path is not None and not path.is_file():
            raise KafkaSecurityError(f"{name}={path}: no such file")
    if kafka.ssl_keyfile and not kafka.ssl_certfile:
        raise KafkaSecurityError("ssl_keyfile is set without ssl_certfile: the key belongs to a client certificate")
    if kafka.ssl_keyfile_password and not kafka.ssl_certfile:
        raise KafkaSecurityError("ssl_keyfile_password is set without a client certificate (ssl_certfile)")
    password = kafka.ssl_keyfile_password.get_secret_value() if kafka.ssl_keyfile_password else None
    try:
        context = create_ssl_context(cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile,
                                     keyfile=kafka.ssl_keyfile, password=password)
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(str(p) for p in (kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile) if p)
        raise KafkaSecurityError(f"TLS files could not be loaded ({files or 'system CAs'}): {exc}") from exc
    context.check_hostname = kafka.ssl_check_hostname
    return context


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. A consumer without a group stopped before its coordinator's task first ran raises
    that task's CancelledError from stop() (aio-libs/aiokafka#647); that one is not a cancel of ours, and
    passing it on would end the caller's task as if cancelled."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
