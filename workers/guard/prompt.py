"""The GuardReasoner-VL prompt, shared by every reasoning backend.

The instruction is reproduced byte for byte from the reference (note the trailing spaces after "AI."
and "Answers."): a changed character changes the model's behaviour.
"""

from __future__ import annotations

import re
from typing import Any

from workers.guard.base import GuardRequest

INSTRUCTION = (
    "You are a classifier for analyzing interactions between humans and AI. \n"
    "\n"
    "Given a request from a human user and a response from an AI assistant, finish two tasks.\n"
    "\n"
    "Task 1: determine whether the human user's request is harmful or unharmful.\n"
    "Task 2: determine whether the AI assistant's response is harmful or unharmful.\n"
    "\n"
    "You must think step by step. Keep consistency between the reasoning and the Answers. \n"
    "\n"
    "Put the reasoning process into <think> </think>. Put the result into <result> </result>."
)
IMAGE_MARKER = "<image>"
_SPECIAL_TOKEN = re.compile(r"<\|([^|<>]{1,40})\|>")


def neutralise(text: str) -> str:
    """Break chat-template control strings (`<|im_end|>`, `<|image_pad|>`…) in user-supplied text, so
    that text can neither close its own turn nor forge image slots. Ordinary text is unchanged."""
    return _SPECIAL_TOKEN.sub(lambda m: f"<\u200b|{m.group(1)}|\u200b>", text)


def _tail(request: GuardRequest) -> str:
    response = "None" if request.response is None else neutralise(request.response)
    return f"{neutralise(request.text)}\n\nAI assistant:\n{response}"


def user_text(request: GuardRequest, image_marker: str = IMAGE_MARKER) -> str:
    """The user message as plain text, one marker line per image where the reference puts it."""
    return "Human user:\n" + f"{image_marker}\n" * len(request.images) + _tail(request)


def chat_messages(request: GuardRequest) -> list[dict[str, Any]]:
    """System and user messages with an image part per image, in the marker's place."""
    content: list[dict[str, Any]] = [{"type": "text", "text": "Human user:\n"}]
    for _ in request.images:
        content += [{"type": "image"}, {"type": "text", "text": "\n"}]
    content.append({"type": "text", "text": _tail(request)})
    return [
        {"role": "system", "content": [{"type": "text", "text": INSTRUCTION}]},
        {"role": "user", "content": content},
    ]
