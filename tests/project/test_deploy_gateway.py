"""The Helm chart's gateway and Grafana dashboard (issue 22), rendered as
tests/project/test_deploy.py renders the chart (its fixtures: Helm from .venv/tools, the default
and production values)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from banditd.config import Settings
from tests.project import test_deploy as deploy
from tests.project.test_deploy import Doc, _env, _one


@pytest.fixture(scope="module", params=sorted(deploy.VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    helm = deploy._find_helm() or deploy._missing("helm not found: run .ci/install-helm")
    yaml = deploy._module("yaml", "PyYAML")
    values = deploy.VALUE_SETS[request.param]
    out = subprocess.run(
        [helm, "template", "banditd", str(deploy.CHART), "--namespace", "bandit", *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return request.param, [d for d in yaml.safe_load_all(out) if d]


def test_gateway_is_its_own_deployment_and_service(rendered: tuple[str, list[Doc]]) -> None:
    value_set, docs = rendered
    if value_set == "default":  # off unless asked for
        assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"] == ["banditd"]
        return
    deployment = _one(docs, "Deployment", "banditd-gateway")
    assert deployment["spec"]["replicas"] == 3  # scaled apart from the servers' HPA
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["args"][0] == "gateway"
    env = _env(gateway)
    port = next(p["containerPort"] for p in gateway["ports"] if p["name"] == "http")
    assert env["BANDITD_GATEWAY_LISTEN"]["value"] == f"0.0.0.0:{port}"
    assert env["BANDITD_GATEWAY_TARGET"]["value"] == "banditd.bandit.svc:50051"
    # Upstream keys are Secret references, never values.
    assert "value" not in env["OPENAI_API_KEY"]
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "llm-keys",
        "key": "openai",
    }
    # The gateway reads no ConfigMap: its settings are its own values, defaults as banditd's.
    assert env["BANDITD_GATEWAY_MAX_ANSWER_BYTES"]["value"] == str(
        Settings.model_fields["gateway_max_answer_bytes"].default
    )
    # Only the variables of upstreamKeys may be sent to an arm's upstream.
    assert env["BANDITD_GATEWAY_UPSTREAM_KEY_ENVS"]["value"] == "OPENAI_API_KEY"
    # TLS to banditd: the gateway trusts the CA of the servers' certificate.
    assert "--tls-ca=/etc/banditd/tls-ca/ca.crt" in gateway["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    # Each Service selects only its own pods.
    labels = pod["metadata"] if "metadata" in pod else deployment["spec"]["template"]["metadata"]
    gateway_labels = labels["labels"]
    server_labels = _one(docs, "Deployment", "banditd")["spec"]["template"]["metadata"]["labels"]
    for name, own, other in (
        ("banditd-gateway", gateway_labels, server_labels),
        ("banditd", server_labels, gateway_labels),
    ):
        selector = _one(docs, "Service", name)["spec"]["selector"]
        assert selector.items() <= own.items() and not selector.items() <= other.items(), name
    monitor = _one(docs, "ServiceMonitor", "banditd-gateway")["spec"]
    assert monitor["endpoints"][0]["port"] == "http"
    assert monitor["selector"]["matchLabels"].items() <= gateway_labels.items()


def test_gateway_max_answer_bytes_is_a_value() -> None:
    helm = deploy._find_helm() or deploy._missing("helm not found: run .ci/install-helm")
    yaml = deploy._module("yaml", "PyYAML")
    on = ["template", "x", str(deploy.CHART), "--set", "gateway.enabled=true"]
    out = subprocess.run(
        [helm, *on, "--set", "gateway.maxAnswerBytes=1048576"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (gateway,) = _one(docs, "Deployment", "x-banditd-gateway")["spec"]["template"]["spec"][
        "containers"
    ]
    assert _env(gateway)["BANDITD_GATEWAY_MAX_ANSWER_BYTES"]["value"] == "1048576"
    refused = subprocess.run(
        [helm, *on, "--set", "gateway.maxAnswerBytes=0"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "values don't meet the specifications of the schema" in refused.stderr


def test_grafana_dashboard_is_a_labelled_config_map(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    config_map = _one(docs, "ConfigMap", "banditd-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["banditd.json"])
    assert dashboard["uid"] == "banditd"
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Select rate",
        "Select latency (server side)",
        "Arm shares per router",
        "Reward rate per arm",
        "Spend against budget",
        "Feedback lag",
        "Breaker states",
        "Gateway upstream errors",
        "Gateway fallbacks",
    ):
        assert wanted in titles


PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "label_values",
}  # fmt: skip


def _exported_metrics() -> set[str]:
    """Every sample name banditd's and the gateway's Prometheus registries export."""
    from prometheus_client import REGISTRY

    import banditd.metrics  # noqa: F401 - registers banditd's metrics
    from banditd.gateway import metrics as gateway_metrics

    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count"),
    }
    names = set()
    for registry in (REGISTRY, gateway_metrics.REGISTRY):
        for family in registry.collect():
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_every_dashboard_query_names_an_exported_metric(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    dashboard = json.loads(_one(docs, "ConfigMap", "banditd-dashboard")["data"]["banditd.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    exported = _exported_metrics()
    assert "banditd_gateway_fallbacks_total" in exported  # the gateway's registry is read
    unknown = []
    for expr in exprs:
        bare = re.sub(r"label_values\((.*),\s*\w+\)", r"\1", expr)  # Grafana: (metric, label)
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", bare)  # strings: label values
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)  # label matchers, ranges
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
        names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)) - PROMQL_WORDS
        names = {n for n in names if not re.fullmatch(r"e\d*", n)}  # exponents (1e3)
        assert names, f"no metric in {expr!r}"
        unknown += [f"{n} in {expr!r}" for n in sorted(names - exported)]
    assert not unknown, "\n".join(unknown)
