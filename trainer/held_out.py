"""Which labelled events the release gate keeps for evaluation and no job ever trains on: chosen by content.

Membership is a fixed hash (`trainer/dataset.py`'s `held_out`) of the event's content key, not of its
id: the same text under two ids (a repeat, the reason the cache exists) would otherwise be trained on
under one id and judged under the other, flattering the candidate. The key is the worker's own
`workers/content_key.content_key` over the normalised text, the response and the images, with the model
and policy parts left empty, so that membership never changes with the model served. (The cache key,
`workers/cache.cache_key`, wraps that content key in the cache prefix, model and policy version: it keys
answers, not content, and must not decide membership.) The worker keys an image by the digest of its
bytes; the trainer does not fetch images to split its data, so it uses the digest the event declares, else
the image's URI. A producer cannot gain from declaring a false digest here: it only moves its own event
between training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import ChatEvent, Verdict
from trainer.dataset import AuditExample, held_out
from trainer.evaluate import score
from trainer.gate import RandomPart
from trainer.labelled import LabelledEvent
from workers.content_key import content_key


def content_id(event: ChatEvent) -> str:
    """The event's content key, the same for any event with the same text, response and images."""
    images = [image.sha256 or image.uri for image in event.images]
    return content_key(event.text, event.response, images, model_name="", model_version="", policy_version="")


def is_held_out(event: ChatEvent, fraction: float) -> bool:
    return held_out(content_id(event), fraction)


@dataclass(frozen=True)
class Split:
    """The data set's latest labels, divided: `evaluation` is held out, with each label's `random_sample`
    (how the event was chosen for review) beside it; `training` is all a job may see."""

    evaluation: list[LabelledEvent]
    random_sample: list[bool | None]
    training: list[LabelledEvent]

    def random_part(self, candidate: list[Verdict], serving: list[Verdict]) -> RandomPart | None:
        """Both models' verdicts (parallel to `evaluation`) scored on the random-sample labels alone; None
        without any. Blocking."""
        chosen = [index for index, flag in enumerate(self.random_sample) if flag]
        if not chosen:
            return None
        items = [self.evaluation[index] for index in chosen]
        return RandomPart(candidate=score(items, [candidate[index] for index in chosen]),
                          serving=score(items, [serving[index] for index in chosen]))


def split(examples: list[AuditExample], fraction: float) -> Split:
    """Blocking (a hash per example): callers on an event loop run it on a thread."""
    held: list[AuditExample] = []
    training: list[LabelledEvent] = []
    for example in examples:
        if is_held_out(example.event, fraction):
            held.append(example)
        else:
            training.append(example.labelled())
    return Split(evaluation=[example.labelled() for example in held],
                 random_sample=[example.label.random_sample for example in held], training=training)
