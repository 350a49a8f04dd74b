"""The Helm chart: rendered offline (helm-python-sdk, Helm's own Go engine), linted, and every
manifest validated against the Kubernetes schemas (kubernetes-validate, strict: unknown
fields fail), with the default values and with ci/production-values.yaml."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from gateway.config.loading import parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "farebox"
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
KUBE_VERSION = "1.30"
# Kinds from CRDs (no schema in kubernetes-validate): checked by hand below.
CRD_KINDS = {"ServiceMonitor"}
VALUE_SETS = {"default": None, "production": PRODUCTION}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    chart = helm.Chart.load(CHART)
    return chart.render(values, name="fb", namespace="gateway", is_install=True)


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs = []
    for path, text in render(values).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        kind = doc["kind"]
        if kind == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard"):
            kind = "DashboardConfigMap"
        out[kind] = doc
    return out


@pytest.mark.parametrize("which", VALUE_SETS)
def test_every_manifest_validates_against_the_kubernetes_schema(which: str) -> None:
    docs = manifests(VALUE_SETS[which])
    kinds = sorted(d["kind"] for d in docs)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except SchemaNotFoundError:
            assert doc["kind"] in CRD_KINDS, doc["kind"]
            check_service_monitor(doc)
    expected = {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    assert expected <= set(kinds), kinds
    if which == "production":
        assert {"ServiceMonitor", "NetworkPolicy"} <= set(kinds)
        assert kinds.count("ConfigMap") == 2, "routing config and the Grafana dashboard"
    # Never a Secret: the chart only references Secrets that exist.
    assert "Secret" not in kinds


def check_service_monitor(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/name"] == "farebox"
    # The metrics Service only (its own port), never the API Service.
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "metrics"
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


@pytest.mark.parametrize("which", VALUE_SETS)
def test_helm_lint_is_clean(which: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[which], strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; an info (no icon) is fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return result


@pytest.mark.parametrize("which", VALUE_SETS)
def test_the_deployment_probes_drains_spreads_and_runs_locked_down(which: str) -> None:
    values = VALUE_SETS[which] or {}
    docs = by_kind(manifests(values or None))
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = containers(deployment)
    assert gateway["args"] == ["serve"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in gateway["env"]}
    drain = float(env["FAREBOX_GRACEFUL_SHUTDOWN_S"]["value"])
    pre_stop = float(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain, "never killed mid-drain"
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert {"/var/lib/farebox", "/tmp", "/etc/farebox"} <= mounts
    assert not any("subPath" in m for m in gateway["volumeMounts"]), "subPath never updates"
    # Secrets only by reference: every env var is a plain setting or a secretKeyRef.
    for name, var in env.items():
        if "value" in var:
            assert name.startswith("FAREBOX_") and not name.endswith(("_KEY", "_URL")), name
        else:
            assert set(var["valueFrom"]) == {"secretKeyRef"}, var
    for name in ("FAREBOX_DATABASE_URL", "FAREBOX_REDIS_URL", "FAREBOX_MASTER_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"]
    for provider_env in (values.get("secrets") or {}).get("providerKeys", {"OPENAI_API_KEY": 1}):
        assert "secretKeyRef" in env[provider_env]["valueFrom"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric_types = [m["type"] for m in hpa["metrics"]]
    assert metric_types == (["Resource", "Pods"] if which == "production" else ["Resource"])


@pytest.mark.parametrize("which", VALUE_SETS)
def test_metrics_are_served_on_their_own_port_service_and_policy(which: str) -> None:
    values = VALUE_SETS[which] or {}
    docs = manifests(values or None)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    api, metrics = services["fb-farebox"], services["fb-farebox-metrics"]
    # The API Service (possibly a LoadBalancer) never carries the metrics port.
    assert [p["targetPort"] for p in api["spec"]["ports"]] == ["http"]
    assert metrics["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["metrics"]
    assert metrics["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    assert "app.kubernetes.io/component" not in api["metadata"]["labels"]
    (gateway,) = containers(by_kind(docs)["Deployment"])
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert ports == {"http": 8080, "metrics": 9464}
    assert env["FAREBOX_METRICS_PORT"] == "9464"
    assert metrics["spec"]["ports"][0]["port"] == ports["metrics"]
    if which == "production":
        policy = by_kind(docs)["NetworkPolicy"]["spec"]
        rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
        assert set(rules) == {"http", "metrics"}
        # Not the API's clients: by default Prometheus pods only.
        assert rules["metrics"] == [
            {
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ]
        assert rules["metrics"] != rules["http"]
    with pytest.raises(helm.HelmValuesError):
        render({"metrics": {"port": 8080}})  # the API's own port


def test_the_termination_grace_period_covers_the_whole_drain() -> None:
    """preStop sleep + drain (the longest stream that should finish) + ledger flush: the
    kubelet counts the preStop in the grace period, and kills at its end."""
    for values in ({}, PRODUCTION, {"drain": {"seconds": 600}}):
        pod = by_kind(manifests(values or None))["Deployment"]["spec"]["template"]["spec"]
        drain = {**yaml.safe_load((CHART / "values.yaml").read_text())["drain"]}
        drain.update((values or {}).get("drain", {}))
        needed = drain["preStopSleepSeconds"] + drain["seconds"] + drain["ledgerFlushSeconds"]
        assert pod["terminationGracePeriodSeconds"] >= needed
    default = by_kind(manifests())["Deployment"]["spec"]["template"]["spec"]
    assert default["terminationGracePeriodSeconds"] == 5 + 120 + 15
    assert (
        by_kind(manifests({"terminationGracePeriodSeconds": 300}))["Deployment"]["spec"][
            "template"
        ]["spec"]["terminationGracePeriodSeconds"]
        == 300
    )
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 60})


def test_the_migration_job_is_a_pre_install_and_pre_upgrade_hook() -> None:
    job = by_kind(manifests(PRODUCTION))["Job"]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    env = {e["name"]: e for e in migrate["env"]}
    assert env["FAREBOX_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "farebox-postgres"


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(routing: str) -> str:
        deployment = by_kind(manifests({"config": {"routing": routing}}))["Deployment"]
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["routing"]
    assert checksum(base) == checksum(base)
    assert checksum(base) != checksum(base + "\n# edited\n")


@pytest.mark.parametrize("which", VALUE_SETS)
def test_the_routing_yaml_in_the_configmap_is_a_valid_farebox_config(which: str) -> None:
    docs = [d for d in manifests(VALUE_SETS[which]) if d["kind"] == "ConfigMap"]
    (config,) = [d for d in docs if "gateway.yaml" in d["data"]]
    text = config["data"]["gateway.yaml"]
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    parsed = parse_config(text, "gateway.yaml", dict.fromkeys(names, "sk-from-a-secret"))
    assert parsed.routes
    # Every ${VAR} the YAML needs comes from a Secret reference in the same values.
    deployment = by_kind(manifests(VALUE_SETS[which]))["Deployment"]
    env = {e["name"] for e in containers(deployment)[0]["env"]}
    assert names <= env, names - env


def test_the_dashboard_comes_from_the_chart_file() -> None:
    dashboard = by_kind(manifests(PRODUCTION))["DashboardConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "farebox.json").read_text()
    assert dashboard["data"]["farebox.json"].strip() == shipped.strip()


def test_several_pods_without_a_shared_ledger_or_redis_is_refused() -> None:
    for missing in ("databaseUrl", "redisUrl"):
        values = {"secrets": {missing: {"name": "", "key": "x"}}}
        with pytest.raises(helm.HelmError, match=f"secrets.{missing}"):
            render(values)
    single = {
        "replicaCount": 1,
        "autoscaling": {"enabled": False},
        "secrets": {"databaseUrl": {"name": ""}, "redisUrl": {"name": ""}},
    }
    deployment = by_kind(manifests(single))["Deployment"]
    env = {e["name"]: e for e in containers(deployment)[0]["env"]}
    assert env["FAREBOX_DATABASE_URL"]["value"].startswith("sqlite+aiosqlite:////var/lib/farebox")
    assert "FAREBOX_REDIS_URL" not in env
    assert deployment["spec"]["replicas"] == 1


def leaf_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the values a user sets; maps of user-chosen keys are one value."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in OPAQUE:
            yield from leaf_paths(value, path + ".")
        else:
            yield path


# Values whose keys are the user's (env names, labels, resource specs): documented whole.
OPAQUE = {
    "secrets.providerKeys",
    "env",
    "resources",
    "podSecurityContext",
    "securityContext",
    "autoscaling.behavior",
    "migrations.resources",
    "dashboard.labels",
    "probes.startup",
    "probes.liveness",
    "probes.readiness",
    "secrets.databaseUrl",
    "secrets.redisUrl",
    "secrets.masterKey",
}


def test_the_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaf_paths(values) if p not in documented]
    assert missing == [], f"values without a README row: {missing}"
    unknown = [p for p in documented if p not in set(leaf_paths(values))]
    assert unknown == [], f"README rows for values that do not exist: {unknown}"


def test_the_values_schema_refuses_secret_values() -> None:
    """values.schema.json: a credential can only be a Secret reference, never a value."""
    refused = [
        {"env": {"FAREBOX_DATABASE_URL": "postgresql+asyncpg://u:p@db/farebox"}},
        {"env": {"OPENAI_API_KEY": "sk-live"}},
        {"secrets": {"masterKey": {"value": "hunter2"}}},
        {"secrets": {"providerKeys": {"OPENAI_API_KEY": "sk-live"}}},
        {"secrets": {"openaiKey": {"name": "x", "key": "y"}}},
    ]
    for values in refused:
        with pytest.raises(helm.HelmValuesError):
            render(values)
    assert render({"env": {"FAREBOX_LOG_LEVEL": "debug"}})
