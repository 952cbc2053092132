"""The model a worker serves. Every event is bound to one at admission: its content key, its cache key,
its batch and its verdict all name that model, so a switch never mixes versions or serves an old
version's cached answer under a new version's name. Each event is judged at its tenant's operating point,
which its policy version carries (`1+strict`) into its content key, cache key and verdict, so an answer
made at one point is never served at another."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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


def adapter_setting(backend: str) -> str:
    """The setting that names the adapter folder `backend` serves. A backend serves adapter releases when its
    class has `with_adapter` (an adapter on the model already loaded) and a `<name>_lora_adapter` setting."""
    from workers.guard.registry import BACKENDS

    target = BACKENDS.get(backend)
    if target is None:
        raise BackendUnavailable(f"unknown guard backend {backend!r}; choose from {sorted(BACKENDS)}")
    module_name, _, class_name = target.partition(":")
    backend_cls = getattr(importlib.import_module(module_name), class_name)
    setting = f"{backend_cls.name}_lora_adapter"
    if not hasattr(backend_cls, "with_adapter") or setting not in GuardSettings.model_fields:
        raise BackendUnavailable(f"the {backend} backend cannot serve adapter releases")
    return setting


def same_checkpoint(base_model: str, model_path: Path) -> bool:
    """Whether `base_model` (a folder, a hub id `org/name`, or a bare name) names the checkpoint in `model_path`:
    the same path, or the same last component."""
    return Path(base_model) == model_path or PurePosixPath(base_model.rstrip("/")).name == model_path.name


def release_settings(current: GuardSettings, release: ModelRelease, path: Path) -> GuardSettings:
    """The guard settings that serve `release`: its backend and version, its artefact at `path` (local).
    An adapter release is served on the base checkpoint of `current` (MODEL_PATH), which its `base_model`,
    where given, must name."""
    update: dict[str, object] = {"backend": release.backend, "model_version": release.version}
    if release.kind == "adapter":
        setting = adapter_setting(release.backend)
        if current.model_path is None:
            raise BackendUnavailable(f"release {release.version}: an adapter release needs the base checkpoint "
                                     "in GUARDSTREAM_GUARD__MODEL_PATH")
        if release.base_model is not None and not same_checkpoint(release.base_model, current.model_path):
            raise BackendUnavailable(f"release {release.version}: the adapter is for base model {release.base_model!r}, "
                                     f"but the base checkpoint served is {str(current.model_path)!r}")
        update[setting] = path
    else:
        update[{"lite": "lite_artefact"}.get(release.backend, "model_path")] = path
    return current.model_copy(update=update)


def load_release(current: GuardBackend, guard: GuardSettings, release: ModelRelease) -> GuardBackend:
    """A backend for `release` (`guard` is its `release_settings`): an adapter on the running model where the
    current backend is the release's and serves the same base checkpoint, else a fresh load."""
    with_adapter = getattr(current, "with_adapter", None)
    same_base = getattr(current, "checkpoint", guard.model_path) == guard.model_path
    if release.kind == "adapter" and with_adapter is not None and current.name == release.backend and same_base:
        return with_adapter(release.version, getattr(guard, adapter_setting(release.backend)))  # type: ignore[no-any-return]
    from workers.guard.registry import load_backend

    return load_backend(guard)
