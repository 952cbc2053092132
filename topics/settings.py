"""How every client reaches the brokers: addresses, group, timeouts, TLS and SASL (the `kafka` section of each
service's settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

# The local broker (`guardstream broker`, the demo's, the tests') answers a fetch only at its deadline, where
# Kafka answers as soon as records arrive: against it a short wait keeps the demo and the local walk fast.
LOCAL_BROKER_FETCH_MAX_WAIT_MS = 10


class KafkaSettings(BaseModel):
    """The `kafka` section; a misspelt key is an error, not a silently ignored value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    group_id: str = "guardstream-workers"
    client_id: str = "guardstream-worker"
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(2_000, ge=100)
    max_poll_records: int = Field(256, ge=1)
    poll_timeout_ms: int = Field(200, ge=1)
    commit_interval_ms: int = Field(200, ge=10)
    fetch_max_wait_ms: int = Field(500, ge=0, description="how long a fetch waits at the broker for new records: "
                                   "Kafka answers as soon as any arrive, so this only spaces an idle client's "
                                   "fetches; the local broker answers only at this deadline (its profile: "
                                   "LOCAL_BROKER_FETCH_MAX_WAIT_MS)")
    linger_ms: int = Field(0, ge=0, description="how long an answer waits for others to share its produce request; "
                           "under load they share it anyway, while the previous request is in flight")
    produce_batch_bytes: int = Field(262_144, ge=1_024, description="answers per partition in one produce request")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group with no committed offset starts: earliest answers every retained "
        "event (a first deployment works through the whole retention), latest skips what came before")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certificates")
    ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    ssl_keyfile: Path | None = None
    ssl_keyfile_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    replication_factor: int | None = Field(None, ge=1, description="for `topics create`; None: min(3, brokers)")
    produce_backoff_max_s: float = Field(5.0, gt=0, description="cap of the backoff between produce retries")
    revoke_drain_s: float = Field(2.0, ge=0, description="how long a member losing partitions in a rebalance "
                                  "waits for their events in flight to be answered before it commits them and lets "
                                  "them go (the group waits too): fewer answers repeated by the new owner")
    broker_check_interval_s: float = Field(5.0, gt=0, description="how often the worker asks the brokers for "
                                           "metadata, so /readyz says when they stop answering")
