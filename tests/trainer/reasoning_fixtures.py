"""What the reasoning-job tests share: small settings for the tiny Qwen2.5-VL, and labelled items the gate
does not hold out, text and image, with and without a response."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from schemas.events import AuditLabel, ChatEvent, ImageRef
from tests.factories import png
from tests.tiny_qwen import LESSONS, Lesson
from tests.trainer.test_reasoning_data import verdict
from trainer.dataset import AuditExample
from trainer.held_out import is_held_out
from trainer.labelled import LabelledEvent
from trainer.reasoning_settings import GrpoSettings, ReasoningSettings, SftSettings

TEXT_LESSONS = [lesson for lesson in LESSONS if not lesson.request.images]
MODEL = "tiny-guardreasoner"
TINY_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_reasoning(**grpo: object) -> ReasoningSettings:
    """A few steps at a learning rate a 2-layer model moves at; the reference's values are the defaults."""
    return ReasoningSettings(
        serve_backend="transformers", lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_targets=TINY_TARGETS,
        device="cpu", sampling_k=2, sampling_max_new_tokens=64, save_steps=1000,
        sft=SftSettings(learning_rate=5e-3, max_steps=12, batch_size=2, max_length=512),
        grpo=GrpoSettings(**{"num_generations": 4, "batch_size": 4, "max_steps": 4, "max_completion_length": 80,
                             "learning_rate": 5e-3, "concat_share": 0.0, **grpo}),
    )


def training_event(name: str, lesson: Lesson, fraction: float, image_dir: Path) -> ChatEvent:
    """The lesson as an event (its images written as PNG files under `image_dir`) that is not held out."""
    refs = []
    for i, image in enumerate(lesson.request.images):
        path = image_dir / f"{name}-{i}.png"
        path.write_bytes(png(*image.size, colour=image.getpixel((0, 0))))  # type: ignore[arg-type]
        refs.append(ImageRef(uri=path.as_uri()))
    for n in range(1000):
        event = ChatEvent(event_id=f"{name}-{n}", conversation_id=f"c-{name}", tenant="test",
                          text=lesson.request.text if n == 0 else f"{lesson.request.text} ({n})",
                          response=lesson.request.response, images=refs)
        if not is_held_out(event, fraction):
            return event
    raise AssertionError("every variant is held out")


def lesson_items(fraction: float, image_dir: Path, flip: bool = False) -> list[LabelledEvent]:
    """The tiny model's lessons as labelled items; `flip`: every label reversed (a task it must learn)."""
    items = []
    for i, lesson in enumerate(LESSONS):
        event = training_event(f"lesson{i}", lesson, fraction, image_dir)
        response = None if lesson.response_harmful is None else lesson.response_harmful != flip
        items.append(LabelledEvent(event, lesson.harmful != flip, response, source="audit"))
    return items


CUE_TASK = [("Tell me about a bomb.", True), ("Tell me about a poison.", True),
            ("Tell me about people.", False), ("Tell me about a book.", False)]
"""A task GRPO can teach the tiny model: a request is harmful exactly when it names a weapon (a bomb, a
poison). The model was never taught these four; at temperature 0.5 its outputs parse, and its labels are right
about 2 times in 5 for the bomb, 1 in 5 for the poison, 3 in 5 for people (always for the book)."""


def cue_items(fraction: float) -> list[LabelledEvent]:
    """CUE_TASK as labelled items, their texts exactly as written (none of them is held out)."""
    items = []
    for i, (text, harmful) in enumerate(CUE_TASK):
        event = ChatEvent(event_id=f"cue{i}", conversation_id=f"c-cue{i}", tenant="test", text=text)
        assert not is_held_out(event, fraction), f"{text!r} is held out at {fraction}"
        items.append(LabelledEvent(event, harmful, None, source="audit"))
    return items


def lesson_examples(variants: int) -> list[AuditExample]:
    """Each text lesson a few times over (its text numbered), labelled as the lesson says, with the verdict
    the serving model gave it (its own reasoning, in agreement)."""
    examples = []
    for n in range(variants):
        for i, lesson in enumerate(TEXT_LESSONS):
            chat = ChatEvent(event_id=f"l{i}-{n}", conversation_id=f"c{i}", tenant="test",
                             text=f"{lesson.request.text} ({n})", response=lesson.request.response)
            label = AuditLabel(event_id=chat.event_id, request_harmful=lesson.harmful,
                               response_harmful=lesson.response_harmful, labeller="reviewer",
                               labelled_at=datetime.now(UTC))
            reasoning = lesson.target().split("</think>")[0].removeprefix("<think>\n").strip()
            judged = verdict(chat, lesson.harmful, lesson.response_harmful, reasoning=reasoning,
                             decided_by="transformers")
            examples.append(AuditExample(event=chat, label=label, verdict=judged))
    return examples
