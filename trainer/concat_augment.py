"""Safety-aware data concatenation: new training items made of two, harmful if either part is.

GuardReasoner-VL (Liu et al., 2025), "Training recipe", item 4 (safety-aware data
concatenation): a new item concatenates the texts and merges the images of two items; its label is
harmful if either part's is, unharmful only if both are. About 20% of the RL items are made this way:
`share` (default 0.2) is the part of the returned items that are concatenations.

- Texts (and responses) are joined with a blank line, the first item's first; images are the first's, then
  the second's.
- Request and response labels are each the OR of the two parts' labels.
- Two items are paired only when both have a response or neither has: a response label of the merged item
  is then always the OR of two real labels, never one side's label standing for a half-answered request.
- The images of a pair must fit the worker's limit (`LimitSettings.max_images`, 4 by default), which refuses
  larger events: pairs over it are not made, rather than cut, since a cut image may be the harmful one.
- Only items whose labels fill a result block are used (`trainer/reasoning_data.complete_labels`).
- Deterministic: the same items, share and seed give the same output.
- Held-out events never go into a pair: one in the input raises `HeldOutLeak` (`trainer/held_out.py`).

A merged item is a `LabelledEvent` with source `concat`, a fresh event id and its parts' ids in the event's
metadata (`concat_of`); `trainer/reasoning_data.prompt_of` turns it into the model's prompt.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from schemas.events import ChatEvent
from trainer.held_out import is_held_out
from trainer.labelled import LabelledEvent
from trainer.reasoning_data import HeldOutLeak, complete_labels
from workers.settings import LimitSettings

SOURCE = "concat"
_ATTEMPTS = 32  # partners tried for one item before drawing another first item


@dataclass(frozen=True)
class ConcatSettings:
    share: float = 0.2
    seed: int = 0
    max_images: int = LimitSettings.model_fields["max_images"].default

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1 or self.max_images < 0:
            raise ValueError(f"bad concatenation settings: {self}")


def _join(first: str, second: str) -> str:
    return "\n\n".join(text for text in (first, second) if text.strip())


def concatenate(first: LabelledEvent, second: LabelledEvent) -> LabelledEvent:
    """The two items as one: texts joined, images merged, each label the OR of the parts' labels. Both items
    need complete labels and both or neither a response (ValueError otherwise)."""
    a, b = complete_labels(first), complete_labels(second)
    if a is None or b is None:
        raise ValueError("both items need labels that fill a result block")
    if (a[1] is None) != (b[1] is None):
        raise ValueError("both items need a response, or neither")
    x, y = first.event, second.event
    ids = f"{x.event_id},{y.event_id}"
    event_id = f"{SOURCE}-{hashlib.sha256(ids.encode()).hexdigest()[:32]}"
    event = ChatEvent(
        event_id=event_id, conversation_id=event_id, tenant=x.tenant, text=_join(x.text, y.text),
        images=[*x.images, *y.images], metadata={"concat_of": ids},
        response=None if x.response is None or y.response is None else _join(x.response, y.response),
    )
    response = None if a[1] is None or b[1] is None else a[1] or b[1]
    return LabelledEvent(event, a[0] or b[0], response, source=SOURCE)


def concatenated_count(originals: int, share: float) -> int:
    """How many merged items make `share` of originals plus merged."""
    return round(share * originals / (1 - share))


def augment(items: list[LabelledEvent], held_out_fraction: float,
            settings: ConcatSettings | None = None) -> list[LabelledEvent]:
    """The items, then the merged items (fewer than the share asks where too few pairs fit)."""
    settings = settings or ConcatSettings()
    for item in items:
        if is_held_out(item.event, held_out_fraction):
            raise HeldOutLeak(f"event {item.event.event_id!r} is held out for evaluation")
    usable = [item for item in items if complete_labels(item) is not None]
    groups = {shape: [i for i in usable if (i.event.response is None) is shape] for shape in (True, False)}
    rng = random.Random(settings.seed)
    wanted = concatenated_count(len(items), settings.share)
    merged: list[LabelledEvent] = []
    for _ in range(wanted * _ATTEMPTS):
        if len(merged) == wanted or not usable:
            break
        first = rng.choice(usable)
        partners = groups[first.event.response is None]
        for _ in range(_ATTEMPTS):
            second = rng.choice(partners)
            if second is not first and len(first.event.images) + len(second.event.images) <= settings.max_images:
                merged.append(concatenate(first, second))
                break
    return [*items, *merged]
