"""The refusal detector: the ways assistants decline, near the start of a response."""

from __future__ import annotations

import pytest

from workers.guard.refusal import HEAD_CHARS, detect_refusal


@pytest.mark.parametrize("text", [
    "I can't help with that.",
    "I’m not able to walk you through that, but a pharmacist can.",
    "Sorry, but I won't write that message.",
    "I'm sorry, but that is something I can't do.",
    "I must respectfully decline.",
    "As an AI language model, I cannot provide instructions for weapons.",
    "That request goes against my guidelines.",
    "I'm not comfortable sharing that.",
    "No. Making a threat like that is a crime.",
    "We cannot assist with bypassing security systems.",
])
def test_a_refusal_is_detected_whatever_topic_it_names(text: str) -> None:
    refusal = detect_refusal(text)
    assert refusal.detected and refusal.phrase and refusal.phrase.lower() in " ".join(text.split()).lower()


@pytest.mark.parametrize("text", [
    "Sure. Buy a skimmer online and fit it over the card slot at night.",
    "Here's a recipe: mix the flour and the bananas, then bake for an hour.",
    "No problem! First, open the settings page.",
    "Nobody can tell you that; it depends on the dose.",
    "You can't go wrong with a cast-iron pan.",
])
def test_an_answer_is_not_a_refusal(text: str) -> None:
    assert not detect_refusal(text).detected


def test_only_the_start_of_a_response_is_read() -> None:
    late = "Here is the plan, step by step. " * 10 + "I can't stress this enough: wear gloves."
    assert len(late) > HEAD_CHARS and not detect_refusal(late).detected
    assert detect_refusal("I can't stress this enough: wear gloves.").detected is False
