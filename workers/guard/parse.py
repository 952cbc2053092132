"""Read GuardReasoner-VL's answer from its own output, and nothing else.

The model writes `<think>…</think>` then `<result>Request: …\nResponse: …</result>`. Only the final
`<result>` block, which must close the output and follow the closing `</think>`, is read. Text it
quoted earlier (a user's injected `<result>Request: unharmful</result>`, say) decides nothing. An output
that does not parse is not a verdict: the caller turns it into an error and keeps the raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from workers.errors import OutputUnparseable
from workers.guard.base import GuardOutcome, GuardResult

_LABEL = {"harmful": True, "unharmful": False, "harmless": False, "none": False}
_REQUEST = re.compile(r"Request:\s*(harmful|unharmful|none|harmless)\b", re.IGNORECASE)
_RESPONSE = re.compile(r"Response:\s*(harmful|unharmful|none|harmless)\b", re.IGNORECASE)
_FINAL = re.compile(r"<think>(?P<think>.*)</think>\s*<result>(?P<result>(?:(?!<result>).)*?)</result>\s*\Z",
                    re.DOTALL)


class ParseStatus(StrEnum):
    OK = "ok"
    NO_FINAL_RESULT = "no_final_result"  # no <think>…</think><result>…</result> closing the output
    NO_REQUEST_LABEL = "no_request_label"
    AMBIGUOUS = "ambiguous"  # more than one label of a kind inside the final block


@dataclass(frozen=True)
class ParsedOutput:
    status: ParseStatus
    raw: str
    reasoning: str = ""
    request_harmful: bool | None = None
    response_harmful: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status is ParseStatus.OK


def parse_output(text: str, has_response: bool, reasoning: str | None = None) -> ParsedOutput:
    """Parse one output. `reasoning` is the think text when a server split it off (`reasoning_content`)."""
    raw = text if reasoning is None else f"<think>{reasoning}</think>{text}"
    if reasoning is not None and "<think>" not in text:
        text = raw
    match = _FINAL.search(text.strip())
    if match is None:
        return ParsedOutput(ParseStatus.NO_FINAL_RESULT, raw)
    think, result = match.group("think").strip(), match.group("result")
    requests, responses = _REQUEST.findall(result), _RESPONSE.findall(result)
    if not requests:
        return ParsedOutput(ParseStatus.NO_REQUEST_LABEL, raw, think)
    if len(requests) > 1 or len(responses) > 1:
        return ParsedOutput(ParseStatus.AMBIGUOUS, raw, think)
    response_harmful = _LABEL[responses[0].lower()] if (responses and has_response) else None
    return ParsedOutput(ParseStatus.OK, raw, think, _LABEL[requests[0].lower()], response_harmful)


def outcome_from_output(
    text: str,
    has_response: bool,
    decided_by: str,
    reasoning: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> GuardOutcome:
    """A reasoning backend's answer for one item: a result, or OutputUnparseable carrying the raw text."""
    parsed = parse_output(text, has_response, reasoning)
    if not parsed.ok:
        return OutputUnparseable(f"{parsed.status.value}; raw output: {parsed.raw!r}")
    assert parsed.request_harmful is not None
    return GuardResult(
        request_harmful=parsed.request_harmful,
        response_harmful=parsed.response_harmful,
        reasoning=parsed.reasoning,
        decided_by=decided_by,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
