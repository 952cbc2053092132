"""The observability files in deploy/: the alert rules pass promtool's check and their unit tests, every
dashboard query parses, every metric the rules and the dashboard name is one a running worker, trainer or
console serves at /metrics, every alert has its runbook section (and every section an alert), and the
dashboard is well formed.

promtool comes from Debian's `prometheus` package (`make test` unpacks it into .tools/, without installing a server)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pydantic import SecretStr

from console.passwords import hash_token
from console.settings import AccessSettings, ConsoleSettings
from runtime.settings import ObservabilitySettings
from tests.conftest import PARTITIONS, dead_letters_for, running_worker, verdicts_for
from tests.console.conftest import running_console
from tests.factories import BENIGN, HARMFUL, event
from tests.trainer.conftest import running_trainer
from topics.admin import create_topics
from topics.io import produce_events, produce_raw
from topics.local_broker import LocalBroker
from topics.registry import TopicNames, topic_specs
from topics.settings import KafkaSettings
from trainer.settings import DatasetSettings, JobSettings, TrainerSettings
from workers.guard.lite import LiteGuard
from workers.settings import CacheSettings, WorkerSettings

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "guardstream.json"
RUNBOOKS = REPO / "deploy" / "runbooks.md"

# Names the expressions may use that no guardstream service serves, each with the reason.
EXTERNAL = {
    "up": "written by Prometheus itself for every scrape target",
    "kafka_consumergroup_lag": "kafka-exporter's, read from the broker: the group's lag while no worker runs, or "
                               "while a worker's paused partitions are not fetched",
}

# -- PromQL: the metric names an expression selects ---------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$:])[A-Za-z_:][\w:]*")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "inf", "nan", "atan2"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions or aggregations (followed by
    `(`), keywords, label names (inside `{}` or a `by (…)`/`on (…)` list), strings, durations or Grafana's
    `$variables`."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__: {expr}"
    text = STRING.sub('""', expr)
    text = MATCHERS.sub(" ", text)
    text = RANGES.sub(" ", text)  # ranges, subqueries and Grafana's $__rate_interval inside them
    text = LABEL_LIST.sub(" ", text)
    names = set()
    for found in IDENTIFIER.finditer(text):
        word = found.group()
        if text[found.end():].lstrip().startswith("(") or word in KEYWORDS or word in AGGREGATIONS:
            continue
        names.add(word)
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with its Grafana variables replaced by values Prometheus accepts."""
    expr = re.sub(r"\$__\w+", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


# -- the files ---------------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def query_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows, collapsed rows' panels included."""
    found = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in query_panels(dashboard()) for target in panel["targets"]]


def all_exprs() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + dashboard_exprs()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    unpacked = REPO / ".tools" / "prometheus" / "usr" / "bin" / "promtool"  # where `make test` unpacks it
    binary = str(unpacked) if unpacked.exists() else shutil.which("promtool")
    if binary is None:
        raise RuntimeError("promtool is missing: `make test` unpacks it from Debian's prometheus package "
                           "into .tools/prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


# -- (a) promtool --------------------------------------------------------------------------------------------


def test_the_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_alerts_fire_on_synthetic_series() -> None:
    done = promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert len(tested) >= 3 and tested <= {rule["alert"] for rule in alert_rules()}


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)} for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# -- (b) every metric named is served ---------------------------------------------------------------------

SAMPLES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "histogram": ("_bucket", "_count", "_sum"),
           "summary": ("", "_count", "_sum")}


def sample_names(exposition: str) -> set[str]:
    """The sample names a /metrics page serves: those it shows, and those its TYPE lines declare (a labelled
    metric without a child yet has its HELP and TYPE lines and no sample)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + suffix for suffix in SAMPLES[kind]}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][\w:]*", line).group())  # type: ignore[union-attr]
    return names


def missing(exprs: list[str], served: set[str]) -> dict[str, set[str]]:
    """Each expression's metric names that are neither served nor external."""
    out = {}
    for expr in exprs:
        unknown = metric_names(expr) - served - EXTERNAL.keys()
        if unknown:
            out[expr] = unknown
    return out


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as reply:
        assert reply.status == 200
        return await reply.text()


@pytest.fixture(scope="module")
async def served(broker: LocalBroker, redis_url: str, lite_guard: LiteGuard,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
    """The /metrics page of a worker that answered a few events and a record it cannot decode, of a trainer
    and of a console, each running on the local broker with its health server on a free loopback port."""
    topics = TopicNames(f"t-{uuid.uuid4().hex[:10]}.")
    await create_topics(broker.bootstrap_servers, topic_specs(topics, partitions=PARTITIONS))
    folder = tmp_path_factory.mktemp("observability")
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=topics.prefix,
                          group_id=f"g-{topics.prefix}", session_timeout_ms=6000, heartbeat_interval_ms=500,
                          commit_interval_ms=200)
    health = ObservabilitySettings(health_enabled=True, health_port=0)
    pages: dict[str, str] = {}

    worker_settings = WorkerSettings(kafka=kafka, observability=health, drain_timeout_s=10,
                                     cache=CacheSettings(redis_url=redis_url, key_prefix=f"test-{topics.prefix}"))
    await produce_events(kafka, topics.events, [event(BENIGN[0]), event(HARMFUL[0])])
    await produce_raw(kafka, topics.events, [(b"k", b"not json")])
    async with running_worker(worker_settings, lite_guard) as worker:
        await verdicts_for(worker_settings, 2)
        await dead_letters_for(worker_settings, 1)
        assert worker.health is not None
        pages["worker"] = await scrape(worker.health.port)

    trainer_settings = TrainerSettings(data_dir=folder / "data", kafka=kafka, group_id=f"trainer-{topics.prefix}",
                                       dataset=DatasetSettings(uri=str(folder / "dataset")),
                                       jobs=JobSettings(interval_s=None, after_new_labels=None),
                                       observability=health)
    async with running_trainer(trainer_settings) as trainer:
        assert trainer.health is not None
        pages["trainer"] = await scrape(trainer.health.port)

    console_settings = ConsoleSettings(
        kafka=kafka.model_copy(update={"client_id": "guardstream-console"}), group_id=f"console-{topics.prefix}",
        database_url=SecretStr(f"sqlite:///{folder / 'review.db'}"), port=0,
        access=AccessSettings(reviewers={"alice": hash_token("alice-token-7f3a")}), observability=health)
    async with running_console(console_settings) as console:
        assert console.health is not None
        pages["console"] = await scrape(console.health.port)
    yield pages


async def test_the_worker_page_shows_what_it_did(served: dict[str, str]) -> None:
    """The scrape is of a worker that answered: labelled metrics have samples, not only their TYPE lines."""
    page = served["worker"]
    assert re.search(r'^guardstream_verdicts_total\{request_harmful="True",status="ok"\} 1\.0$', page, re.M)
    assert re.search(r'^guardstream_dead_letters_total\{reason="decode_failed"\} 1\.0$', page, re.M)
    assert re.search(r'^guardstream_stage_seconds_bucket\{le="\+Inf",stage="guard"\} ', page, re.M)


async def test_every_metric_in_the_rules_and_the_dashboard_is_served(served: dict[str, str]) -> None:
    names = set().union(*(sample_names(page) for page in served.values()))
    assert missing(all_exprs(), names) == {}
    used = set().union(*(metric_names(expr) for expr in all_exprs()))
    assert EXTERNAL.keys() <= used, "an external name no expression uses any more: drop it from EXTERNAL"
    assert not EXTERNAL.keys() & names, "an external name guardstream serves itself: drop it from EXTERNAL"
    for service in ("worker", "trainer", "console"):  # each service's metrics are watched somewhere
        assert used & sample_names(served[service]), service


async def test_a_misspelt_metric_is_caught(served: dict[str, str]) -> None:
    names = set().union(*(sample_names(page) for page in served.values()))
    rule = next(r for r in alert_rules() if r["alert"] == "GuardstreamErrorVerdictRateHigh")
    misspelt = rule["expr"].replace("guardstream_verdicts_total{status=", "guardstream_verdict_total{status=")
    assert misspelt != rule["expr"]
    assert missing([rule["expr"], misspelt], names) == {misspelt: {"guardstream_verdict_total"}}
    # a family name without its sample suffix is not a sample
    assert missing(["histogram_quantile(0.5, rate(guardstream_stage_seconds[5m]))"], names) != {}


def test_metric_names_skips_labels_functions_and_variables() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(guardstream_stage_seconds_bucket{job=~"$job", '
            'stage!="x y", instance=~"$instance"}[$__rate_interval])))\n'
            '  / on (job) group_left sum without (partition) (max_over_time(guardstream_consumer_lag[5m] offset 1h))'
            ' > bool 1e3 and time() - last_seen:recorded unless count(up == 0) > inf')
    assert metric_names(expr) == {"guardstream_stage_seconds_bucket", "guardstream_consumer_lag", "last_seen:recorded",
                                  "up"}


# -- (c) runbooks ------------------------------------------------------------------------------------------


def test_every_alert_has_its_runbook_section_and_every_section_an_alert() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOKS.read_text(), re.M)
    anchors = {github_anchor(h) for h in headings}
    alerts = alert_rules()
    assert len({rule["alert"] for rule in alerts}) == len(alerts), "alert names repeat"
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url == f"deploy/runbooks.md#{rule['alert'].lower()}", rule["alert"]
        assert url.split("#")[1] in anchors, f"no section for {rule['alert']}"
    assert anchors == {rule["alert"].lower() for rule in alerts}


def test_every_alert_waits_has_a_severity_and_says_what_it_means() -> None:
    for rule in alert_rules():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_runbook_section_says_what_to_do() -> None:
    sections = re.split(r"^## ", RUNBOOKS.read_text(), flags=re.M)[1:]
    assert sections
    for section in sections:
        name = section.splitlines()[0]
        for part in ("**What it means.**", "**First checks.**", "**Likely causes", "**Fixes.**", "**Escalate**"):
            assert part in section, f"{name}: no {part}"


# -- (d) the dashboard -------------------------------------------------------------------------------------


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = query_panels(board)
    ids = [p["id"] for p in board["panels"]] + [p["id"] for row in board["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("events in", "verdicts", "dead letters", "cache hit", "batch size", "occupancy", "p50", "p99",
                  "lag", "model", "labels", "shards", "job decisions", "review queue", "oldest"):
        assert topic in titles, topic
