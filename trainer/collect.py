"""One label record in, its example or its counted skip out: no label can stop the trainer's agent.

Resolving a label (`trainer/resolve.py`) ends in one of these ways:
- an example;
- `Unresolvable`: it can never resolve; counted by its reason and skipped;
- a KafkaError: tried again with a backoff, since the broker may be down and the label must not be lost to
  an outage. Once the label has been failing for `labels.give_up_after_s`, the broker is asked whether it
  answers (a metadata request): if it does, the trouble is the record's (a topic the trainer may not read,
  a batch it cannot decode) and the label is skipped as `LastingBrokerError`; if not, it is an outage
  and the label waits for the broker however long that takes;
- any other exception: a bug met on this one record; skipped as `ResolveFailed`, its traceback logged.
While a label is being retried, `problem` says so (the trainer's /readyz).
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.errors import KafkaError

from runtime.backoff import backoff_s
from schemas.events import SourceRef
from topics.admin import count_brokers
from topics.records import Unresolvable
from topics.settings import KafkaSettings
from trainer.dataset import AuditExample
from trainer.metrics import TrainerMetrics
from trainer.resolve import Resolver
from trainer.settings import LabelSettings

log = structlog.get_logger("guardstream.trainer")

FIRST_RETRY_S = 0.5


class ResolveFailed(Unresolvable):
    """Resolving the label raised an exception no rule expects: a bug met on this record, not the agent's end."""

    reason = "resolve_failed"


class LastingBrokerError(Unresolvable):
    """The label's records kept failing to read for `labels.give_up_after_s` while the broker answered."""

    reason = "broker_error_lasting"


class LabelCollector:
    """Turns label records into examples for the trainer's agent; never raises for a record."""

    def __init__(self, resolver: Resolver, kafka: KafkaSettings, settings: LabelSettings,
                 metrics: TrainerMetrics) -> None:
        self.resolver = resolver
        self.kafka = kafka
        self.settings = settings
        self.metrics = metrics
        self.problem: str | None = None  # set while a label is being retried

    async def example(self, raw: bytes | None, source: SourceRef) -> AuditExample | None:
        """The label's example, or None once the label is counted as skipped."""
        try:
            example = await self._resolve(raw, source)
        except Unresolvable as exc:
            self.metrics.labels_unresolvable.labels(exc.reason).inc()
            log.warning("label_unresolvable", reason=exc.reason, error=str(exc), partition=source.partition,
                        offset=source.offset, exc_info=isinstance(exc, ResolveFailed))
            return None
        finally:
            self.problem = None
        self.metrics.labels_resolved.inc()
        return example

    async def _resolve(self, raw: bytes | None, source: SourceRef) -> AuditExample:
        loop = asyncio.get_running_loop()
        started, failures = loop.time(), 0
        while True:
            try:
                return await self.resolver.resolve(raw, source)
            except Unresolvable:
                raise
            except KafkaError as exc:
                failures += 1
                await self._after_broker_error(exc, source, failures, loop.time() - started)
            except Exception as exc:
                raise ResolveFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _after_broker_error(self, exc: KafkaError, source: SourceRef, failures: int, failing_s: float) -> None:
        """Wait before the next try, or raise LastingBrokerError when the record, not the broker, is at fault."""
        error = f"{type(exc).__name__}: {exc}"
        if failing_s >= self.settings.give_up_after_s:
            if await self._broker_answers():
                raise LastingBrokerError(f"failing for {failing_s:.0f}s while the broker answers: {error}") from exc
            error += "; the broker does not answer, so the label waits for it"
        self.metrics.resolve_retries.inc()
        self.problem = (f"the label at {source.topic}[{source.partition}]@{source.offset} cannot be resolved "
                        f"({error}), retried {failures} times; labels after it wait")
        log.warning("label_resolve_retry", error=error, failures=failures, failing_s=round(failing_s, 1),
                    partition=source.partition, offset=source.offset)
        await asyncio.sleep(backoff_s(failures, FIRST_RETRY_S, self.settings.retry_backoff_max_s))

    async def _broker_answers(self) -> bool:
        try:
            await asyncio.wait_for(count_brokers(self.kafka), self.settings.broker_probe_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("broker_probe_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True
