"""deploy/k8s: every kustomize target renders, validates offline and meets the restricted level.

Validation uses kubernetes-validate's bundled OpenAPI schemas (``--strict``: unknown fields are
errors) for a current and an older Kubernetes version; CRD kinds it has no schema for
(ServiceMonitor) are checked here by their references instead. The production network
policies are evaluated with Kubernetes' semantics to prove who can reach whom.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.k8s_manifests import (
    OVERLAYS,
    TARGETS,
    Doc,
    Manifests,
    all_containers,
    only_container,
    pod_labels,
    render,
    selects,
)

# The newest Kubernetes the pinned kubernetes-validate has schemas for, and an older release
# still run by managed offerings; every field used must exist in both.
KUBERNETES_VERSIONS = ("1.37", "1.30")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
NAMESPACE = "tandem"
TANDEM_IMAGE = "tandem:"
# Writable directories of each image under a read-only root file system.
WRITABLE = {"tandem": {"/tmp", "/home/tandem"}, "redis": {"/data"}}
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("target", TARGETS)
def test_renders_labelled_and_namespaced(target: str) -> None:
    manifests = render(target)
    assert manifests.docs
    for doc in manifests.docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "tandem", name
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, name
    namespace = manifests.find("Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_validates_strictly(target: str, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for doc in render(target).docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert (doc["apiVersion"], doc["kind"]) in CRD_KINDS, f"no schema for {doc['kind']}"
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(
                f"{target} {doc['kind']}/{doc['metadata']['name']} on {version}: {path}: {exc.message}"
            )


def test_strict_validation_rejects_an_unknown_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    deployment = copy.deepcopy(render("demo").find("Deployment", "tandem-gateway"))
    only_container(deployment)  # one container, as below
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """What keeps ``pod`` from the "restricted" Pod Security Standard (plus a read-only root)."""
    context = pod.get("securityContext", {})
    problems = [f"{k} is set" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    if context.get("runAsUser", 1) == 0:
        problems.append("runAsUser is 0")
    problems += [
        f"volume {v['name']} is not of an allowed type"
        for v in pod.get("volumes", [])
        if not set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES
    ]
    for container in all_containers(pod):
        own = container.get("securityContext", {})
        name = container["name"]
        if not own.get("runAsNonRoot", context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if own.get("runAsUser", context.get("runAsUser")) in (None, 0):
            problems.append(f"{name}: no non-zero runAsUser")
        seccomp = own.get("seccompProfile", context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if own.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = own.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if own.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root file system is writable")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_meets_the_restricted_level(target: str) -> None:
    manifests = render(target)
    assert manifests.workloads()
    for name, pod in manifests.pod_specs():
        assert restricted_violations(pod) == [], name


def test_the_restricted_check_sees_a_violation() -> None:
    pod = copy.deepcopy(render("demo").find("Deployment", "tandem-vision")["spec"]["template"]["spec"])
    pod["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    assert restricted_violations(pod) == [
        "vision: capabilities do not drop ALL",
        "vision: adds capabilities",
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_writable_directories_are_volumes(target: str) -> None:
    for name, pod in render(target).pod_specs():
        assert pod["enableServiceLinks"] is False, f"{name}: service links shadow TANDEM_*_PORT"
        assert pod["automountServiceAccountToken"] is False, name
        for container in all_containers(pod):
            image = (
                "tandem" if container["image"].startswith(TANDEM_IMAGE) else container["image"].split(":")[0]
            )
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert WRITABLE[image] <= mounts, f"{name}/{container['name']} lacks {WRITABLE[image] - mounts}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_contents(overlay: str) -> None:
    """demo runs on any cluster (no CRD, no storage class); production adds the policies."""
    manifests = render(overlay)
    kinds = {d["kind"] for d in manifests.docs}
    extras = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"}
    assert (extras <= kinds) if overlay == "production" else not (extras & kinds)
    claims = [w for w in manifests.workloads() if w["spec"].get("volumeClaimTemplates")]
    assert not kinds & {"PersistentVolumeClaim"}
    assert (claims == []) is (overlay == "demo")


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod's labels in a namespace (NetworkPolicy peers)."""

    labels: Mapping[str, str]
    namespace: str = NAMESPACE
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, peer: Mapping[str, Any]) -> bool:
        if "ipBlock" in peer:
            return False  # pod and in-cluster addresses are private; the blocks exclude them
        if "namespaceSelector" in peer:
            ns_labels = {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}
            if not selects(peer["namespaceSelector"], ns_labels):
                return False
        elif self.namespace != NAMESPACE:
            return False
        return selects(peer.get("podSelector", {}), self.labels)


def _admits(rules: list[Doc], peers_key: str, peer: Peer, port: int, protocol: str) -> bool:
    for rule in rules:
        peers = rule.get(peers_key, [])
        ports = rule.get("ports", [])
        peer_ok = not peers or any(peer.matches(p) for p in peers)
        port_ok = not ports or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def reachable(manifests: Manifests, source: Peer, dest: Peer, port: int, protocol: str = "TCP") -> bool:
    """Whether the namespace's NetworkPolicies let ``source`` open ``dest``:``port``."""
    for side, direction, rules_key, peers_key, other in (
        (source, "Egress", "egress", "to", dest),
        (dest, "Ingress", "ingress", "from", source),
    ):
        if side.namespace != NAMESPACE:
            continue
        policies = [
            p
            for p in manifests.kinds("NetworkPolicy")
            if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], side.labels)
        ]
        rules = [r for p in policies for r in p["spec"].get(rules_key, [])]
        if policies and not _admits(rules, peers_key, other, port, protocol):
            return False
    return True


def test_network_policies_let_only_the_services_through() -> None:
    manifests = render("production")
    workloads = {w["metadata"]["name"].removeprefix("tandem-"): w for w in manifests.workloads()}
    pods = {name: Peer(pod_labels(w)) for name, w in workloads.items()}
    assert set(pods) == {"gateway", "vision", "llm", "redis-state", "redis-cache"}
    allowed = {
        ("gateway", "vision", 50053),
        ("gateway", "llm", 50052),
        ("gateway", "redis-state", 6379),
        ("gateway", "redis-cache", 6379),
        ("vision", "redis-cache", 6379),
        ("llm", "redis-cache", 6379),
    }
    for dest_name, dest in pods.items():
        ports = {p["containerPort"] for p in only_container(workloads[dest_name])["ports"]}
        for source_name, source in pods.items():
            for port in ports:
                expected = (source_name, dest_name, port) in allowed
                assert reachable(manifests, source, dest, port) is expected, (source_name, dest_name, port)
    dns = Peer({"k8s-app": "kube-dns"}, namespace="kube-system")
    client = Peer({"app": "ingress"}, namespace="ingress")
    prometheus = Peer({"app": "prometheus"}, namespace="monitoring")
    for name, pod in pods.items():
        assert reachable(manifests, pod, dns, 53, "UDP") and reachable(manifests, pod, dns, 53, "TCP"), name
        assert reachable(manifests, client, pod, 50051) is (name == "gateway")
        assert reachable(manifests, prometheus, pod, 9090) is (name in ("vision", "llm"))


def test_autoscalers_and_disruption_budgets_cover_the_services() -> None:
    manifests = render("production")
    scaled = {}
    for hpa in manifests.kinds("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = manifests.find(ref["kind"], ref["name"])
        assert hpa["spec"]["minReplicas"] >= 2
        scaled[ref["name"]] = target
    assert set(scaled) == {"tandem-gateway", "tandem-vision", "tandem-llm"}
    budgeted = set()
    for pdb in manifests.kinds("PodDisruptionBudget"):
        (workload,) = manifests.selected(pdb["spec"]["selector"])
        assert pdb["spec"]["maxUnavailable"] == 1
        budgeted.add(workload["metadata"]["name"])
    assert budgeted == set(scaled)


def test_service_monitors_scrape_every_service_metrics_port() -> None:
    manifests = render("production")
    scraped = set()
    for monitor in manifests.kinds("ServiceMonitor"):
        services = [
            s
            for s in manifests.kinds("Service")
            if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert services, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            for svc in services:
                (port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
                container = only_container(manifests.service_workload(svc["metadata"]["name"]))
                assert port["targetPort"] in {p["name"] for p in container["ports"]}
                assert port["port"] == (8000 if svc["metadata"]["name"] == "tandem-gateway" else 9090)
                scraped.add(svc["metadata"]["name"])
    assert scraped == {"tandem-gateway", "tandem-vision", "tandem-llm"}
