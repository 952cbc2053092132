"""Guard backends: one protocol, chosen by name in settings."""

from workers.guard.base import GuardBackend, GuardRequest, GuardResult
from workers.guard.registry import load_backend

__all__ = ["GuardBackend", "GuardRequest", "GuardResult", "load_backend"]
