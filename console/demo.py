"""`guardstream demo --console`: after the demo's waves, the console on the demo's broker, with the demo's
verdicts in its queue, until interrupted. It prints the address, a sign-in token made for this run, and
every label that arrives on the audit topic."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console

from console.passwords import hash_token, new_token
from console.service import ConsoleService
from console.settings import AccessSettings, ConsoleSettings, ReviewSettings, SamplingSettings
from runtime.settings import ObservabilitySettings
from schemas.events import AuditLabel
from topics.io import tail_topic
from topics.registry import TopicNames
from topics.settings import KafkaSettings
from workers.settings import FetchSettings

DEMO_REVIEWER = "demo"
DEMO_RANDOM_RATE = 0.25  # more than production's default, so the quality page has something to show


def demo_console_settings(kafka: KafkaSettings, folder: Path, fetch: FetchSettings, port: int,
                          token_hash: str) -> ConsoleSettings:
    return ConsoleSettings(
        kafka=kafka.model_copy(update={"client_id": "guardstream-console"}),
        group_id=f"{kafka.group_id}-console",
        database_url=SecretStr(f"sqlite:///{folder / 'review-store.db'}"),
        port=port,
        sampling=SamplingSettings(random_rate=DEMO_RANDOM_RATE),
        review=ReviewSettings(undo_window_s=5.0),
        access=AccessSettings(reviewers={DEMO_REVIEWER: token_hash}),
        fetch=fetch,
        observability=ObservabilitySettings(health_port=0),
    )


async def serve_console(out: Console, kafka: KafkaSettings, folder: Path, fetch: FetchSettings, port: int,
                        verdicts: int) -> None:
    """Run the console until SIGINT/SIGTERM, once its intake has read the demo's `verdicts`."""
    token = new_token()
    settings = demo_console_settings(kafka, folder, fetch, port, hash_token(token))
    service = ConsoleService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(service.run())
    labels = asyncio.create_task(_print_labels(out, kafka, TopicNames(kafka.topic_prefix).audit_labels))
    try:
        with out.status("the console is reading the verdicts into its review store…"):
            while service.intake.seen < verdicts and not runner.done():
                await asyncio.wait({runner}, timeout=0.1)
        if runner.done():
            runner.result()
        stats = await asyncio.to_thread(service.store.queue_stats, datetime.now(UTC))
        reasons = ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in sorted(stats.by_reason.items()))
        out.print(f"[bold]review queue[/] {stats.open} events ({reasons}); random sample rate "
                  f"{DEMO_RANDOM_RATE:.0%}, near threshold ±{settings.sampling.near_threshold}")
        # plain prints: one line each, whatever the terminal's width, for people and scripts alike
        print(f"console: {service.address}", flush=True)
        print(f"sign in as: {DEMO_REVIEWER}", flush=True)
        print(f"token: {token}", flush=True)
        print(f"labels go to: {settings.kafka.topic_prefix}moderation.audit.labels on {kafka.bootstrap_servers} "
              f"({settings.review.undo_window_s:g} s after you give them: the undo window)", flush=True)
        print("press Ctrl-C to stop", flush=True)
        await asyncio.wait({runner, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        service.stop()
        labels.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await labels
        await runner
        # the handlers stay until the loop closes: a second Ctrl-C while the demo's worker drains is ignored


async def _print_labels(out: Console, kafka: KafkaSettings, topic: str) -> None:
    async for record in tail_topic(kafka, topic, from_beginning=True):
        label = AuditLabel.model_validate(record["value"])
        response = "" if label.response_harmful is None else \
            f", response {'harmful' if label.response_harmful else 'unharmful'}"
        print(f"label on {topic}: event {label.event_id}: request "
              f"{'harmful' if label.request_harmful else 'unharmful'}{response}, by {label.labeller}"
              + (f" ({label.note})" if label.note else ""), flush=True)

