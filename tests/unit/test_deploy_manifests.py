"""deploy/: the Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate,
strict: unknown fields refused), the Strimzi resources equal to a fresh render of the
catalog, the compose file through the real `docker-compose config`, and the image's
Dockerfile (stages, user, health check, what it copies builds a wheel with the entry point).

No cluster and no Docker engine needed. Strimzi custom resources are not in the Kubernetes
schemas: they are checked here structurally (and their content in test_strimzi.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bus.strimzi import render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ROLES = ("ingress", "processors", "adapters", "dashboard")
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests target


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return out


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def test_every_kubernetes_resource_is_valid_for_the_schema() -> None:
    checked = []
    for path, doc in manifests():
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {exc}")
        checked.append(doc["kind"])
    for kind in (
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ):
        assert kind in checked, f"no {kind} in deploy/k8s"


def test_the_validator_does_refuse_a_broken_manifest() -> None:
    deployment = dict(by_kind("Deployment")["carebus-ingress"])
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    files = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == files


def test_committed_strimzi_resources_are_a_fresh_render() -> None:
    fresh = render()
    committed = {p.name: p.read_text() for p in (K8S / "strimzi").glob("*.yaml")}
    assert set(committed) == set(fresh)
    for name, text in fresh.items():
        assert committed[name] == text, (
            f"deploy/k8s/strimzi/{name} is stale: run "
            "`carebus topics render --strimzi --out deploy/k8s/strimzi`"
        )


def test_strimzi_resources_belong_to_the_cluster() -> None:
    (cluster,) = by_kind("Kafka").values()
    strimzi = [d for _, d in manifests() if d["apiVersion"] == "kafka.strimzi.io/v1beta2"]
    assert {d["kind"] for d in strimzi} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    (pool,) = by_kind("KafkaNodePool").values()
    assert pool["spec"]["replicas"] >= 3
    for d in strimzi:
        if d["kind"] != "Kafka":
            assert d["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
    for topic in by_kind("KafkaTopic").values():
        spec = topic["spec"]
        assert spec["partitions"] >= 1
        assert (
            1 < spec["config"]["min.insync.replicas"] < spec["replicas"] <= pool["spec"]["replicas"]
        )
    listener_auth = {
        listener["authentication"]["type"] for listener in cluster["spec"]["kafka"]["listeners"]
    }
    for user in by_kind("KafkaUser").values():
        assert user["spec"]["authentication"]["type"] in listener_auth


def _pod(role: str) -> dict:
    return by_kind("Deployment")[f"carebus-{role}"]["spec"]["template"]["spec"]


def test_one_deployment_per_role_hardened_with_probes_and_requests() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {f"carebus-{r}" for r in ROLES}
    for role in ROLES:
        pod = _pod(role)
        (c,) = pod["containers"]
        assert c["args"] == ["run", role]
        assert c["livenessProbe"] and c["readinessProbe"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (ingress,) = _pod("ingress")["containers"]
    assert ingress["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ingress["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_references_resolve() -> None:
    """Every Secret / ConfigMap a pod uses exists (Strimzi makes the Kafka ones), every
    Service and PodDisruptionBudget selects the pods of a Deployment."""
    secrets = set(by_kind("Secret")) | {f"{u}" for u in by_kind("KafkaUser")}
    (cluster,) = by_kind("Kafka")
    secrets.add(f"{cluster}-cluster-ca-cert")  # the cluster CA Strimzi publishes
    configmaps = set(by_kind("ConfigMap"))
    pods = {r: by_kind("Deployment")[f"carebus-{r}"]["spec"]["template"] for r in ROLES}
    for role, template in pods.items():
        for v in template["spec"]["volumes"]:
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, (role, v)
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, (role, v)
        (c,) = template["spec"]["containers"]
        for src in c["envFrom"]:
            ref = src.get("secretRef") or src.get("configMapRef")
            assert ref["name"] in (secrets | configmaps)

    def selected(selector: dict) -> set[str]:
        return {r for r, t in pods.items() if selector.items() <= t["metadata"]["labels"].items()}

    services = by_kind("Service")
    assert selected(services["carebus-ingress"]["spec"]["selector"]) == {"ingress"}
    assert selected(services["carebus-dashboard"]["spec"]["selector"]) == {"dashboard"}
    ports = {p["name"]: p["port"] for p in services["carebus-ingress"]["spec"]["ports"]}
    assert ports == {"http": 8080, "mllp": 2575}
    (ingress,) = pods["ingress"]["spec"]["containers"]
    assert {p["name"] for p in ingress["ports"]} == {"http", "mllp", "metrics"}
    for pdb in by_kind("PodDisruptionBudget").values():
        assert len(selected(pdb["spec"]["selector"]["matchLabels"])) == 1
    assert {
        next(iter(selected(p["spec"]["selector"]["matchLabels"])))
        for p in by_kind("PodDisruptionBudget").values()
    } == set(ROLES)
    for policy in by_kind("NetworkPolicy").values():
        sel = policy["spec"]["podSelector"].get("matchLabels")
        assert sel is None or len(selected(sel)) in (1, len(ROLES))


def test_prometheus_can_reach_every_pods_metrics_port() -> None:
    """The ConfigMap binds /metrics on 0.0.0.0:9464; default-deny would hide it."""
    (config,) = by_kind("ConfigMap").values()
    port = int(config["data"]["CAREBUS_OBSERVABILITY__METRICS_PORT"])
    for deployment in by_kind("Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
    open_to = [
        p["spec"]
        for p in by_kind("NetworkPolicy").values()
        if any(
            port in [q["port"] for q in rule.get("ports", [])]
            for rule in p["spec"].get("ingress", [])
        )
    ]
    assert len(open_to) == 1
    wanted = open_to[0]["podSelector"]["matchLabels"].items()
    for deployment in by_kind("Deployment").values():
        assert wanted <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (rule,) = open_to[0]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_no_real_secret_is_committed() -> None:
    for secret in by_kind("Secret").values():
        for key, value in secret.get("stringData", {}).items():
            assert "REPLACE-ME" in value, f"{secret['metadata']['name']}.{key}"
        assert "data" not in secret


# --- docker compose --------------------------------------------------------------------

COMPOSE = DEPLOY / "compose.yaml"
SECRETS_ENV = {"CAREBUS_DMP_TOKEN": "t0ken-for-the-test", "DASHBOARD_PASSWORD": "pw-for-the-test"}


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        message = "docker-compose missing: scripts/ensure-system.sh docker-compose (make test)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS_ENV}
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_compose_file_is_valid_for_docker_compose() -> None:
    proc = compose_config(SECRETS_ENV)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    services = cfg["services"]
    brokers = [s for s in services if s.startswith("kafka-")]
    assert len(brokers) == 3
    for name in brokers:
        env = services[name]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert services[name]["image"].startswith("apache/kafka:")
    assert services["topics"]["command"] == ["topics", "apply"]
    for role in ROLES:
        svc = services[role]
        assert svc["command"] == ["run", role]
        env = svc["environment"]
        assert env["CAREBUS_KAFKA__BOOTSTRAP"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert env["CAREBUS_KAFKA__REPLICATION_FACTOR"] == "3"
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["adapters"]["environment"]["CAREBUS_MSSANTE__HOST"] == "mailpit"
    assert services["adapters"]["environment"]["CAREBUS_DMP__BASE_URL"] == "http://docstore:8090"
    assert services["mailpit"]["environment"]["MP_SMTP_REQUIRE_STARTTLS"] == "true"
    assert services["docstore"]["entrypoint"] == ["python", "-m", "adapters.dmp.serve"]
    published = {
        int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
        for s in services.values()
        for p in s.get("ports", [])
    }
    assert {8080, 2575} <= published and 9092 not in published  # Kafka stays private


def test_compose_refuses_to_start_without_its_secrets() -> None:
    proc = compose_config({})
    assert proc.returncode != 0
    assert "CAREBUS_DMP_TOKEN" in proc.stderr


def test_compose_settings_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from bus.settings import Settings

    monkeypatch.setenv("CAREBUS_CONFIG", str(DEPLOY / "compose" / "carebus.toml"))
    s = Settings()
    assert s.http.clients and s.mllp.senders and s.routing.territories


def test_k8s_settings_file_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bus.settings import Settings

    cm = by_kind("ConfigMap")["carebus-config"]["data"]
    (tmp_path / "carebus.toml").write_text(cm["carebus.toml"])
    monkeypatch.setenv("CAREBUS_CONFIG", str(tmp_path / "carebus.toml"))
    for key, value in cm.items():
        if key.startswith("CAREBUS_") and key != "CAREBUS_CONFIG":
            monkeypatch.setenv(key, value)
    s = Settings()
    assert s.kafka.security_protocol == "SSL"
    assert s.kafka.ssl_certfile == Path("/etc/carebus/kafka-user/user.crt")
    assert s.kafka.replication_factor == 3 and s.kafka.min_insync_replicas == 2
    assert s.mllp.senders and s.routing.territories


# --- the image ---------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def stages() -> list[list[str]]:
    lines, out = [], []
    for raw in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append(lines := [])
        if out:
            lines.append(line)
    return out


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    builder, final = stages()
    assert builder[0].endswith(" AS builder")
    assert any("pip wheel" in line for line in builder)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    text = "\n".join(final)
    assert "build-essential" not in text and "gcc" not in text  # no compiler in the image
    (user,) = [line for line in final if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    (health,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert '"bus.probe"' in health
    assert final[-1].startswith("CMD") and any(
        line.startswith("ENTRYPOINT") and "carebus" in line for line in final
    )


def _copied() -> tuple[str, list[str]]:
    builder = stages()[0]
    (workdir,) = [line.split()[1] for line in builder if line.startswith("WORKDIR")]
    sources = []
    for line in builder:
        if line.startswith("COPY "):
            sources.extend(line.split()[1:-1])
    return workdir, sources


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    _, sources = _copied()
    assert set(sources) <= allowed
    assert "*" in ignore  # everything else (.venv, .git, tests, data) stays out


@pytest.mark.slow
def test_the_builder_stage_makes_a_wheel_with_the_entry_point(tmp_path: Path) -> None:
    """What the builder stage does, on the same files, in a directory of the same name."""
    workdir, sources = _copied()
    ctx = tmp_path / workdir.strip("/")
    ctx.mkdir(parents=True)
    for src in sources:
        s = ROOT / src
        if s.is_dir():
            shutil.copytree(s, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(s, ctx / src)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "w"), "."],
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "w").glob("carebus-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "carebus = bus.cli:app" in zf.read(ep).decode()
    for module in ("bus/cli.py", "bus/probe.py", "adapters/dmp/serve.py", "processors/app.py"):
        assert module in names
