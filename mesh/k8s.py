"""The Kubernetes base manifests, generated from the topology so ports and services never drift:
``python -m mesh k8s`` writes ``mesh/deploy/k8s/base/`` (committed; a test checks it is what this
module generates). The ``dev`` and ``prod`` overlays beside it are written by hand.

Per service: a Deployment (gRPC health probes, resources, non-root read-only container,
Prometheus annotations, drain before stop), a headless Service (Envoy resolves every pod), a
PodDisruptionBudget, a HorizontalPodAutoscaler and a NetworkPolicy. Around them: a 3-node NATS
JetStream StatefulSet (streams and buckets at 3 replicas), Envoy (Deployment + LoadBalancer
Service, its config baked into the edge image, the JWKS from the Secret ``livebet-jwks``), the
shared ConfigMap, and a default-deny NetworkPolicy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mesh.topology import ServiceSpec, Topology

OUT_DIR = Path(__file__).with_name("deploy") / "k8s" / "base"
IMAGE = "ghcr.io/livebet/livebet"
EDGE_IMAGE = "ghcr.io/livebet/livebet-edge"
NATS_IMAGE = "nats:2.15-alpine"
PART_OF = {"app.kubernetes.io/part-of": "livebet"}

#: what each service may reach besides NATS (every service uses NATS)
NEEDS = {"postgres": 5432, "redis": 6379}
RESOURCES = {
    "feed": ({"cpu": "250m", "memory": "256Mi"}, {"cpu": "1", "memory": "512Mi"}),
    "pricing": ({"cpu": "500m", "memory": "512Mi"}, {"cpu": "2", "memory": "1Gi"}),
    "odds": ({"cpu": "500m", "memory": "256Mi"}, {"cpu": "2", "memory": "1Gi"}),
    "betting": ({"cpu": "500m", "memory": "256Mi"}, {"cpu": "2", "memory": "512Mi"}),
    "settlement": ({"cpu": "250m", "memory": "256Mi"}, {"cpu": "1", "memory": "1Gi"}),
}


def _labels(name: str, component: str = "service") -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, **PART_OF}


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def _grpc_probe(port: int, period: int, failures: int) -> dict[str, Any]:
    return {"grpc": {"port": port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2}


def service_objects(s: ServiceSpec) -> list[dict[str, Any]]:
    grpc_port, metrics_port = s.grpc_ports[0], s.metrics_ports[0]
    requests, limits = RESOURCES.get(s.name, ({"cpu": "250m", "memory": "256Mi"}, {"cpu": "1", "memory": "512Mi"}))
    env: list[dict[str, Any]] = [
        {"name": "LIVEBET_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LIVEBET_GRPC_PORT", "value": str(grpc_port)},
        {"name": "LIVEBET_METRICS_PORT", "value": str(metrics_port)},
    ]
    if "postgres" in s.depends:
        env.append(
            {"name": "LIVEBET_POSTGRES_DSN", "valueFrom": {"secretKeyRef": {"name": "livebet-postgres", "key": "dsn"}}}
        )
    container = {
        "name": s.name,
        "image": IMAGE,
        "args": [s.module],  # the image's entrypoint is `python -m`
        "ports": [
            {"name": "grpc", "containerPort": grpc_port},
            {"name": "metrics", "containerPort": metrics_port},
        ],
        "envFrom": [{"configMapRef": {"name": "livebet-config"}}],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "startupProbe": _grpc_probe(grpc_port, 2, 60),  # migrations and replays may take a while
        "readinessProbe": _grpc_probe(grpc_port, 2, 1),
        "livenessProbe": _grpc_probe(grpc_port, 10, 3),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": s.name, "labels": _labels(s.name)},
        "spec": {
            "replicas": max(2, s.replicas),
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(s.name)},
            # a new pod must be ready before an old one goes: no capacity lost while rolling
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": _labels(s.name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(metrics_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": _selector(s.name)},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": s.name, "labels": _labels(s.name)},
        "spec": {
            "clusterIP": "None",  # headless: Envoy's STRICT_DNS sees every ready pod
            "selector": _selector(s.name),
            "ports": [
                {"name": "grpc", "port": grpc_port, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": metrics_port, "targetPort": "metrics"},
            ],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": s.name, "labels": _labels(s.name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(s.name)}},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": s.name, "labels": _labels(s.name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
            "minReplicas": max(2, s.replicas),
            "maxReplicas": 8 if s.name != "pricing" else 16,  # pricing: at most one replica a share
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }
    egress: list[dict[str, Any]] = [
        {"to": [{"podSelector": {"matchLabels": _selector("nats")}}], "ports": [{"port": 4222, "protocol": "TCP"}]},
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},  # DNS
    ]
    for dep in s.depends:
        if dep in NEEDS:
            egress.append(
                {
                    "to": [{"podSelector": {"matchLabels": _selector(dep)}}],
                    "ports": [{"port": NEEDS[dep], "protocol": "TCP"}],
                }
            )
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": s.name, "labels": _labels(s.name)},
        "spec": {
            "podSelector": {"matchLabels": _selector(s.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                # gRPC only from the edge: the identity headers services trust are Envoy's alone
                {
                    "from": [{"podSelector": {"matchLabels": _selector("envoy")}}],
                    "ports": [{"port": grpc_port, "protocol": "TCP"}],
                },
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                    "ports": [{"port": metrics_port, "protocol": "TCP"}],
                },
            ],
            "egress": egress,
        },
    }
    return [deployment, service, pdb, hpa, policy]


def nats_objects() -> list[dict[str, Any]]:
    routes = ",".join(f"nats://nats-{i}.nats:6222" for i in range(3))
    conf = (
        "port: 4222\nhttp_port: 8222\nserver_name: $POD_NAME\n"
        "jetstream { store_dir: /data/jetstream, max_file_store: 20G }\n"
        f"cluster {{ name: livebet, port: 6222, routes: [{routes}] }}\n"
        "lame_duck_duration: 20s\n"
    )
    labels = _labels("nats", "messaging")
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "nats", "labels": labels},
        "spec": {
            "serviceName": "nats",
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _selector("nats")},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"prometheus.io/scrape": "false"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "containers": [
                        {
                            "name": "nats",
                            "image": NATS_IMAGE,
                            "args": ["-c", "/etc/nats/nats.conf"],
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [
                                {"name": "client", "containerPort": 4222},
                                {"name": "cluster", "containerPort": 6222},
                                {"name": "monitor", "containerPort": 8222},
                            ],
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "1Gi"},
                                "limits": {"cpu": "2", "memory": "2Gi"},
                            },
                            "startupProbe": {
                                "httpGet": {"path": "/healthz", "port": 8222},
                                "periodSeconds": 2,
                                "failureThreshold": 90,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz?js-enabled-only=true", "port": 8222},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz?js-enabled-only=true", "port": 8222},
                                "periodSeconds": 30,
                                "failureThreshold": 3,
                            },
                            "lifecycle": {"preStop": {"exec": {"command": ["nats-server", "-sl=ldm=/tmp/nats.pid"]}}},
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/nats"},
                                {"name": "data", "mountPath": "/data"},
                            ],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "nats-config"}}],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "nats", "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # the cluster routes must find each other while starting
            "selector": _selector("nats"),
            "ports": [
                {"name": "client", "port": 4222},
                {"name": "cluster", "port": 6222},
                {"name": "monitor", "port": 8222},
            ],
        },
    }
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nats-config"}, "data": {"nats.conf": conf}}
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "nats", "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector("nats")}},  # JetStream keeps quorum
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "nats", "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": _selector("nats")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": PART_OF}}],
                    "ports": [{"port": 4222, "protocol": "TCP"}, {"port": 6222, "protocol": "TCP"}],
                },
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                    "ports": [{"port": 8222, "protocol": "TCP"}],
                },
            ],
        },
    }
    return [config, sts, service, pdb, policy]


def envoy_objects(t: Topology) -> list[dict[str, Any]]:
    labels = _labels("envoy", "edge")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "envoy", "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": _selector("envoy")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "envoy",
                            "image": EDGE_IMAGE,
                            "ports": [{"name": "http", "containerPort": t.edge_port}],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "128Mi"},
                                "limits": {"cpu": "2", "memory": "512Mi"},
                            },
                            "readinessProbe": {"tcpSocket": {"port": t.edge_port}, "periodSeconds": 2},
                            "livenessProbe": {"tcpSocket": {"port": t.edge_port}, "periodSeconds": 10},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "jwks", "mountPath": "/etc/livebet/jwks", "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "jwks", "secret": {"secretName": "livebet-jwks"}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "envoy", "labels": labels},
        "spec": {
            "type": "LoadBalancer",
            "selector": _selector("envoy"),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "kubernetes.io/h2c"}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "envoy", "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector("envoy")}},
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "envoy", "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": _selector("envoy")},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": t.edge_port, "protocol": "TCP"}]}],  # the public entrance
        },
    }
    return [deployment, service, pdb, policy]


def common_objects() -> list[dict[str, Any]]:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "livebet-config", "labels": PART_OF},
        "data": {
            "LIVEBET_GRPC_HOST": "0.0.0.0",
            "LIVEBET_METRICS_HOST": "0.0.0.0",
            "LIVEBET_NATS_URL": "nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222",
            "LIVEBET_REDIS_URL": "redis://redis:6379/0",
            "LIVEBET_JETSTREAM_REPLICAS": "3",
            "LIVEBET_GRACE_SECONDS": "15",
            "LIVEBET_DRAIN_SECONDS": "5",  # endpoints and Envoy's DNS refresh see a stopping pod go
            "LIVEBET_LOG_LEVEL": "INFO",
        },
    }
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny-ingress", "labels": PART_OF},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    return [config, deny]


def render(t: Topology) -> dict[str, str]:
    """File name → YAML text of the base."""
    head = "# Generated by `python -m mesh k8s` from mesh/topology.toml (mesh/k8s.py); do not edit.\n"
    files: dict[str, list[dict[str, Any]]] = {"common.yaml": common_objects(), "nats.yaml": nats_objects()}
    files["envoy.yaml"] = envoy_objects(t)
    for s in t.services:
        files[f"{s.name}.yaml"] = service_objects(s)
    out = {name: head + yaml.safe_dump_all(docs, sort_keys=False) for name, docs in files.items()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": PART_OF, "includeSelectors": False}],
        "resources": sorted(files),
    }
    out["kustomization.yaml"] = head + yaml.safe_dump(kustomization, sort_keys=False)
    return out
