"""The options every Kafka client is built with: security settings checked, passed whole, secrets never shown."""

from __future__ import annotations

import secrets
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from runtime.logs import configure_logging
from tests.kafka_io import read_topic
from tests.tls import SelfSignedCert, self_signed_cert
from topics.admin import create_topics
from topics.clients import MASKED, KafkaSecurityError, client_options
from topics.io import produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import KafkaSettings

SECRET = f"sasl-{secrets.token_hex(8)}"


@pytest.fixture
def cert(tmp_path: Path) -> SelfSignedCert:
    return self_signed_cert(tmp_path)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def secured(cert: SelfSignedCert, protocol: str = "SASL_SSL", mechanism: str | None = "SCRAM-SHA-512",
            **overrides: object) -> KafkaSettings:
    values: dict[str, object] = {
        "bootstrap_servers": "broker-1.example:9093,broker-2.example:9093", "client_id": "guardstream-test",
        "security_protocol": protocol, "ssl_cafile": cert.cert_file, "ssl_certfile": cert.cert_file,
        "ssl_keyfile": cert.key_file, "ssl_check_hostname": False,
    }
    if protocol.startswith("SASL_"):
        values.update(sasl_mechanism=mechanism, sasl_username="guardstream", sasl_password=SECRET)
    if not protocol.endswith("SSL"):
        values.update(ssl_cafile=None, ssl_certfile=None, ssl_keyfile=None)
    values.update(overrides)
    return KafkaSettings(**values)  # type: ignore[arg-type]


def clients_of(options: object) -> tuple[list[AIOKafkaClient], list[object]]:
    producer = AIOKafkaProducer(**options, acks="all")  # type: ignore[arg-type]
    consumer = AIOKafkaConsumer(**options, group_id="g")  # type: ignore[arg-type]
    admin = AIOKafkaAdminClient(**options)  # type: ignore[arg-type]
    return [producer.client, consumer._client, admin._client], [producer, consumer, admin]


@pytest.mark.parametrize(("protocol", "mechanism"), [
    ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "PLAIN"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SSL", None),
])
async def test_every_client_accepts_the_security_options_and_carries_them(
    cert: SelfSignedCert, protocol: str, mechanism: str | None
) -> None:
    options = client_options(secured(cert, protocol, mechanism))
    low_level, clients = clients_of(options)  # constructed, not started: nothing listens at example hosts
    try:
        for client in low_level:
            assert client._bootstrap_servers == "broker-1.example:9093,broker-2.example:9093"
            assert client._client_id == "guardstream-test"
            assert client._security_protocol == protocol
            if mechanism:
                assert (client._sasl_mechanism, client._sasl_plain_username) == (mechanism, "guardstream")
                assert client._sasl_plain_password == SECRET
            if protocol.endswith("SSL"):
                context = client._ssl_context
                assert isinstance(context, ssl.SSLContext) and context.verify_mode is ssl.CERT_REQUIRED
                assert context.check_hostname is False  # as configured; aiokafka's helper would force True
                assert len(context.get_ca_certs()) == 1  # our CA file, not the system's
            else:
                assert client._ssl_context is None
    finally:
        producer, consumer, admin = clients
        await producer.stop()  # type: ignore[attr-defined]
        await consumer.stop()  # type: ignore[attr-defined]
        await admin.close()  # type: ignore[attr-defined]


def test_hostname_checking_stays_on_unless_turned_off(cert: SelfSignedCert) -> None:
    assert client_options(secured(cert, "SSL", ssl_check_hostname=True))["ssl_context"].check_hostname is True


@pytest.mark.parametrize(("change", "message"), [
    ({"sasl_mechanism": None}, "SASL_SSL needs sasl_mechanism"),
    ({"sasl_username": None, "sasl_password": None}, "needs sasl_username, sasl_password"),
    ({"sasl_password": ""}, "needs sasl_password"),
    ({"ssl_cafile": Path("/nonexistent/ca.pem")}, "ssl_cafile=/nonexistent/ca.pem: no such file"),
    ({"ssl_keyfile": Path("/nonexistent/key.pem")}, "ssl_keyfile=/nonexistent/key.pem: no such file"),
    ({"ssl_certfile": None}, "ssl_keyfile is set without ssl_certfile"),
    ({"security_protocol": "SSL"}, "sasl_\\* settings are set but security_protocol=SSL does not authenticate"),
    ({"security_protocol": "SASL_PLAINTEXT"}, "ssl_\\* settings are set but security_protocol=SASL_PLAINTEXT"),
])
def test_a_combination_that_cannot_work_is_refused_with_a_sentence(
    cert: SelfSignedCert, change: dict[str, object], message: str
) -> None:
    with pytest.raises(KafkaSecurityError, match=message) as refused:
        client_options(secured(cert, **change))  # type: ignore[arg-type]
    assert isinstance(refused.value, ValueError) and SECRET not in str(refused.value)


def test_a_key_file_that_does_not_load_is_refused_with_its_name(cert: SelfSignedCert, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(KafkaSecurityError, match="TLS files could not be loaded .*garbage.pem"):
        client_options(secured(cert, ssl_keyfile=garbage))


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_the_password_never_shows_in_the_settings_the_options_or_a_log_line(
    cert: SelfSignedCert, fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    kafka = secured(cert, ssl_keyfile_password="key-" + SECRET)
    options = client_options(kafka)
    assert options["sasl_plain_password"] == SECRET  # what the client is given
    for shown in (repr(kafka), str(kafka), repr(options), str(options), f"{options}"):
        assert SECRET not in shown
    assert MASKED in str(options) and "guardstream" in str(options)
    configure_logging(fmt, "debug")
    structlog.get_logger("test").info("kafka_client", options=options, kafka=kafka)
    err = capsys.readouterr().err
    assert "kafka_client" in err and MASKED in err
    assert SECRET not in err


async def test_plaintext_against_the_real_broker_still_works(broker: LocalBroker) -> None:
    names = TopicNames(f"kc-{uuid.uuid4().hex[:8]}.")
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, client_id="guardstream-kc")
    assert set(client_options(kafka)) == {"bootstrap_servers", "client_id", "security_protocol"}
    await create_topics(kafka, topic_specs(names, partitions=1))
    await produce_raw(kafka, names.events, [(b"k", b"v")])
    records = await read_topic(broker.bootstrap_servers, names.events, 1)
    assert [(r.key, r.value) for r in records] == [(b"k", b"v")]
