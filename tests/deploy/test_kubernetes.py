"""The Kubernetes manifests (deploy/k8s): every overlay builds with kustomize, every object is valid against
the Kubernetes schemas and its custom resource definition, and the properties the services rely on hold in
what is built: probes on the health server, resources, non-root and read-only pods, secrets only referenced,
a worker's grace period longer than its drain, scaling bounded by the events topic's partitions, one trainer,
and commands and settings that exist in the code. checkov finds nothing that is not listed with a reason.

Needs `kubectl` (kustomize built in) on PATH and checkov in .tools/checkov (see deploy/k8s/README.md)."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args
from unittest import mock
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from console.settings import ConsoleSettings
from guardstream import topics_cli
from runtime.settings import ServiceSettings
from tests.deploy.setting_names import setting_field
from topics.registry import TopicNames, topic_specs
from trainer.settings import TrainerSettings
from workers.guard.registry import BACKENDS
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "pool")
BUILDS = (*OVERLAYS, *(f"{name}+monitoring" for name in OVERLAYS))
SCHEMAS = Path(__file__).parent / "schemas"
GUARDSTREAM = Path(sys.executable).parent / "guardstream"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
CHECKOV_SKIPS = K8S / "checkov-skips.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# the oldest Kubernetes the manifests are written for (PodDisruptionBudget policy/v1, seccompProfile fields,
# NetworkPolicy port names), and the newest kubernetes-validate knows
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.json",  # KEDA v2.20.2
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.v1.json",  # operator v0.93.0
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.v1.json",
}
# The Kafka scaler's trigger parameters in KEDA v2.20.2 (pkg/scalers/kafka_scaler.go), plus the *FromEnv form
# of the three it resolves from the target's environment. Trigger metadata is a map of strings in the CRD, so
# a misspelt parameter passes the schema and is ignored by KEDA.
KAFKA_TRIGGER_PARAMETERS = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic",
    "topicFromEnv", "partitionLimitation", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion",
}
# the settings each guardstream command reads
COMMAND_SETTINGS: dict[tuple[str, ...], type[ServiceSettings]] = {
    ("worker",): WorkerSettings,
    ("trainer",): TrainerSettings,
    ("console",): ConsoleSettings,
    ("topics", "create"): WorkerSettings,
}
# outside the settings models: names that hold a secret by their look
SECRET_LOOKING = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|CREDENTIAL|REDIS_URL|DATABASE_URL")
LITE_STARTUP_S = 60
GPU_STARTUP_S = 15 * 60


# -- building -------------------------------------------------------------------------------------------------

def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH: it builds the manifests (kubectl kustomize)"
    built = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, f"kubectl kustomize {path} failed: {built.stderr}"
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay as built, and each with the monitoring component (as an overlay of one's own adds it)."""
    out = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    for name in OVERLAYS:
        folder = tmp_path_factory.mktemp(f"{name}-monitoring")
        (folder / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": "guardstream",
            "resources": [os.path.relpath(K8S / "overlays" / name, folder)],
            "components": [os.path.relpath(K8S / "components" / "monitoring", folder)],
        }))
        out[f"{name}+monitoring"] = kustomize(folder)
    return out


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] in ("Deployment", "Job"))


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def guardstream_args(container: dict[str, Any]) -> tuple[str, ...] | None:
    """The arguments of `guardstream …` a container runs, or None when it runs something else."""
    command = [*container.get("command", []), *container.get("args", [])]
    if not command or command[0] != "guardstream":
        return None
    return tuple(command[1:])


def guardstream_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            if guardstream_args(container) is not None:
                yield workload, container


def settings_class(args: tuple[str, ...]) -> type[ServiceSettings]:
    matches = [cls for command, cls in COMMAND_SETTINGS.items() if args[:len(command)] == command]
    assert matches, f"no settings model known for `guardstream {' '.join(args)}`"
    return matches[0]


def environment(docs: list[dict[str, Any]], container: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """A container's environment as Kubernetes sets it: ConfigMaps (envFrom, in order), then its literal values;
    and the names whose values come from Secrets."""
    values: dict[str, str] = {}
    from_secrets: set[str] = set()
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom takes ConfigMaps only: {source}"
        values.update(find(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            values[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            from_secrets.add(var["name"])
            values.pop(var["name"], None)
        else:
            pytest.fail(f"{container['name']}: {var['name']} is neither a value nor a secretKeyRef")
    return values, from_secrets


def load_settings(cls: type[ServiceSettings], env: dict[str, str]) -> Any:
    """The settings a service builds from exactly this environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return cls()


def is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def service_settings(docs: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], Any]:
    """A Deployment's first container, and the settings its service builds from its environment."""
    workload = find(docs, "Deployment", name)
    container = pod_spec(workload)["containers"][0]
    env, _ = environment(docs, container)
    args = guardstream_args(container)
    assert args is not None
    return container, load_settings(settings_class(args), env)


def startup_budget_s(probe: dict[str, Any]) -> int:
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def named_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']} has no port named {name}"
    return ports[name]


# -- (a) kustomize and (b) schemas ----------------------------------------------------------------------------

@pytest.mark.parametrize("build", BUILDS)
def test_overlay_builds_with_every_service(builds: dict[str, list[dict[str, Any]]], build: str) -> None:
    docs = builds[build]
    for name in ("guardstream-worker", "guardstream-trainer", "guardstream-console"):
        find(docs, "Deployment", name)
    find(docs, "Job", "guardstream-topics-create")
    find(docs, "ScaledObject", "guardstream-worker")
    find(docs, "Service", "guardstream-console")
    assert not [d for d in docs if d["kind"] == "Secret"], "a Secret is built: secrets are the user's, never shipped"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"guardstream"}
    if build.endswith("+monitoring"):
        find(docs, "PodMonitor", "guardstream")
        find(docs, "PrometheusRule", "guardstream")


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields wherever it lists the fields (the API server prunes them,
    and `kubectl apply` refuses them with strict field validation)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = strict(json.loads((SCHEMAS / CRD_SCHEMAS[api_version, kind]).read_text()))
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("build", BUILDS)
def test_every_object_is_valid_against_its_schema(builds: dict[str, list[dict[str, Any]]], build: str) -> None:
    overlay, _, component = build.partition("+")
    # an overlay with the component adds the component's objects to the overlay's, checked on their own
    docs = [d for d in builds[build] if d not in builds[overlay]] if component else builds[build]
    assert docs
    problems = []
    for doc in docs:
        what = f"{doc['kind']} {doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            problems += [f"{what}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                         for e in crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc)]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{what} (Kubernetes {version}): {'/'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_schema_checks_refuse_a_misspelt_field() -> None:
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [], "maxReplicas": 8}}
    assert not crd_validator("keda.sh/v1alpha1", "ScaledObject").is_valid(scaled)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "x", "imag": "x"}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)


# -- (c) properties -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_limited_and_unprivileged(builds: dict[str, list[dict[str, Any]]],
                                                           overlay: str) -> None:
    docs = builds[overlay]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for workload in workloads(docs):
        spec = pod_spec(workload)
        where = f"{workload['kind']} {workload['metadata']['name']}"
        assert spec.get("automountServiceAccountToken") is False, where
        account = spec.get("serviceAccountName")
        assert account in accounts and account != "default", f"{where}: needs a dedicated ServiceAccount"
        assert accounts[account].get("automountServiceAccountToken") is False, account
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        tmp = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            what = f"{where} {container['name']}"
            if workload["kind"] == "Deployment":
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert probe in container, f"{what}: no {probe}"
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][side]), f"{what}: {side}"
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 10001) == 10001, what
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), what
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), what
            assert sc.get("seccompProfile", pod["seccompProfile"])["type"] == "RuntimeDefault", what
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp, f"{what}: /tmp must be an emptyDir (the root filesystem is read-only)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_guardstream_probes_ask_the_health_server(builds: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = builds[overlay]
    for workload in (d for d in docs if d["kind"] == "Deployment"):
        container = pod_spec(workload)["containers"][0]
        args = guardstream_args(container)
        if args is None:
            continue
        env, _ = environment(docs, container)
        observability = load_settings(settings_class(args), env).observability
        assert observability.health_enabled and observability.health_host == "0.0.0.0"
        assert named_port(container, "health") == observability.health_port
        paths = {probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
                 for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert paths == {"startupProbe": ("/healthz", "health"), "readinessProbe": ("/readyz", "health"),
                         "livenessProbe": ("/healthz", "health")}, workload["metadata"]["name"]


def test_startup_probes_allow_for_loading_the_model(builds: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        worker = pod_spec(find(builds[overlay], "Deployment", "guardstream-worker"))["containers"][0]
        need = GPU_STARTUP_S if overlay == "gpu" else LITE_STARTUP_S
        assert startup_budget_s(worker["startupProbe"]) >= need, overlay
    pool = pod_spec(find(builds["pool"], "Deployment", "guardstream-vllm-pool"))["containers"][0]
    assert startup_budget_s(pool["startupProbe"]) >= GPU_STARTUP_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_inlined(builds: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = builds[overlay]
    example = {d["metadata"]["name"]: set(d["stringData"])
               for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())}
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        for name in config.get("data", {}):
            field = setting_field(WorkerSettings, name) or setting_field(TrainerSettings, name) \
                or setting_field(ConsoleSettings, name)
            assert not (field and is_secret(field)) and not SECRET_LOOKING.search(name), \
                f"ConfigMap {config['metadata']['name']} holds {name}, a secret"
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            args = guardstream_args(container)
            model = settings_class(args) if args is not None else None
            for var in container.get("env", []):
                field = setting_field(model, var["name"]) if model and var["name"].startswith("GUARDSTREAM_") else None
                if (field and is_secret(field)) or SECRET_LOOKING.search(var["name"]):
                    assert "value" not in var, f"{container['name']}: {var['name']} is inlined"
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in example.get(ref["name"], set()), \
                        f"{var['name']} reads {ref['name']}/{ref['key']}, which secret.example.yaml does not show"


def test_secret_example_holds_placeholders_only() -> None:
    for secret in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()):
        kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[0], strict=True)
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value or value == "{}", f"{secret['metadata']['name']}/{key} holds a value"


def test_secret_inlined_in_a_container_is_caught(builds: dict[str, list[dict[str, Any]]]) -> None:
    docs = json.loads(json.dumps(builds["cpu"]))
    worker = pod_spec(find(docs, "Deployment", "guardstream-worker"))["containers"][0]
    worker["env"].append({"name": "GUARDSTREAM_KAFKA__SSL_KEYFILE_PASSWORD", "value": "hunter2"})
    with pytest.raises(AssertionError, match="is inlined"):
        test_no_secret_value_is_inlined({"cpu": docs}, "cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_is_killed_only_after_its_drain(builds: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = builds[overlay]
    _, settings = service_settings(docs, "guardstream-worker")
    grace = pod_spec(find(docs, "Deployment", "guardstream-worker"))["terminationGracePeriodSeconds"]
    assert grace > settings.drain_timeout_s, (
        f"{overlay}: the pod is killed after {grace} s, before the drain ({settings.drain_timeout_s} s) ends")


def events_partitions() -> int:
    """The partition count `guardstream topics create` gives chat.events by default, from the code."""
    option = inspect.signature(topics_cli.create).parameters["partitions"].default.default
    specs = {s.name: s for s in topic_specs(TopicNames(), partitions=option)}
    return specs[TopicNames().events].partitions


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_scale_on_lag_up_to_the_events_partitions(builds: dict[str, list[dict[str, Any]]],
                                                          overlay: str) -> None:
    docs = builds[overlay]
    job = pod_spec(find(docs, "Job", "guardstream-topics-create"))["containers"][0]
    args = guardstream_args(job)
    assert args is not None and args[:2] == ("topics", "create")
    partitions = int(args[args.index("--partitions") + 1]) if "--partitions" in args else events_partitions()
    scaled = find(docs, "ScaledObject", "guardstream-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "guardstream-worker"
    assert scaled["maxReplicaCount"] == partitions, "a worker beyond the partition count gets no partition"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["cooldownPeriod"] > 0
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120, "scale-downs would follow every dip"
    [trigger] = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka" and set(meta) <= KAFKA_TRIGGER_PARAMETERS, set(meta) - KAFKA_TRIGGER_PARAMETERS
    worker, settings = service_settings(docs, "guardstream-worker")
    kafka = settings.kafka
    assert meta["consumerGroup"] == kafka.group_id
    assert meta["topic"] == TopicNames(kafka.topic_prefix).events
    assert meta["offsetResetPolicy"] == kafka.auto_offset_reset
    assert environment(docs, worker)[0][meta["bootstrapServersFromEnv"]] == kafka.bootstrap_servers
    assert meta["excludePersistentLag"] == "true"
    assert int(meta["lagThreshold"]) > 0 and int(meta["activationLagThreshold"]) >= 0


def test_trainer_runs_alone_on_its_volume(builds: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        docs = builds[overlay]
        trainer = find(docs, "Deployment", "guardstream-trainer")
        assert trainer["spec"]["replicas"] == 1, "the trainer is the data set's only writer"
        assert trainer["spec"]["strategy"] == {"type": "Recreate"}, "two trainers would overlap in a rollout"
        container, settings = service_settings(docs, "guardstream-trainer")
        volumes = {v["name"]: v for v in pod_spec(trainer)["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        claim = mounts[str(settings.data_dir)]["persistentVolumeClaim"]["claimName"]
        find(docs, "PersistentVolumeClaim", claim)
        assert not [d for d in docs if d["kind"] == "ScaledObject" and
                    d["spec"]["scaleTargetRef"]["name"] == "guardstream-trainer"]


def test_every_command_exists_in_the_cli(builds: dict[str, list[dict[str, Any]]]) -> None:
    commands: set[tuple[str, ...]] = set()
    for docs in builds.values():
        for workload in workloads(docs):
            for container in pod_spec(workload)["containers"]:
                args = guardstream_args(container)
                if args is None:
                    assert container["command"] == ["vllm", "serve"], f"{container['name']} runs {container['command']}"
                else:
                    commands.add(args)
    runs = {args: subprocess.Popen([str(GUARDSTREAM), *args, "--help"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True) for args in sorted(commands)}
    failed = {" ".join(args): run.communicate(timeout=60)[1] for args, run in runs.items() if run.wait(60) != 0}
    assert not failed, f"not commands of guardstream: {failed}"
    assert {("worker",), ("trainer",), ("console",), ("topics", "create")} <= commands


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_named_exists_and_is_valid(builds: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = builds[overlay]
    for workload, container in guardstream_containers(docs):
        args = guardstream_args(container)
        assert args is not None
        model = settings_class(args)
        env, from_secrets = environment(docs, container)
        unknown = [n for n in [*env, *from_secrets] if n.startswith("GUARDSTREAM_") and setting_field(model, n) is None]
        assert not unknown, f"{workload['metadata']['name']}: {model.__name__} has no setting {unknown}"
        settings = load_settings(model, env)  # refuses a value out of range or of the wrong type
        guard = getattr(settings, "guard", None)
        if guard is not None:
            assert guard.backend in BACKENDS and guard.cascade_backend in BACKENDS


def test_gpu_worker_serves_the_mounted_checkpoint_on_a_gpu(builds: dict[str, list[dict[str, Any]]]) -> None:
    docs = builds["gpu"]
    worker, settings = service_settings(docs, "guardstream-worker")
    guard = settings.guard
    assert guard.backend == "vllm" and worker["image"].endswith(":gpu")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    spec = pod_spec(find(docs, "Deployment", "guardstream-worker"))
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounted = [m for m in worker["volumeMounts"] if Path(guard.model_path).is_relative_to(m["mountPath"])]
    assert mounted and "persistentVolumeClaim" in volumes[mounted[0]["name"]], "MODEL_PATH is on no volume"


def test_pool_workers_reach_the_vllm_service(builds: dict[str, list[dict[str, Any]]]) -> None:
    docs = builds["pool"]
    worker, settings = service_settings(docs, "guardstream-worker")
    guard = settings.guard
    assert "openai" in (guard.backend, guard.cascade_backend if guard.backend == "cascade" else None)
    url = urlsplit(guard.openai_base_url)
    service = find(docs, "Service", url.hostname)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    pool = pod_spec(find(docs, "Deployment", "guardstream-vllm-pool"))["containers"][0]
    assert service["spec"]["selector"].items() <= find(docs, "Deployment", "guardstream-vllm-pool")[
        "spec"]["template"]["metadata"]["labels"].items()
    assert f"--served-model-name={guard.openai_model}" in pool["args"]
    assert pool["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec(find(docs, "Deployment", "guardstream-worker"))["containers"][0]["image"].endswith(":cpu")


def selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return bool(wanted.items() <= labels.items())


def egress_ports(policies: list[dict[str, Any]], labels: dict[str, str]) -> set[int | str]:
    return {p["port"] for policy in policies if selected(policy, labels)
            for rule in policy["spec"].get("egress", []) for p in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_each_service_only_what_it_needs(builds: dict[str, list[dict[str, Any]]],
                                                                overlay: str) -> None:
    docs = builds[overlay]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    dns, kafka, redis, s3, postgres = {53}, {9092, 9093}, {6379}, {443}, {5432}
    needs = {"guardstream-worker": dns | kafka | redis | s3, "guardstream-trainer": dns | kafka | s3,
             "guardstream-console": dns | kafka | postgres | s3, "guardstream-topics": dns | kafka,
             "guardstream-vllm-pool": dns}
    if overlay == "pool":
        needs["guardstream-worker"] |= {8000}
    deny = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}]
    for workload in workloads(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        name = labels["app.kubernetes.io/name"]
        assert any(selected(p, labels) for p in deny), f"{name}: no default-deny policy selects it"
        assert egress_ports(policies, labels) == needs[name], name
        ports = {p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
        ingress = {p["port"] for policy in policies if selected(policy, labels)
                   for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
        # the metrics policy names the health port on every guardstream pod; on a pod without one it opens nothing
        assert ports <= ingress and ingress - ports <= {"health"}, f"{name}: ingress to {ingress}, ports {ports}"


def test_workers_and_console_have_disruption_budgets(builds: dict[str, list[dict[str, Any]]]) -> None:
    docs = builds["cpu"]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for name in ("guardstream-worker", "guardstream-console"):
        labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert any(b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets), name


def test_prometheus_rule_carries_the_alert_rules(builds: dict[str, list[dict[str, Any]]]) -> None:
    assert ALERTS.exists(), f"{ALERTS.relative_to(ROOT)} is missing"
    rule = find(builds["cpu+monitoring"], "PrometheusRule", "guardstream")
    expected = yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == expected, (
        "deploy/k8s/components/monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
        "copy alerts.yml's groups into its spec.groups")


def test_pod_monitor_gives_the_job_names_the_alerts_use(builds: dict[str, list[dict[str, Any]]]) -> None:
    docs = builds["pool+monitoring"]
    monitor = find(docs, "PodMonitor", "guardstream")["spec"]
    jobs = set()
    for workload in (d for d in docs if d["kind"] == "Deployment"):
        template = workload["spec"]["template"]
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        scraped = {e["port"] for e in monitor["podMetricsEndpoints"]} & ports
        assert selected({"spec": {"podSelector": monitor["selector"]}}, template["metadata"]["labels"]) and scraped
        jobs.add(template["metadata"]["labels"][monitor["jobLabel"]])
    up = re.search(r'up\{job=~"([^"]+)"\}', ALERTS.read_text())
    assert up and set(up.group(1).split("|")) <= jobs


# -- (d) checkov ----------------------------------------------------------------------------------------------

def test_checkov_fails_only_the_checks_skipped_with_a_reason(builds: dict[str, list[dict[str, Any]]],
                                                            tmp_path: Path) -> None:
    assert CHECKOV.exists(), f"checkov is not installed at {CHECKOV.relative_to(ROOT)} (see deploy/k8s/README.md)"
    skips = yaml.safe_load(CHECKOV_SKIPS.read_text())["skips"]
    assert all(s["reason"].strip() for s in skips), "every skipped check needs its reason"
    for build in BUILDS:
        (tmp_path / f"{build}.yaml").write_text(yaml.safe_dump_all(builds[build]))
    run = subprocess.run([str(CHECKOV), "--directory", str(tmp_path), "--framework", "kubernetes", "--quiet",
                          "--compact", "--output", "json", "--skip-download"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode in (0, 1), run.stderr
    report = json.loads(run.stdout)
    failed: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        failed.setdefault(check["check_id"], set()).add(check["resource"])
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 0
    listed = {s["id"] for s in skips}
    assert set(failed) - listed == set(), {k: sorted(v) for k, v in failed.items() if k not in listed}
    assert listed - set(failed) == set(), "skips listed for checks that no longer fail: remove them"
