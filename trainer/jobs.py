"""The training jobs by name (`guardstream train run NAME`); the interface they implement is
`trainer/job_interface.py`.

A job gets the training part of the data set (held-out events already removed: it never sees them) and
a folder, and returns a `Candidate`: an artefact some guard backend can serve, with what it was made
from. Evaluation, the release gate and publishing are the same for every job (`trainer/pipeline.py`).

Jobs: `lite-refit` (the lite guard's text head, CPU, minutes); `reasoning-sft` and `reasoning-grpo`
(GuardReasoner-VL retrained on the serving checkpoint, `trainer/reasoning_job.py`), which return a LoRA
adapter (or a checkpoint folder) for the `transformers` or `vllm` backend: `kind="adapter"` and `base_model`
say how to serve it.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.cli_errors import Exit
from trainer.job_interface import Job
from trainer.settings import TrainerSettings


class UnknownJob(ValueError):
    """A job name that no job answers to."""

    exit_code = Exit.USAGE


def _lite_refit(settings: TrainerSettings) -> Job:
    from trainer.lite_refit import LiteRefit

    return LiteRefit(settings.lite_refit)


def _reasoning_sft(settings: TrainerSettings) -> Job:
    from trainer.reasoning_sft import ReasoningSft

    return ReasoningSft(settings)


def _reasoning_grpo(settings: TrainerSettings) -> Job:
    from trainer.reasoning_grpo import ReasoningGrpo

    return ReasoningGrpo(settings)


JOBS: dict[str, Callable[[TrainerSettings], Job]] = {"lite-refit": _lite_refit, "reasoning-sft": _reasoning_sft,
                                                      "reasoning-grpo": _reasoning_grpo}


def make_job(name: str, settings: TrainerSettings) -> Job:
    factory = JOBS.get(name)
    if factory is None:
        raise UnknownJob(f"unknown job {name!r}; choose from {sorted(JOBS)}")
    return factory(settings)
