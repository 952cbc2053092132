"""`make train-lite`: build the shipped lite model and its evaluation report.

1. Request examples (`lite_data.py`) and response pairs (`lite_pairs.py`) are embedded once.
2. The request threshold: best F1 on a validation part (a fixed 20% of the texts); the heads are then
   refitted on everything. The response threshold: best F1 on PyRIT's pairs scored with their harm
   category left out (step 3) plus the development pairs.
3. Leave one source out, for both heads (and for the first recipe, as the "before" rows).
4. Cascade band: the widest one keeping 0.95 precision on the out-of-source scores (responses: the
   people-labelled PyRIT pairs, each scored by a head that never saw its harm category).
5. Scored once by the finished model: the hard cases (`data/hard_cases.jsonl`, on which nothing was chosen) and
   the development pairs (`data/dev_cases.jsonl`, on which the heads' regularisation, the assembled pairs'
   weight and the response threshold were chosen, so their figure flatters).
6. The artefact records sources, licences, counts, thresholds and every figure; the report (JSON, Markdown,
   plot) goes to `report_dir`.

Deterministic: fixed seeds, lbfgs, one embedding model; the same packages give the same bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from trainer.dataset import held_out
from trainer.lite_data import LICENCES, load_examples
from trainer.lite_eval import (
    FIRST_RECIPE_SOURCES,
    OutOfSource,
    cascade_band,
    combined_band,
    family,
    hard_case_figures,
    judge_hard_cases,
    load_hard_cases,
    loso_first_recipe_response,
    loso_request,
    loso_response,
    settled_share,
)
from trainer.lite_head import (
    EMBEDDING_MODEL,
    REAL_SOURCES,
    REQUEST_C,
    RequestData,
    ResponseData,
    Vectors,
    best_threshold,
    fit_head,
    prf,
    score_pairs,
    tuned_heads,
    with_thresholds,
)
from trainer.lite_pairs import load_pairs
from workers.guard.lite import load_embedder
from workers.guard.lite_model import LiteModel

SEED = 0
VALIDATION_FRACTION = 0.2
DEV_CASES = Path(__file__).resolve().parent / "data" / "dev_cases.jsonl"


ASSEMBLED_WEIGHT = 0.3  # an assembled pair's weight against a labelled or hand-written one (chosen on the dev pairs)
WHOLE_PAIRS = (*REAL_SOURCES, "written-")  # pairs people labelled or wrote whole, not assembled from parts


def first_recipe_threshold(request: RequestData, vectors: Vectors, validation: np.ndarray) -> float:
    """The first recipe's threshold, chosen the same way: on its validation part."""
    train, held = request.subset(~validation), request.subset(validation)
    head = fit_head(vectors(train.texts), train.y, train.weights, c=REQUEST_C)
    return best_threshold(held.y, head.scores(vectors(held.texts)))


def package_data() -> tuple[RequestData, ResponseData]:
    examples = load_examples()
    pairs = load_pairs(SEED)
    request = RequestData([e.text for e in examples], np.array([e.harmful for e in examples]),
                          [e.source for e in examples], np.ones(len(examples)))
    weights = np.array([1.0 if p.source.startswith(WHOLE_PAIRS) else ASSEMBLED_WEIGHT for p in pairs])
    response = ResponseData([p.prompt for p in pairs], [p.response for p in pairs], np.array([p.harmful for p in pairs]),
                            [p.source for p in pairs], weights)
    return request, response


def build_lite_model(out: Path, report_dir: Path, threads: int = 2) -> LiteModel:
    request, response = package_data()
    cases = load_hard_cases()
    dev = load_dev_pairs()
    embedder = load_embedder(threads)
    vectors = Vectors(embedder, [*request.texts, *response.prompts, *response.responses, *dev.prompts, *dev.responses,
                                 *(c.prompt for c in cases), *(c.response for c in cases if c.response)])

    # thresholds: best F1 on a validation part (a fixed function of each text), never on what is reported
    request_val = np.array([held_out(t, VALIDATION_FRACTION, salt="lite-validation") for t in request.texts])
    response_val = np.array([held_out(f"{p}\n{r}", VALIDATION_FRACTION, salt="lite-validation")
                             for p, r in zip(response.prompts, response.responses, strict=True)])
    tuned = tuned_heads(request, response, vectors, request_val, response_val)
    loso_req = loso_request(request, vectors)
    loso_resp = loso_response(request, response, vectors)
    real = np.array([s.startswith(REAL_SOURCES) for s in response.sources])
    # the response threshold: best F1 on pairs that look like new traffic: PyRIT's people-labelled pairs, each
    # scored by a head that never saw its harm category, and the development pairs (a random split of the
    # training pairs set it too high; PyRIT's alone, whose requests are all harmful, too low)
    dev_scores = score_pairs(tuned.heads, dev, vectors)
    response_threshold = best_threshold(np.concatenate([loso_resp.y[real], dev.y]),
                                        np.concatenate([loso_resp.scores[real], dev_scores]))
    heads = with_thresholds(tuned.heads, tuned.heads.request.threshold, response_threshold)
    request_threshold = heads.request.threshold
    before_req = loso_request(request, vectors, only=FIRST_RECIPE_SOURCES)
    before_resp = loso_first_recipe_response(request, response, vectors)
    first_recipe = request.subset(np.array([family(s) in FIRST_RECIPE_SOURCES for s in request.sources]))
    before_threshold = first_recipe_threshold(first_recipe, vectors, request_val[[family(s) in FIRST_RECIPE_SOURCES
                                                                                  for s in request.sources]])

    scores = judge_hard_cases(heads, cases, vectors)
    hard = hard_case_figures(heads, cases, scores)
    hard_request_y = np.array([c.request_harmful for c in cases])
    hard_response_y = np.array([bool(c.response_harmful) for c in cases if c.response is not None])
    # bands: requests from the hard cases (out of every source at once), responses from PyRIT's pairs left out
    bands = {"request": {**cascade_band(scores.request, hard_request_y), "on": "hard cases"},
             "response": {**cascade_band(loso_resp.scores[real], loso_resp.y[real]), "on": "PyRIT pairs, category left out"}}
    low, high = combined_band(bands["request"], bands["response"])
    bands["default"] = {"low": low, "high": high,
                        "request": settled_share(scores.request, hard_request_y, low, high),
                        "response": settled_share(loso_resp.scores[real], loso_resp.y[real], low, high)}
    hard["cascade"] = {"request": settled_share(scores.request, hard_request_y, low, high),
                       "response": settled_share(scores.response, hard_response_y, low, high)}
    dev_figures = {**prf(dev.y, dev_scores >= response_threshold), "auc": round(float(roc_auc_score(dev.y, dev_scores)), 4),
                   "n": len(dev.y), "cascade": settled_share(dev_scores, dev.y, low, high)}
    evaluation = {
        "leave_one_source_out": {
            "request": {"pooled": loso_req.pooled(request_threshold), "sources": loso_req.rows(request_threshold)},
            "response": {"pooled": loso_resp.pooled(response_threshold), "sources": loso_resp.rows(response_threshold),
                         "people_labelled": OutOfSource(loso_resp.scores[real], loso_resp.y[real],
                                                        []).pooled(response_threshold)},
        },
        "before": {
            "recipe": "one head, package request sources only, response scored alone",
            "request": {"pooled": before_req.pooled(before_threshold), "sources": before_req.rows(before_threshold)},
            "response": {"pooled": before_resp.pooled(before_threshold), "sources": before_resp.rows(before_threshold),
                         "people_labelled": OutOfSource(before_resp.scores[real], before_resp.y[real],
                                                        []).pooled(before_threshold)},
        },
        "validation": {**tuned.validation, "response_threshold_used": response_threshold},
        "hard_cases": hard,
        "dev_pairs": dev_figures,
        "cascade_bands": bands,
        "headline": headline(loso_resp.rows(response_threshold), hard, dev_figures),
    }
    metadata = {
        "embedding_model": EMBEDDING_MODEL,
        "trained_by": "trainer/lite_build.py (make train-lite)",
        "licences": LICENCES,
        "examples": {"request": dict(sorted(Counter(s.split("/")[0] for s in request.sources).items())),
                     "response": dict(sorted(Counter(response.sources).items()))},
        "seed": SEED,
        "evaluation": evaluation,
    }
    model = heads.model(metadata)
    model.save(out)
    write_report(evaluation, report_dir)
    return model


def headline(response_sources: list[dict], hard: dict, dev: dict) -> dict[str, object]:
    """The worst F1 measured away from the training data: a harm category left out (sources with both labels),
    the hard cases, the development pairs."""
    candidates = [(f"leave-one-source-out response F1: {r['source']}", r["f1"]) for r in response_sources if "f1" in r]
    candidates += [("hard cases: request F1", hard["request"]["f1"]), ("hard cases: response F1", hard["response"]["f1"]),
                   ("development pairs: response F1", dev["f1"])]
    where, value = min(candidates, key=lambda c: c[1])
    return {"worst": where, "value": value}


def load_dev_pairs() -> ResponseData:
    rows = [json.loads(line) for line in DEV_CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ResponseData([r["prompt"] for r in rows], [r["response"] for r in rows],
                        np.array([r["response_harmful"] for r in rows], dtype=bool), ["dev"] * len(rows), np.ones(len(rows)))


def write_report(evaluation: dict, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "lite-eval.json").write_text(json.dumps(evaluation, indent=1) + "\n")
    (report_dir / "lite-eval.md").write_text(markdown(evaluation))
    plot(evaluation, report_dir / "lite-eval.png")


def markdown(evaluation: dict) -> str:
    lines = ["# Lite guard: evaluation away from its training data", "",
             f"Headline (the worst figure below): **{evaluation['headline']['value']}** "
             f"({evaluation['headline']['worst']}).", ""]
    for task in ("request", "response"):
        after = evaluation["leave_one_source_out"][task]
        before = {r["source"]: r for r in evaluation["before"][task]["sources"]}
        lines += [f"## {task.capitalize()}: leave one source out (accuracy on the source left out)", "",
                  "| source | n | harmful share | accuracy before | accuracy after | F1 before | F1 after |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in after["sources"]:
            was = before.get(row["source"], {})
            lines.append(f"| {row['source']} | {row['n']} | {row['harmful']} | {was.get('accuracy', 'n/a')} | "
                         f"{row['accuracy']} | {was.get('f1', '')} | {row.get('f1', '')} |")
        b, a = evaluation["before"][task]["pooled"], after["pooled"]
        lines += ["", f"Pooled over every source: F1 {b['f1']} → **{a['f1']}**, ROC AUC {b['auc']} → **{a['auc']}** "
                  f"(threshold {a['threshold']}). Most sources hold one label and teach one thing, so leaving one "
                  "out removes what it teaches: these pooled figures are a floor, not an estimate.", ""]
        if "people_labelled" in after:
            p, was = after["people_labelled"], evaluation["before"][task]["people_labelled"]
            lines += [f"Over PyRIT's people-labelled pairs alone (each scored by heads that never saw its harm "
                      f"category): F1 {was['f1']} → **{p['f1']}** (precision {p['precision']}, recall {p['recall']}), "
                      f"ROC AUC {was['auc']} → **{p['auc']}**, {p['n']} pairs; the response threshold was chosen "
                      "on these scores and the development pairs'.", ""]
    hard = evaluation["hard_cases"]
    lines += ["## Hard cases (hand-written, never trained on)", "",
              f"{hard['passed']} of {hard['cases']} cases judged right on every task. Request F1 {hard['request']['f1']}, "
              f"response F1 {hard['response']['f1']} ({hard['response']['n']} responses).", "",
              "| category | right |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in hard["by_category"].items()]
    dev = evaluation["dev_pairs"]
    lines += ["", "## Development pairs (hand-written, never trained on; they chose the regularisation, the weights "
              "and, with PyRIT's pairs, the response threshold)", "",
              f"Response F1 {dev['f1']} (precision {dev['precision']}, recall {dev['recall']}), ROC AUC {dev['auc']}, "
              f"{dev['n']} pairs."]
    bands = evaluation["cascade_bands"]
    d = bands["default"]
    lines += ["", "## Cascade band (0.95 precision; requests: the hard cases; responses: PyRIT pairs, their category left out)", "",
              "| scores | low | high | settled share |", "|---|---:|---:|---:|",
              f"| request | {bands['request']['low']} | {bands['request']['high']} | {bands['request']['settled_share']} |",
              f"| response | {bands['response']['low']} | {bands['response']['high']} | {bands['response']['settled_share']} |",
              f"| default (both) | {d['low']} | {d['high']} | request {d['request']['settled_share']}, "
              f"response {d['response']['settled_share']} |", ""]
    return "\n".join(lines)


def plot(evaluation: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, task in zip(axes, ("request", "response"), strict=True):
        rows = evaluation["leave_one_source_out"][task]["sources"]
        before = {r["source"]: r["accuracy"] for r in evaluation["before"][task]["sources"]}
        names = [r["source"] for r in rows]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [before.get(n, 0.0) for n in names], 0.4, label="before (first recipe)", color="#bbbbbb")
        ax.bar(x + 0.2, [r["accuracy"] for r in rows], 0.4, label="after", color="#3b7dd8")
        ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: accuracy on the source left out")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
