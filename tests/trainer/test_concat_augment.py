"""Safety-aware concatenation: each merged label is the OR of its parts', merged items are the configured
share of the output, the same seed gives the same items, images never exceed the worker's limit, and no
held-out event is ever part of a pair. No network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from schemas.events import AuditLabel, ChatEvent, ImageRef
from trainer.concat_augment import SOURCE, ConcatSettings, augment, concatenate, concatenated_count
from trainer.dataset import AuditExample
from trainer.held_out import is_held_out, split
from trainer.labelled import LabelledEvent
from trainer.reasoning_data import HeldOutLeak, build_target, prompt_of
from workers.guard.parse import parse_output

FRACTION = 0.2


def event(name: str, text: str = "", *, response: str | None = None, images: int = 0) -> ChatEvent:
    return ChatEvent(event_id=name, conversation_id=f"c-{name}", text=text or f"text of {name}", response=response,
                     images=[ImageRef(uri=f"s3://img/{name}/{i}.png") for i in range(images)])


def training_items(count: int, *, images: int = 0) -> list[LabelledEvent]:
    """`count` labelled items the gate does not hold out, half with a response."""
    items: list[LabelledEvent] = []
    n = 0
    while len(items) < count:
        n += 1
        response = f"reply {n}" if n % 2 else None
        candidate = event(f"e-{n}", response=response, images=images if n % 3 == 0 else 0)
        if not is_held_out(candidate, FRACTION):
            items.append(LabelledEvent(candidate, n % 5 == 0, None if response is None else n % 7 == 0))
    return items


pairs = st.tuples(st.booleans(), st.booleans(), st.booleans()).flatmap(
    lambda t: st.tuples(st.just(t[0]), st.just(t[1]),
                        st.booleans() if t[2] else st.none(), st.booleans() if t[2] else st.none()))


@given(labels=pairs)
@examples(max_examples=100, deadline=None)
def test_a_merged_item_is_harmful_when_either_part_is(labels: tuple[bool, bool, bool | None, bool | None]) -> None:
    request_a, request_b, response_a, response_b = labels
    with_response = response_a is not None
    a = LabelledEvent(event("a", "first", response="one" if with_response else None, images=1), request_a, response_a)
    b = LabelledEvent(event("b", "second", response="two" if with_response else None, images=2), request_b,
                      response_b)

    merged = concatenate(a, b)

    assert merged.request_harmful is (request_a or request_b)
    if with_response:
        assert response_a is not None and response_b is not None
        assert merged.response_harmful is (response_a or response_b)
        assert merged.event.response == "one\n\ntwo"
    else:
        assert merged.response_harmful is None and merged.event.response is None
    assert merged.event.text == "first\n\nsecond"
    assert [i.uri for i in merged.event.images] == ["s3://img/a/0.png", "s3://img/b/0.png", "s3://img/b/1.png"]
    assert merged.source == SOURCE and merged.event.metadata["concat_of"] == "a,b"
    # and the model reads it as any other prompt: one image part per merged image
    parts = prompt_of(merged.event).messages[1]["content"]
    assert sum(p["type"] == "image" for p in parts) == 3


def test_items_with_and_without_a_response_are_not_merged() -> None:
    with pytest.raises(ValueError, match="a response, or neither"):
        concatenate(LabelledEvent(event("a", response="r"), False, False), LabelledEvent(event("b"), True))
    with pytest.raises(ValueError, match="result block"):
        concatenate(LabelledEvent(event("a", response="r"), False, None), LabelledEvent(event("b", response="s"),
                                                                                         True, True))


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5])
def test_merged_items_are_the_configured_share_of_the_output(share: float) -> None:
    items = training_items(400)

    out = augment(items, FRACTION, ConcatSettings(share=share, seed=3))

    assert out[:400] == items
    merged = out[400:]
    assert all(item.source == SOURCE for item in merged)
    assert len(merged) == concatenated_count(400, share)
    assert abs(len(merged) / len(out) - share) < 0.01
    by_id = {item.event.event_id: item for item in items}
    for item in merged:
        first, second = (by_id[i] for i in item.event.metadata["concat_of"].split(","))
        assert first is not second
        assert (first.event.response is None) == (second.event.response is None)  # same shape only
        assert item.request_harmful is (first.request_harmful or second.request_harmful)


def test_the_same_seed_gives_the_same_items_and_another_seed_others() -> None:
    items = training_items(200)

    def parts(seed: int) -> list[str]:
        return [item.event.metadata["concat_of"] for item in augment(items, FRACTION, ConcatSettings(seed=seed))[200:]]

    assert parts(7) == parts(7)
    assert parts(7) != parts(8)
    assert len(parts(7)) == 50  # 0.2 of the output by default


def test_merged_images_stay_within_the_workers_limit() -> None:
    items = training_items(300, images=3)

    out = augment(items, FRACTION, ConcatSettings(share=0.2, seed=1, max_images=4))

    merged = out[300:]
    assert len(merged) == 75
    assert max(len(item.event.images) for item in merged) <= 4
    assert all(len(item.event.images) <= 3 for item in merged)  # a three-image item is never paired with another
    # with a larger limit, three-image items do meet
    bigger = augment(items, FRACTION, ConcatSettings(share=0.2, seed=1, max_images=6))[300:]
    assert max(len(item.event.images) for item in bigger) == 6


def test_too_few_fitting_pairs_give_fewer_items_not_cut_images() -> None:
    items = [LabelledEvent(event(f"big-{n}", images=3), True) for n in range(20)]
    items = [item for item in items if not is_held_out(item.event, FRACTION)]

    assert augment(items, FRACTION, ConcatSettings(max_images=4)) == items


def test_held_out_items_are_never_mixed_in() -> None:
    everything = [LabelledEvent(event(f"x-{n}", f"message {n}"), n % 2 == 0) for n in range(300)]
    held = next(item for item in everything if is_held_out(item.event, FRACTION))

    with pytest.raises(HeldOutLeak, match=held.event.event_id):
        augment(everything, FRACTION)

    divided = split([AuditExample(event=i.event, label=AuditLabel(event_id=i.event.event_id, labeller="r",
                                                                  request_harmful=bool(i.request_harmful)))
                     for i in everything], FRACTION)
    out = augment(divided.training, FRACTION, ConcatSettings(share=0.5))
    held_ids = {item.event.event_id for item in divided.evaluation}
    used = {part for item in out if item.source == SOURCE for part in item.event.metadata["concat_of"].split(",")}
    assert used and not used & held_ids


def test_a_merged_target_parses_to_the_merged_labels() -> None:
    a = LabelledEvent(event("a", response="sure"), False, True)
    b = LabelledEvent(event("b", response="no"), True, False)
    merged = concatenate(a, b)

    parsed = parse_output(build_target("Both parts.", merged.request_harmful, merged.response_harmful), True)
    assert (parsed.request_harmful, parsed.response_harmful) == (True, True)
