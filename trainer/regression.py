"""The gate's regression set: texts where a guard that reads alarming words instead of intent goes wrong.

The hand-written hard cases and the test part of the contrast corpus (benign-but-alarming requests,
helpful answers on sensitive topics, refusals, compliances), none of which any job trains on. Every
candidate and the serving model are scored on it beside the held-out labels, and a candidate whose F1
there drops by more than the gate allows is refused (`trainer/gate.py`): a refit that over-blocks
again does not ship, whatever its labels taught it. A fixed-seed sample of `limit` items keeps the
cost bounded for slow backends.
"""

from __future__ import annotations

import random

from schemas.events import ChatEvent
from trainer.labelled import LabelledEvent
from trainer.lite_contrast import load_contrast
from trainer.lite_examples import load_hard_cases

BENIGN_PROMPT_KINDS = ("helpful-answer", "abusive-answer")  # the response kinds whose prompt is benign


def regression_set(limit: int | None, seed: int = 0) -> list[LabelledEvent]:
    """The regression items, as labelled events: all, or a fixed-seed random sample of `limit`."""
    test = load_contrast("test")
    items = [_item(f"contrast-request-{i}", text, bool(y), None)
             for i, (text, y) in enumerate(zip(test.request.texts, test.request.y, strict=True))]
    items += [_item(f"contrast-pair-{i}", prompt, kind not in BENIGN_PROMPT_KINDS, bool(y), response)
              for i, (prompt, response, y, kind) in enumerate(zip(test.response.prompts, test.response.responses,
                                                                  test.response.y, test.response_kinds, strict=True))]
    items += [_item(f"hard-{c.id}", c.prompt, c.request_harmful, c.response_harmful, c.response)
              for c in load_hard_cases()]
    if limit is None or limit >= len(items):
        return items
    rng = random.Random(seed)
    return sorted(rng.sample(items, limit), key=lambda item: item.event.event_id)


def _item(name: str, text: str, request_harmful: bool, response_harmful: bool | None,
          response: str | None = None) -> LabelledEvent:
    event = ChatEvent(event_id=f"regression-{name}", conversation_id="regression", text=text, response=response)
    return LabelledEvent(event, request_harmful, response_harmful if response is not None else None,
                         source="regression")
