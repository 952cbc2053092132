"""Dynamic clipping: the schedule B_s = eps * (s_total - s) / s_total with its floor, and the callback that
sets a GRPO trainer's clip range from it at every step, driven through transformers' own callback handler."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from trainer.clip_schedule import AppliedClip, DynamicClipCallback, clip_range

FIXTURES = examples(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def test_the_schedule_at_the_start_middle_and_end() -> None:
    assert clip_range(0, 1000) == pytest.approx(0.2)
    assert clip_range(500, 1000) == pytest.approx(0.1)
    assert clip_range(999, 1000) == pytest.approx(0.02)  # 0.2 / 1000 = 0.0002 is under the floor
    assert clip_range(1000, 1000) == pytest.approx(0.02)
    assert clip_range(2000, 1000) == pytest.approx(0.02)
    assert clip_range(999, 1000, floor=0.0) == pytest.approx(0.0002)
    assert clip_range(1000, 1000, floor=0.0) == 0.0
    assert clip_range(5, 10, epsilon=0.3, floor=0.01) == pytest.approx(0.15)


@FIXTURES
@given(total=st.integers(min_value=1, max_value=100_000), data=st.data())
def test_the_schedule_shrinks_from_eps_to_the_floor(total: int, data: st.DataObject) -> None:
    early, late = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=2 * total), min_size=2, max_size=2)))
    assert 0.2 >= clip_range(early, total) >= clip_range(late, total) >= 0.02
    if clip_range(late, total) > 0.02:
        assert clip_range(late, total) == pytest.approx(0.2 * (total - late) / total)


@pytest.mark.parametrize("step, total, floor", [(0, 0, None), (-1, 10, None), (0, 10, 0.3), (0, 10, -0.1)])
def test_arguments_outside_the_schedule_are_refused(step: int, total: int, floor: float | None) -> None:
    with pytest.raises(ValueError):
        clip_range(step, total, floor=floor)


class StandInTrainer:
    """The protocol the callback drives: the clip range attributes of TRL's GRPOTrainer."""

    def __init__(self) -> None:
        self.epsilon_low = 0.2
        self.epsilon_high = 0.2
        self.used: list[tuple[float, float]] = []

    def optimizer_step(self) -> None:
        self.used.append((self.epsilon_low, self.epsilon_high))


def test_the_callback_sets_the_clip_range_the_trainer_uses_at_each_step(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import CallbackHandler

    trainer = StandInTrainer()
    clip = DynamicClipCallback(trainer)
    handler = CallbackHandler([clip], model=None, processing_class=None, optimizer=None, lr_scheduler=None)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state, control = TrainerState(max_steps=10), TrainerControl()
    handler.on_train_begin(args, state, control)
    for step in range(10):
        state.global_step = step
        handler.on_step_begin(args, state, control)
        trainer.optimizer_step()
        handler.on_step_end(args, state, control)
    handler.on_train_end(args, state, control)

    expected = [0.2, 0.18, 0.16, 0.14, 0.12, 0.1, 0.08, 0.06, 0.04, 0.02]
    assert [low for low, _ in trainer.used] == pytest.approx(expected)
    assert [high for _, high in trainer.used] == pytest.approx(expected)
    assert [applied.step for applied in clip.applied] == list(range(10))
    assert [applied.epsilon for applied in clip.applied] == pytest.approx(expected)


def test_a_given_total_and_floor_override_the_trainer_state() -> None:
    trainer = StandInTrainer()
    clip = DynamicClipCallback(trainer, total_steps=4, epsilon=0.4, floor=0.05)
    for step in (0, 2, 3, 4, 9):
        clip.on_step_begin(None, SimpleNamespace(global_step=step, max_steps=1_000), None)
    assert clip.applied == [AppliedClip(0, 0.4), AppliedClip(2, 0.2), AppliedClip(3, 0.1), AppliedClip(4, 0.05),
                            AppliedClip(9, 0.05)]
    assert (trainer.epsilon_low, trainer.epsilon_high) == (0.05, 0.05)


def test_a_floor_above_eps_is_refused_when_the_callback_is_made() -> None:
    with pytest.raises(ValueError):
        DynamicClipCallback(StandInTrainer(), epsilon=0.1, floor=0.2)


def test_importing_the_schedule_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, trainer.clip_schedule, trainer.reasoning_reward; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
