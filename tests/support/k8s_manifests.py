"""deploy/k8s as a cluster receives it: each overlay rendered by ``kubectl kustomize``, parsed.

``render`` skips the calling test (with the reason) when ``kubectl`` is not installed. The
helpers resolve what a container would see: its environment from ConfigMaps and Secrets, its
pod spec, the workloads a Service or selector picks.
"""

from __future__ import annotations

import base64
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("demo", "gpu", "production")
TARGETS = ("base", *OVERLAYS)
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

Doc = dict[str, Any]


def target_path(target: str) -> Path:
    return K8S / target if target == "base" else K8S / "overlays" / target


@functools.cache
def _render(target: str) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the deploy/k8s overlays cannot be rendered (kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(target_path(target))], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@dataclass(frozen=True)
class Manifests:
    """The rendered documents of one kustomize target."""

    target: str
    docs: tuple[Doc, ...]

    def kinds(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def find(self, kind: str, name: str) -> Doc:
        found = [d for d in self.kinds(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.target}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def generated(self, kind: str, name: str) -> Doc:
        """A ConfigMap or Secret from a kustomize generator (``name-<hash>``)."""
        pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
        found = [d for d in self.kinds(kind) if pattern.fullmatch(d["metadata"]["name"])]
        assert len(found) == 1, f"{self.target}: expected one generated {kind} {name}"
        return found[0]

    def workloads(self) -> list[Doc]:
        return [d for d in self.docs if d["kind"] in WORKLOAD_KINDS]

    def pod_specs(self) -> Iterator[tuple[str, Doc]]:
        for workload in self.workloads():
            yield workload["metadata"]["name"], workload["spec"]["template"]["spec"]

    def selected(self, selector: Mapping[str, Any]) -> list[Doc]:
        """The workloads whose pods a label selector picks."""
        return [w for w in self.workloads() if selects(selector, pod_labels(w))]

    def service_workload(self, name: str) -> Doc:
        """The one workload behind Service ``name``."""
        svc = self.find("Service", name)
        (workload,) = self.selected({"matchLabels": svc["spec"]["selector"]})
        return workload

    def config_value(self, kind: str, name: str, key: str) -> str | None:
        """A ConfigMap or Secret value; None when the object is not rendered (made out of band)."""
        found = [d for d in self.kinds(kind) if d["metadata"]["name"] == name]
        if not found:
            return None
        if kind == "Secret":
            data = found[0].get("data", {})
            return base64.b64decode(data[key]).decode() if key in data else found[0]["stringData"][key]
        return str(found[0]["data"][key])

    def environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        """The variables ``container`` gets; a Secret made out of band reads ``<secret:name/key>``."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.find("ConfigMap", source["configMapRef"]["name"])["data"])
        for item in container.get("env", []):
            env[item["name"]] = self._value(item)
        return env

    def _value(self, item: Mapping[str, Any]) -> str:
        if "value" in item:
            return str(item["value"])
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = self.config_value("ConfigMap", ref["name"], ref["key"])
            assert value is not None, f"{self.target}: ConfigMap {ref['name']} is not rendered"
            return value
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = self.config_value("Secret", ref["name"], ref["key"])
            return f"<secret:{ref['name']}/{ref['key']}>" if value is None else value
        return "1"  # resourceFieldRef / fieldRef: known only in the cluster


def render(target: str) -> Manifests:
    return Manifests(target, _render(target))


def pod_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and In/NotIn/Exists/DoesNotExist)."""
    if selector.get("matchLabels", {}).items() - labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def only_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return dict(containers[0])


def all_containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
