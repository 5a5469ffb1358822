"""deploy/: the manifests use real flags, environment variables, ports and probes of the services."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.cli.up import CONFIGS, config_class
from tandem.serving.options import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENTRYPOINT_NAMES = {"vision": "vision", "llm": "llm", "gateway": "gateway"}


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = _documents()


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def _container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _environment(container: Mapping[str, Any]) -> dict[str, str]:
    """The variables a container gets from ConfigMaps (envFrom and configMapKeyRef) and literals."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_find("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = _find("ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def test_every_manifest_parses_and_is_labelled() -> None:
    kinds = sorted({d["kind"] for d in DOCS})
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "StatefulSet"]
    for doc in DOCS:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "tandem", doc["metadata"]["name"]


@pytest.mark.parametrize("service", ["vision", "llm", "gateway"])
def test_deployment_args_and_env_are_the_services_own(service: str) -> None:
    deployment = _find("Deployment", f"tandem-{service}")
    container = _container(deployment)
    args = [str(a) for a in container["args"]]
    assert args[0] == ENTRYPOINT_NAMES[service]
    env = _environment(container)
    config_cls = config_class(service)
    declared = {f.metadata["env"] for f in config_cls.__dataclass_fields__.values() if f.metadata.get("env")}
    assert set(env) <= declared, f"{service} does not read {set(env) - declared}"
    config = parse_config(config_cls, args[1:], service, env=env)  # exits on an unknown flag or bad value
    assert config.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == config.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port, probe
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.grace_seconds
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    if service != "gateway":
        assert config.model.startswith("/models/")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True


@pytest.mark.parametrize(("service", "headless"), [("vision", True), ("llm", True), ("gateway", False)])
def test_services_select_their_pods_and_ports(service: str, headless: bool) -> None:
    svc = _find("Service", f"tandem-{service}")
    deployment = _find("Deployment", f"tandem-{service}")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (svc["spec"].get("clusterIP") == "None") is headless
    named = {p["name"] for p in _container(deployment)["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= named


def test_gateway_points_at_the_worker_services() -> None:
    container = _container(_find("Deployment", "tandem-gateway"))
    config = parse_config(config_class("gateway"), [str(a) for a in container["args"][1:]], "gw", env={})
    for addresses in (config.llm_addresses, config.vision_addresses):
        assert addresses
        for address in addresses:
            host, port = address.rsplit(":", 1)
            svc = _find("Service", host)
            assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


def test_redis_url_points_at_the_redis_statefulset() -> None:
    url = _find("ConfigMap", "tandem-config")["data"]["REDIS_URL"]
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url)
    assert match is not None
    svc = _find("Service", match.group(1))
    assert int(match.group(2)) in {p["port"] for p in svc["spec"]["ports"]}
    stateful = _find("StatefulSet", match.group(1))
    assert stateful["spec"]["serviceName"] == match.group(1)


def test_entrypoint_runs_each_service_module() -> None:
    script = (DEPLOY / "entrypoint.sh").read_text()
    for name, (module, _, _) in CONFIGS.items():
        assert f"{ENTRYPOINT_NAMES[name]}) exec python -m {module} " in script
        assert (ROOT / module / "__main__.py").exists()


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for package in ("protos", "tandem", "vision_service", "llm_service", "gateway"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'ENTRYPOINT ["tandem-entrypoint"]' in dockerfile
    assert "COPY deploy/entrypoint.sh /usr/local/bin/tandem-entrypoint" in dockerfile
