"""Labelled events: what evaluation scores and what training learns from, whichever file or topic they
came from.

Two sources read into the same `LabelledEvent`:
- the trainer's data set (audit labels resolved to their events, `trainer/dataset.py`);
- a JSONL in the reference benchmarks' layout, one object a line:
  `{"prompt": ..., "image": "path or URI" | [...], "response": ... | null,
    "request_label": "harmful" | "unharmful", "response_label": "harmful" | "unharmful" | null}`.
  `image` may also be called `images`, `request_label` `prompt_label`. Labels may also be booleans
  (true = harmful), and `id` names the item (else its line number). A relative image path is resolved
  against the file's folder. A line that does not fit is a `BadLine` naming the line and the field
  (`reference_lines`), never skipped in silence; the strict readers raise it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from runtime.input_lines import BadInputLine, BadLine, bad_line, numbered_lines
from schemas.events import ChatEvent, ImageRef


class Task(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    TEXT_IMAGE = "text+image"


def modality_of(event: ChatEvent) -> Modality:
    if not event.images:
        return Modality.TEXT
    return Modality.TEXT_IMAGE if event.text.strip() else Modality.IMAGE


@dataclass(frozen=True)
class LabelledEvent:
    """An event and what a person (or a benchmark) says about it. A label is None where it says nothing:
    `response_harmful` when the event has no response, `request_harmful` in a response-only benchmark."""

    event: ChatEvent
    request_harmful: bool | None
    response_harmful: bool | None = None
    source: str = ""  # where the label came from: "audit", a file's name…

    @property
    def modality(self) -> Modality:
        return modality_of(self.event)

    @property
    def tasks(self) -> tuple[Task, ...]:
        judged = {Task.REQUEST: self.request_harmful is not None,
                  Task.RESPONSE: self.response_harmful is not None and self.event.response is not None}
        return tuple(task for task, yes in judged.items() if yes)

    def truth(self, task: Task) -> bool | None:
        return self.request_harmful if task is Task.REQUEST else self.response_harmful


class BadLabelledFile(BadInputLine, ValueError):
    """A labelled JSONL line that is not an item of the reference layout; the message names the line and field."""


LABEL_WORDS = "harmful or unharmful; true/false also work"
_HARMFUL = ("harmful", "unsafe", "1", "true")
_UNHARMFUL = ("unharmful", "harmless", "safe", "0", "false")
# ChatEvent's fields by the names the reference layout gives them, for errors met building the event
_FILE_NAMES = {"text": "prompt", "images": "image", "event_id": "id", "conversation_id": "id"}


def _harm_label(value: Any) -> bool | None:
    """A label as True (harmful), False or None (no label); anything else is refused, saying what labels are."""
    if value is None or isinstance(value, bool):
        return value
    lowered = str(value).strip().lower() if isinstance(value, str | int) else None
    if lowered in _HARMFUL:
        return True
    if lowered in _UNHARMFUL:
        return False
    if lowered in ("", "none", "null"):
        return None
    raise ValueError(f"{value!r} is not a label: labels are {LABEL_WORDS}")


HarmLabel = Annotated[bool | None, BeforeValidator(_harm_label)]


class ReferenceItem(BaseModel):
    """One line of a reference-layout JSONL."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = None
    prompt: str = ""
    images: list[str] = Field(default_factory=list, validation_alias=AliasChoices("images", "image"))
    response: str | None = None
    request_label: HarmLabel = Field(None, validation_alias=AliasChoices("request_label", "prompt_label"))
    response_label: HarmLabel = None

    def __init__(self, **data: Any) -> None:
        for name in ("image", "images"):
            if isinstance(data.get(name), str):
                data[name] = [data[name]]
            elif data.get(name) is None:
                data.pop(name, None)
        super().__init__(**data)


def image_uri(reference: str, folder: Path) -> str:
    """A URI for an image reference: URIs as they are, paths as file:// URIs (relative ones from `folder`)."""
    if "://" in reference:
        return reference
    path = Path(reference)
    return (path if path.is_absolute() else (folder / path)).resolve().as_uri()


@dataclass(frozen=True)
class ReferenceLine:
    """A good line: its number, its item and the ChatEvent it stands for."""

    number: int
    item: ReferenceItem
    event: ChatEvent

    @property
    def labelled(self) -> bool:
        return self.item.request_label is not None or self.item.response_label is not None

    def labelled_event(self, source: str) -> LabelledEvent:
        return LabelledEvent(self.event, self.item.request_label, self.item.response_label, source=source)


def reference_lines(path: Path) -> Iterator[ReferenceLine | BadLine]:
    """Each non-blank line, in order: a ReferenceLine (event id: the item's id, else `line-N`), or a BadLine
    naming the field at fault as the file names it."""
    folder = path.resolve().parent
    for number, text in numbered_lines(path):
        if isinstance(text, BadLine):
            yield text
            continue
        try:
            item = ReferenceItem.model_validate_json(text)
        except ValidationError as exc:
            yield bad_line(path, number, exc, text)
            continue
        try:
            event = ChatEvent(
                event_id=item.id or f"line-{number}", conversation_id=item.id or f"line-{number}",
                text=item.prompt, response=item.response,
                images=[ImageRef(uri=image_uri(i, folder)) for i in item.images],
            )
        except ValidationError as exc:
            bad = bad_line(path, number, exc, text, _FILE_NAMES)
            yield bad if bad.field else BadLine(path, number, "prompt", bad.problem, bad.item_id)
            continue
        yield ReferenceLine(number, item, event)


def read_reference_jsonl(path: Path) -> Iterator[tuple[ReferenceItem, ChatEvent]]:
    """Each line as its item and its ChatEvent; the first bad line raises BadLabelledFile."""
    for line in reference_lines(path):
        if isinstance(line, BadLine):
            raise BadLabelledFile(line)
        yield line.item, line.event


def labelled_from_jsonl(path: Path) -> list[LabelledEvent]:
    """The items that carry a label, as LabelledEvents (an item without any is not scored); the first bad
    line raises BadLabelledFile."""
    return [LabelledEvent(event, item.request_label, item.response_label, source=path.name)
            for item, event in read_reference_jsonl(path)
            if item.request_label is not None or item.response_label is not None]
