"""The served model's lifecycle: which model newly admitted events are bound to, switching to a new release
while events already admitted finish on theirs, and closing a replaced model once its last event is answered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from schemas.events import ModelRelease
from workers.artefacts import materialise
from workers.batcher import MicroBatcher
from workers.guard.base import GuardBackend, concurrent_requests
from workers.guard_stage import GuardStage
from workers.metrics import WorkerMetrics
from workers.served_model import ServedModel, load_release, release_settings
from workers.settings import GuardSettings, WorkerSettings
from workers.task_supervision import TaskSupervisor

log = structlog.get_logger("guardstream.worker")


class ModelLifecycle:
    current: ServedModel  # set by serve_first(), at the worker's start

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, tasks: TaskSupervisor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tasks = tasks

    def serve_first(self, backend: GuardBackend, owned: bool) -> ServedModel:
        """Serve the model the worker starts with (`owned`: the worker loaded it, so the worker closes it)."""
        self.current = self._serve(backend, self.settings.guard, owned)
        return self.current

    def _serve(self, backend: GuardBackend, guard: GuardSettings, owned: bool) -> ServedModel:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(guard.model_name, guard.model_version, backend.name).set(1)
        return ServedModel.of(backend, GuardStage(backend, guard, self.metrics), guard, self.settings.cache.key_prefix,
                              owned)

    async def switch(self, release: ModelRelease, batcher: MicroBatcher[Any, Any]) -> None:
        """Serve `release` from now on, `batcher` reshaped for it; events already admitted finish on the model
        they were bound to. A release that cannot be loaded is logged and counted, and the current model stays."""
        current = self.current.ref
        if release.version == current.version:
            return
        try:
            path = await materialise(release.artefact_uri, self.settings.fetch, self.settings.guard.artefact_cache_dir)
            guard = release_settings(self.settings.guard, release, path)
            backend = await asyncio.to_thread(load_release, self.current.backend, guard, release)
        except Exception as exc:
            self.metrics.model_switch_failures.inc()
            log.error("model_switch_failed", version=release.version, error=f"{type(exc).__name__}: {exc}")
            return
        replaced, self.current = self.current, self._serve(backend, guard, owned=True)
        batcher.reshape(*self.batch_shape(backend))
        if replaced.owned:
            self.tasks.spawn(self._retire(replaced))
        self.metrics.model_switches.inc()
        log.info("model_switched", name=release.name, old=current.version, new=release.version, backend=backend.name)

    def batch_shape(self, backend: GuardBackend) -> tuple[int, int, int]:
        """max_batch, max_wait_ms and batches in flight for `backend`: the settings' micro-batches, or for a
        backend that batches on its own, one request at a time in as many slots as it takes at once."""
        own = concurrent_requests(backend)
        if own is not None:
            return 1, 0, own
        b = self.settings.batch
        return b.max_batch, b.max_wait_ms, b.max_batches_in_flight

    async def _retire(self, replaced: ServedModel) -> None:
        """Close a replaced model once the events bound to it are answered (frees GPU memory)."""
        while replaced.users:
            await asyncio.sleep(0.05)
        await replaced.backend.close()
        self.metrics.models_retired.inc()
        log.info("model_retired", version=replaced.ref.version)

    async def close(self) -> None:
        """At shutdown: close the model served now, if the worker loaded it."""
        if self.current.owned:
            await self.current.backend.close()
