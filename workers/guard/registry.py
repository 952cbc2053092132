"""Backends by name. Each is imported only when chosen, so a missing heavy dependency stays local."""

from __future__ import annotations

import importlib

from workers.guard.base import GuardBackend
from workers.settings import GuardSettings

BACKENDS: dict[str, str] = {
    "lite": "workers.guard.lite:LiteGuard",
    "transformers": "workers.guard.hf_transformers:TransformersGuard",
    "cascade": "workers.guard.cascade:CascadeGuard",
    "openai": "workers.guard.openai_backend:OpenAIGuard",
    "vllm": "workers.guard.vllm_backend:VLLMGuard",
}


class UnknownBackend(ValueError):
    """The settings name a backend that does not exist."""


def load_backend(settings: GuardSettings) -> GuardBackend:
    target = BACKENDS.get(settings.backend)
    if target is None:
        raise UnknownBackend(f"unknown guard backend {settings.backend!r}; choose from {sorted(BACKENDS)}")
    module_name, _, class_name = target.partition(":")
    backend_cls = getattr(importlib.import_module(module_name), class_name)
    return backend_cls.from_settings(settings)  # type: ignore[no-any-return]
