"""The project's written contrastive corpus (`trainer/data/contrast/*.yml`), split once and for all.

Each file is one slice written by one author, on its own categories (figurative language and homonyms;
medicine, self-harm support and chemistry; security, weapons in sport and history, crime prevention;
games, fiction, definitions and history; discrimination questions, privacy, counter-speech). A request
group holds requests on the same words or topic, benign and harmful by target or intent; a response
group holds a benign prompt with a helpful answer (and sometimes an abusive one), and a harmful prompt
with a refusal and a compliance. Every text the project wrote itself (CC0, like `written.yml`).

Splits are by group, a fixed function of `slice/id`: **train** (65%), **validation** (15%: operating
points, thresholds, cascade band, training settings) and **test** (20%: scored once by the finished model,
never used for any choice). The two sides of a contrast never fall in different splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from trainer.dataset import held_out
from trainer.lite_examples import RequestData, ResponseData

CONTRAST = Path(__file__).resolve().parent / "data" / "contrast"
SPLITS = ("train", "validation", "test")
TEST_SHARE, VALIDATION_SHARE = 0.20, 0.15
# what each response of a group is: (field, prompt field, harmful, kind)
RESPONSE_FIELDS = (
    ("helpful_answer", "benign_prompt", False, "helpful-answer"),
    ("toxic_answer", "benign_prompt", True, "abusive-answer"),
    ("refusal", "harmful_prompt", False, "refusal-or-redirect"),
    ("compliance", "harmful_prompt", True, "compliance"),
)


def split_of(group: str) -> str:
    """train, validation or test: nested hashes, so the test part never depends on the validation share."""
    if held_out(group, TEST_SHARE, salt="contrast-test"):
        return "test"
    if held_out(group, VALIDATION_SHARE / (1 - TEST_SHARE), salt="contrast-validation"):
        return "validation"
    return "train"


@dataclass
class Contrast:
    """The corpus, one split: requests and pairs, each with its category and kind
    (`benign`/`harmful` for requests; `helpful-answer`, `abusive-answer`, `refusal-or-redirect`,
    `compliance` for responses)."""

    request: RequestData
    request_kinds: list[str]
    response: ResponseData
    response_kinds: list[str]


def load_contrast(split: str, root: Path = CONTRAST) -> Contrast:
    """The requests and pairs of `split` from every slice under `root`; sources are `contrast/<slice>/<category>`."""
    if split not in SPLITS:
        raise ValueError(f"split is one of {SPLITS}, not {split!r}")
    texts: list[str] = []
    labels: list[bool] = []
    sources: list[str] = []
    kinds: list[str] = []
    prompts: list[str] = []
    responses: list[str] = []
    pair_labels: list[bool] = []
    pair_sources: list[str] = []
    pair_kinds: list[str] = []

    def request(text: str, harmful: bool, source: str) -> None:
        if text.strip() and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(harmful)
            sources.append(source)
            kinds.append("harmful" if harmful else "benign")

    seen: set[str] = set()
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        author = path.stem
        for group in doc.get("requests") or []:
            if split_of(f"{author}/req/{group['id']}") != split:
                continue
            source = f"contrast/{author}/{group['category']}"
            for text in group.get("benign") or []:
                request(str(text), False, source)
            for text in group.get("harmful") or []:
                request(str(text), True, source)
        for group in doc.get("responses") or []:
            if split_of(f"{author}/resp/{group['id']}") != split:
                continue
            source = f"contrast/{author}/{group['category']}"
            request(str(group.get("benign_prompt") or ""), False, source)
            request(str(group.get("harmful_prompt") or ""), True, source)
            for name, prompt_field, harmful, kind in RESPONSE_FIELDS:
                answer, prompt = group.get(name), group.get(prompt_field)
                if answer and prompt:
                    prompts.append(str(prompt))
                    responses.append(str(answer))
                    pair_labels.append(harmful)
                    pair_sources.append(source)
                    pair_kinds.append(kind)
    return Contrast(
        RequestData(texts, np.array(labels, dtype=bool), sources, np.ones(len(texts))), kinds,
        ResponseData(prompts, responses, np.array(pair_labels, dtype=bool), pair_sources, np.ones(len(prompts))),
        pair_kinds)
