"""The model a worker serves. Every event is bound to one at admission: its content key, its cache key,
its batch and its verdict all name that model, so a switch never mixes versions or serves an old
version's cached answer under a new version's name. Each event is judged at its tenant's operating point,
which its policy version carries (`1+strict`) into its content key, cache key and verdict, so an answer
made at one point is never served at another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.events import ChatEvent, ModelRef, ModelRelease
from workers.cache import cache_key
from workers.content_key import content_key
from workers.errors import BackendUnavailable
from workers.guard.base import GuardBackend
from workers.guard_stage import GuardStage
from workers.settings import GuardSettings, OperatingPoint, point_policy


@dataclass(eq=False)
class ServedModel:
    backend: GuardBackend
    stage: GuardStage
    ref: ModelRef
    policy_version: str
    cache_prefix: str
    owned: bool  # the worker loaded it, so the worker closes it once it is replaced and idle
    users: int = 0  # events bound to this model and not yet answered
    default_point: OperatingPoint = OperatingPoint.BALANCED  # a tenant's without one of its own
    tenant_points: Mapping[str, OperatingPoint] = field(default_factory=dict)

    @classmethod
    def of(cls, backend: GuardBackend, stage: GuardStage, guard: GuardSettings, cache_prefix: str,
           owned: bool) -> ServedModel:
        """`backend` serving `guard`'s model, policy and operating points."""
        return cls(backend, stage, ModelRef(name=guard.model_name, version=guard.model_version), guard.policy_version,
                   cache_prefix, owned, default_point=guard.operating_point,
                   tenant_points=dict(guard.tenant_operating_points))

    def operating_point(self, tenant: str) -> OperatingPoint:
        """The point `tenant`'s events are judged at."""
        return self.tenant_points.get(tenant, self.default_point)

    def policy(self, point: OperatingPoint) -> str:
        """The policy version of answers made at `point` (in keys and verdicts)."""
        return point_policy(self.policy_version, point)

    @property
    def keyed_version(self) -> str:
        """The version in keys: the declared one, plus the backend's fingerprint where it has one (the lite
        head's digest), so answers of a retrained artefact never mix with the old one's under one version."""
        fingerprint = getattr(self.backend, "fingerprint", "")
        return f"{self.ref.version}+{fingerprint}" if fingerprint else self.ref.version

    def content_key(self, event: ChatEvent, digests: list[str]) -> str:
        """The key of `event`'s answer at its tenant's operating point."""
        return content_key(event.text, event.response, digests, self.ref.name, self.keyed_version,
                           self.policy(self.operating_point(event.tenant)))

    def cache_key(self, key: str, point: OperatingPoint) -> str:
        """Where the answer of content key `key`, made at `point`, is cached."""
        return cache_key(self.cache_prefix, self.ref.name, self.keyed_version, self.policy(point), key)


def release_settings(current: GuardSettings, release: ModelRelease, path: Path) -> GuardSettings:
    """The guard settings that serve `release`: its backend and version, its artefact at `path` (local)."""
    if release.kind == "adapter" and release.backend != "vllm":
        raise BackendUnavailable(f"release {release.version}: adapter releases need the vllm backend's LoRA support")
    update: dict[str, object] = {"backend": release.backend, "model_version": release.version}
    target = {"lite": "lite_artefact"}.get(release.backend, "model_path")
    update["vllm_lora_adapter" if release.kind == "adapter" else target] = path
    return current.model_copy(update=update)


def load_release(current: GuardBackend, guard: GuardSettings, release: ModelRelease) -> GuardBackend:
    """A backend for `release` (`guard` is its `release_settings`): an adapter on the running engine where
    the backend can do that, else a fresh load."""
    with_adapter = getattr(current, "with_adapter", None)
    if release.kind == "adapter" and with_adapter is not None:
        return with_adapter(release.version, guard.vllm_lora_adapter)  # type: ignore[no-any-return]
    from workers.guard.registry import load_backend

    return load_backend(guard)
