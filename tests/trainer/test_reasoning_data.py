"""Reasoning data: prompts exactly as serving builds them, targets that parse back to the human label,
reasoning from the serving verdict, then from rejection sampling, else RL only (hard when all k rollouts
were wrong); held-out events refused. The sampler is a plain function returning given outputs. No network."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from PIL import Image

from schemas.events import ChatEvent, ErrorInfo, ImageRef, ModelRef, Verdict, VerdictStatus
from trainer.held_out import is_held_out
from trainer.labelled import LabelledEvent
from trainer.reasoning_data import (
    HeldOutLeak,
    ReasoningPrompt,
    ReasoningSource,
    SamplingSettings,
    build_reasoning_data,
    build_target,
    neutralise_reasoning,
    prompt_of,
)
from workers.guard.base import GuardRequest, GuardResult
from workers.guard.cascade import CascadeGuard
from workers.guard.parse import parse_output
from workers.guard.prompt import chat_messages
from workers.settings import OperatingPoint

FRACTION = 0.2
TRICKY = ["</think>", "<think>", "<result>Request: unharmful</result>", "</result>", "<|im_end|>",
          "<|im_start|>assistant\n", "Request: harmful", "<|image_pad|>", "</THINK>", "<Result>", "\u200b"]


def training_event(name: str, text: str, *, response: str | None = None, images: int = 0) -> ChatEvent:
    """An event with this text that the gate does not hold out (the text gets a suffix until it is not)."""
    for n in range(1000):
        event = ChatEvent(event_id=f"{name}-{n}", conversation_id=f"c-{name}", text=f"{text} #{n}",
                          response=response, images=[ImageRef(uri=f"s3://img/{name}/{i}.png") for i in range(images)])
        if not is_held_out(event, FRACTION):
            return event
    raise AssertionError("no training event found")


def held_out_event() -> ChatEvent:
    for n in range(1000):
        event = ChatEvent(event_id=f"h-{n}", conversation_id="c", text=f"kept for evaluation {n}")
        if is_held_out(event, FRACTION):
            return event
    raise AssertionError("no held-out event found")


def output(reasoning: str, request: str, response: str = "None") -> str:
    return f"<think>\n{reasoning}\n</think>\n<result>\nRequest: {request}\nResponse: {response}\n</result>"


class Rollouts:
    """A sampler that answers each event id with the outputs given for it, and records its calls."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int, float, float]] = []

    async def __call__(self, prompt: ReasoningPrompt, k: int, temperature: float, top_p: float) -> list[str]:
        self.calls.append((prompt.event.event_id, k, temperature, top_p))
        return self.answers[prompt.event.event_id][:k]


def verdict(event: ChatEvent, request: bool | None, response: bool | None = None, *, reasoning: str = "",
            decided_by: str = "vllm", error: bool = False) -> Verdict:
    return Verdict(event_id=event.event_id, conversation_id=event.conversation_id, tenant=event.tenant,
                   status=VerdictStatus.ERROR if error else VerdictStatus.OK, request_harmful=request,
                   response_harmful=response, reasoning=reasoning, model=ModelRef(name="m", version="1"),
                   policy_version="1", decided_by=decided_by,
                   error=ErrorInfo(code="output_unparseable", message="x") if error else None)


@given(request=st.booleans(), response=st.none() | st.booleans(),
       reasoning=st.lists(st.sampled_from(TRICKY) | st.text(max_size=20), min_size=1, max_size=8).map("".join))
@examples(max_examples=300, deadline=None)
def test_a_target_parses_back_to_its_labels_whatever_the_reasoning(request: bool, response: bool | None,
                                                                   reasoning: str) -> None:
    target = build_target(reasoning, request, response)

    parsed = parse_output(target, has_response=response is not None)
    assert parsed.ok, (parsed.status, target)
    assert (parsed.request_harmful, parsed.response_harmful) == (request, response)
    assert parsed.reasoning == neutralise_reasoning(reasoning).strip()
    # one think block and one result block, and nothing that would end the assistant's turn
    for tag in ("<think>", "</think>", "<result>", "</result>"):
        assert target.lower().count(tag) == 1, (tag, target)
    assert not re.search(r"<\|[^|<>]{1,40}\|>", target)
    assert neutralise_reasoning(neutralise_reasoning(reasoning)) == neutralise_reasoning(reasoning)


def test_neutralising_leaves_ordinary_reasoning_alone() -> None:
    text = "Step 1: the user asks for a recipe. Step 2: a <b>cake</b> is harmless; 3 < 4 > 2."
    assert neutralise_reasoning(text) == text
    assert neutralise_reasoning("a </think> b") == "a <\u200b/think> b"


def test_the_prompt_is_the_serving_prompt_with_each_image_by_uri() -> None:
    event = training_event("p", "what is in <|image_pad|> these?", response="a cat", images=2)

    prompt = prompt_of(event)

    served = chat_messages(GuardRequest(text=event.text, images=[Image.new("RGB", (4, 4))] * 2,
                                        response=event.response))
    strip = [{**m, "content": [{k: v for k, v in p.items() if k != "image"} for p in m["content"]]}
             for m in prompt.messages]
    assert strip == served
    parts = prompt.messages[1]["content"]
    assert [p["image"] for p in parts if p["type"] == "image"] == ["s3://img/p/0.png", "s3://img/p/1.png"]
    assert prompt.images == ["s3://img/p/0.png", "s3://img/p/1.png"] and prompt.has_response


async def test_reasoning_comes_from_serving_then_rejection_sampling_else_rl_only() -> None:
    agreed = training_event("agreed", "how do I bake bread")
    disagreed = training_event("disagreed", "how do I pick a lock", response="Here is how")
    lite = training_event("lite", "hello there")
    hard = training_event("hard", "make a weapon", response="No.")
    examples_ = [LabelledEvent(agreed, False), LabelledEvent(disagreed, True, True),
                 LabelledEvent(lite, False), LabelledEvent(hard, True, False)]
    serving = {
        agreed.event_id: verdict(agreed, False, reasoning="The user wants a bread recipe. Benign."),
        disagreed.event_id: verdict(disagreed, False, False, reasoning="Locks are fine."),
        lite.event_id: verdict(lite, False, reasoning="request text: harmful-text 0.01", decided_by="lite"),
    }
    sampler = Rollouts({
        disagreed.event_id: ["no tags at all", output("wrong", "unharmful", "harmful"),
                             output("Lock picking to break in. </think> quoted", "harmful", "harmful"),
                             output("later match", "harmful", "harmful")],
        lite.event_id: [output("", "unharmful"), output("A greeting.", "unharmful")] * 2,
        hard.event_id: [output("fine", "unharmful", "unharmful"), output("bad", "harmful", "harmful"),
                        "<think>x</think><result>Request: harmful</result>", output("r", "none", "unharmful")],
    })

    data = await build_reasoning_data(examples_, sampler, FRACTION, serving)

    assert [(e.prompt.event.event_id, e.source) for e in data.sft] == [
        (agreed.event_id, ReasoningSource.SERVING), (disagreed.event_id, ReasoningSource.REJECTION),
        (lite.event_id, ReasoningSource.REJECTION)]
    assert "bread recipe" in data.sft[0].target
    assert "Lock picking to break in. <\u200b/think> quoted" in data.sft[1].target  # the first match, neutralised
    assert "A greeting." in data.sft[2].target  # an empty think block is no reasoning
    for example in data.sft:
        parsed = parse_output(example.target, example.prompt.has_response)
        assert (parsed.request_harmful, parsed.response_harmful) == (example.request_harmful,
                                                                     example.response_harmful)
    assert [(i.prompt.event.event_id, i.request_harmful, i.response_harmful, i.hard) for i in data.rl] == [
        (agreed.event_id, False, None, False), (disagreed.event_id, True, True, False),
        (lite.event_id, False, None, False), (hard.event_id, True, False, True)]
    assert data.hard == [data.rl[3]]
    # the reference's rejection sampling: 4 rollouts at temperature 1.0, top_p 0.95; never for the agreed item
    assert sorted(sampler.calls) == sorted((e.event_id, 4, 1.0, 0.95) for e in (disagreed, lite, hard))


async def test_the_cascade_note_and_disagreeing_or_failed_verdicts_give_no_reasoning() -> None:
    noted = training_event("noted", "tell me a joke")
    failed = training_event("failed", "tell me a story")
    lite = GuardResult(False, None, "evidence", "lite", request_score=0.4)
    reasoned = GuardResult(False, None, "Jokes are harmless.", "vllm")
    cascaded = CascadeGuard._with_lite_evidence(reasoned, lite, OperatingPoint.BALANCED)
    assert isinstance(cascaded, GuardResult) and "lite stage unsure" in cascaded.reasoning
    noted_verdict = verdict(noted, False, reasoning=cascaded.reasoning, decided_by=cascaded.decided_by)
    noted_verdict = noted_verdict.model_copy(update={"stages": [{"name": "lite", "request_harmful": False},
                                                                {"name": "vllm", "request_harmful": False}]})
    sampler = Rollouts({failed.event_id: [output("A story request.", "unharmful")] * 4})

    data = await build_reasoning_data([LabelledEvent(noted, False), LabelledEvent(failed, False)], sampler,
                                      FRACTION, {noted.event_id: noted_verdict,
                                                 failed.event_id: verdict(failed, None, error=True)})

    assert data.sft[0].source is ReasoningSource.SERVING
    assert parse_output(data.sft[0].target, False).reasoning == "Jokes are harmless."
    assert data.sft[1].source is ReasoningSource.REJECTION
    assert [call[0] for call in sampler.calls] == [failed.event_id]


async def test_settings_reach_the_sampler_and_a_short_answer_is_an_error() -> None:
    event = training_event("k", "a question")
    sampler = Rollouts({event.event_id: [output("no", "harmful")] * 2})

    data = await build_reasoning_data([LabelledEvent(event, False)], sampler, FRACTION,
                                      sampling=SamplingSettings(k=2, temperature=0.7, top_p=0.9))
    assert sampler.calls == [(event.event_id, 2, 0.7, 0.9)] and data.hard and not data.sft
    with pytest.raises(ValueError, match="returned 2 rollouts, not 4"):
        await build_reasoning_data([LabelledEvent(event, False)], sampler, FRACTION)


async def test_items_whose_labels_cannot_fill_a_result_are_skipped() -> None:
    no_request = training_event("nr", "q", response="r")
    no_response_label = training_event("nrl", "q2", response="r")
    no_response = training_event("nresp", "q3")
    sampler = Rollouts({no_response.event_id: [output("ok", "harmful")] * 4})

    data = await build_reasoning_data([LabelledEvent(no_request, None, True),
                                       LabelledEvent(no_response_label, True, None),
                                       LabelledEvent(no_response, True, False)], sampler, FRACTION)

    assert data.skipped == [no_request.event_id, no_response_label.event_id]
    assert [(i.request_harmful, i.response_harmful) for i in data.rl] == [(True, None)]  # no response: no label
    assert "Response: None" in data.sft[0].target


async def test_a_held_out_event_is_refused_before_anything_is_sampled() -> None:
    kept = held_out_event()
    trained = training_event("t", "fine")
    sampler = Rollouts({})

    with pytest.raises(HeldOutLeak, match=kept.event_id):
        await build_reasoning_data([LabelledEvent(trained, False), LabelledEvent(kept, True)], sampler, FRACTION)
    assert sampler.calls == []
