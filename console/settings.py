"""The console's settings: where verdicts come from, where the review store lives, who may sign in, and
which verdicts enter the review queue."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from runtime.settings import ObservabilitySettings, Section, ServiceSettings
from topics.settings import KafkaSettings
from workers.settings import FetchSettings, LimitSettings

Hashes = dict[str, str]


class SamplingSettings(Section):
    """Which verdicts enter the review queue. Each rule that fires is recorded as one of the item's reasons."""

    errors: bool = Field(True, description="every error verdict")
    near_threshold: float = Field(0.05, ge=0, le=0.5, description="scores within this distance of their "
                                  "threshold; 0 turns the rule off")
    request_threshold: float = Field(0.58, gt=0, lt=1, description="the request score at which the serving "
                                     "model says harmful (default: the shipped lite guard's)")
    response_threshold: float = Field(0.10, gt=0, lt=1, description="the response score at which it says harmful")
    escalations: bool = Field(True, description="verdicts a cascade escalated to its reasoning stage")
    disagreements: bool = Field(True, description="verdicts whose stages disagreed (lite vs reasoning)")
    random_rate: float = Field(0.05, ge=0, le=1, description="share of events sampled uniformly at random (by a "
                               "hash of the event id): the unbiased sample the quality page estimates from")
    reports: bool = Field(True, description="events that downstream users reported (POST /api/reports)")
    double_review_rate: float = Field(0.1, ge=0, le=1, description="share of queue items (by hash) that two "
                                      "reviewers label, so that their agreement can be measured")


class ReviewSettings(Section):
    undo_window_s: float = Field(10.0, ge=0, description="a label waits this long before it is published; undo "
                                 "within it withdraws the label, a later undo reopens the event for a new label "
                                 "that supersedes it")
    max_note_chars: int = Field(4_000, ge=0, le=4_000)
    thumbnail_px: int = Field(320, ge=16, le=2048, description="longer side of image thumbnails")
    max_thumbnails: int = Field(8, ge=0, le=65, description="thumbnails shown on a review page; the page says how "
                                "many more images the event has, and their thumbnails are not served")
    thumbnail_cache_bytes: int = Field(32 * 2**20, ge=0, description="made thumbnails kept in memory (least "
                                       "recently shown dropped first), so a page seen again fetches nothing")
    claim_s: float = Field(300.0, gt=0, description="an item shown to a reviewer is not offered to another "
                           "reviewer for this long")


class AccessSettings(Section):
    """Who may sign in. Tokens are stored hashed (`guardstream console hash-token`)."""

    reviewers: Hashes = Field(default_factory=dict, description="reviewer id → hash of their token")
    reporters: Hashes = Field(default_factory=dict, description="reporter id → hash of the bearer token that "
                              "may POST /api/reports")
    session_secret: SecretStr | None = Field(None, description="signs the session cookies; None: a random one "
                                             "per process (a restart signs everyone out)")
    session_max_age_s: int = Field(12 * 3600, ge=60)
    cookie_secure: bool = Field(True, description="Secure cookies (browsers accept them on loopback http too)")
    max_failed_sign_ins: int = Field(5, ge=1, description="failed sign-ins of one reviewer id from one address "
                                     "before that pair is refused for lockout_s")
    lockout_s: float = Field(300.0, gt=0)
    hash_threads: int = Field(1, ge=1, le=16, description="threads that run scrypt token checks (16 MiB and tens "
                              "of ms each), apart from the threads that serve pages; one keeps up with "
                              "checks_per_s and leaves the other cores to the pages")
    checks_per_s: float = Field(10.0, gt=0, description="token checks (sign-ins and reports) per second from all "
                                "clients together; beyond it, and check_burst, 429 with Retry-After without a check")
    check_burst: int = Field(30, ge=1, description="token checks allowed at once before checks_per_s applies")
    client_checks_per_s: float = Field(1.0, gt=0, description="token checks per second from one client address")
    client_check_burst: int = Field(10, ge=1, description="token checks one client address may make at once")

    @field_validator("reviewers", "reporters")
    @classmethod
    def _hashed(cls, value: Hashes) -> Hashes:
        from console.passwords import is_hash

        for who, hashed in value.items():
            if not is_hash(hashed):
                raise ValueError(f"the token of {who!r} is not a hash: store `guardstream console hash-token`'s "
                                 "output, never the token itself")
        return value


class ConsoleSettings(ServiceSettings):
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings(client_id="guardstream-console"))
    group_id: str = Field("guardstream-console", description="the console's consumer group")
    database_url: SecretStr = Field(SecretStr("sqlite:///guardstream-console.db"), description="SQLAlchemy URL: "
                                    "postgresql+psycopg://… in production, a SQLite file by default")
    migrate_on_start: bool = Field(True, description="bring the review store's schema up to date at start")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    forwarded_allow_ips: str = Field("", description="addresses of the TLS proxies in front, whose X-Forwarded-For "
                                     "is trusted for the client's address (the sign-in throttle keys on it)")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    resolve_timeout_s: float = Field(5.0, gt=0, description="how long reading an event at its coordinates may take")
    report_timeout_s: float = Field(10.0, gt=0, description="how long a report's read of its verdict, or of its "
                                    "event, may take, its wait for the reports' own reader included; past it the "
                                    "report is answered 503 (try again)")
    database_timeout_s: float = Field(30.0, gt=0, description="how long a statement waits for the review store "
                                      "(SQLite's write lock, a pooled or new PostgreSQL connection) before it fails")
    database_call_timeout_s: float = Field(60.0, gt=0, description="how long the verdict intake and the label "
                                           "publisher wait for one call to the review store before they count it "
                                           "as failed and retry: a server that hangs, or a network that swallows "
                                           "packets, raises no error of its own")
    backoff_base_s: float = Field(0.5, gt=0, description="after a failure of the broker or the review store, the "
                                  "intake and the label publisher retry after this long, doubling per failure in a "
                                  "row up to backoff_max_s")
    backoff_max_s: float = Field(30.0, gt=0)
    observability: ObservabilitySettings = Field(
        default_factory=lambda: ObservabilitySettings(health_port=9466))
