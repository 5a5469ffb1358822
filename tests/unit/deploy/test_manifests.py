"""deploy/: the image and every rendered overlay use the services' real flags, variables and ports.

Each worker and gateway container of each overlay is parsed with the service's own config
class (an unknown flag or variable, or a bad value, fails), and its ports, probes, model and
Redis wiring are checked against what the service will actually do.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from typing import Any

import pytest
from packaging.requirements import Requirement

from gateway.discovery import DnsName
from tandem.cli.up import CONFIGS, config_class
from tandem.serving.options import parse_config
from tandem.serving.readiness import LIVENESS
from tests.support.k8s_manifests import DEPLOY, OVERLAYS, ROOT, Manifests, only_container, render

SERVICES = ("vision", "llm", "gateway")
WORKERS = ("vision", "llm")
BUNDLED_MODEL = "/opt/tandem/default-model"
METRICS_PORT = 9090


def _declared_env(service: str) -> set[str]:
    fields = config_class(service).__dataclass_fields__.values()
    return {f.metadata["env"] for f in fields if f.metadata.get("env")}


def _own_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables in Tandem's namespace (the rest, e.g. HF_* and OMP_*, are for libraries)."""
    return {k: v for k, v in env.items() if k.startswith("TANDEM_") or k == "REDIS_URL"}


def _parsed(manifests: Manifests, service: str) -> tuple[dict[str, Any], Any]:
    container = only_container(manifests.find("Deployment", f"tandem-{service}"))
    env = _own_variables(manifests.environment(container))
    undeclared = set(env) - _declared_env(service)
    assert not undeclared, f"{manifests.target}: {service} does not read {undeclared}"
    args = [str(a) for a in container["args"]]
    assert args[0] == service
    return container, parse_config(config_class(service), args[1:], service, env=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_args_env_ports_and_probes_are_the_services_own(overlay: str, service: str) -> None:
    manifests = render(overlay)
    deployment = manifests.find("Deployment", f"tandem-{service}")
    container, config = _parsed(manifests, service)  # exits on an unknown flag or a bad value
    assert config.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == config.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port, probe
    if service == "gateway":  # NOT_SERVING while a dependency is down must not restart it
        assert container["livenessProbe"]["grpc"]["service"] == LIVENESS
    if service == "gateway":
        assert ports["http"] == config.http_port
    else:
        assert ports["metrics"] == config.metrics_port == METRICS_PORT
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.grace_seconds
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_ports_are_the_documented_ones() -> None:
    """gateway gRPC 50051 / HTTP 8000, language 50052, vision 50053: the services' defaults."""
    manifests = render("demo")
    expected = {"gateway": 50051, "llm": 50052, "vision": 50053}
    for service, port in expected.items():
        _, config = _parsed(manifests, service)
        argv = [] if service == "gateway" else ["--model", "m"]
        assert config.port == port == parse_config(config_class(service), argv, service, env={}).port
    _, gateway = _parsed(manifests, "gateway")
    assert gateway.http_port == 8000


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", WORKERS)
def test_workers_get_their_model_and_device(overlay: str, service: str) -> None:
    manifests = render(overlay)
    deployment = manifests.find("Deployment", f"tandem-{service}")
    container, config = _parsed(manifests, service)
    pod = deployment["spec"]["template"]["spec"]
    assert config.device == ("cuda" if overlay == "gpu" else "cpu")
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") is (overlay == "gpu")
    if overlay == "demo":
        assert config.model == BUNDLED_MODEL
        assert "initContainers" not in pod
        assert all(v.get("emptyDir") is not None for v in pod["volumes"])
        return
    _check_fetched_weights(manifests, pod, container, config.model)


def _check_fetched_weights(
    manifests: Manifests, pod: Mapping[str, Any], container: Mapping[str, Any], model: str
) -> None:
    """A hub id, fetched by the init container into the volume the worker reads offline."""
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", model), model
    (init,) = pod["initContainers"]
    assert init["args"] == ["fetch-model"] and init["image"] == container["image"]
    init_env, env = manifests.environment(init), manifests.environment(container)
    assert init_env["TANDEM_MODEL"] == env["TANDEM_MODEL"] == model
    assert init_env["HF_HUB_CACHE"] == env["HF_HUB_CACHE"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    init_mount = next(m for m in init["volumeMounts"] if env["HF_HUB_CACHE"].startswith(m["mountPath"]))
    main_mount = next(m for m in container["volumeMounts"] if m["name"] == init_mount["name"])
    assert not init_mount.get("readOnly") and main_mount["readOnly"] is True
    assert "emptyDir" in volumes[init_mount["name"]] or "persistentVolumeClaim" in volumes[init_mount["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_points_at_the_worker_services(overlay: str) -> None:
    manifests = render(overlay)
    _, config = _parsed(manifests, "gateway")
    for component, addresses in (("llm", config.llm_addresses), ("vision", config.vision_addresses)):
        assert addresses
        for address in addresses:
            name = DnsName.parse(address)
            host, port = (name.host, str(name.port)) if name else address.rsplit(":", 1)
            if name is not None:  # the gateway resolves it to the pods: only a headless Service gives them
                assert manifests.find("Service", host)["spec"].get("clusterIP") == "None"
            workload = manifests.service_workload(host)
            assert workload["metadata"]["name"] == f"tandem-{component}"
            _, worker = _parsed(manifests, component)
            svc_ports = {p["port"]: p["targetPort"] for p in manifests.find("Service", host)["spec"]["ports"]}
            assert svc_ports[int(port)] == "grpc" and int(port) == worker.port


def _redis_args(manifests: Manifests, url: str) -> list[str]:
    """The redis-server flags of the workload behind a ``redis://host:port/db`` URL."""
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url)
    assert match is not None, url
    host, port = match.groups()
    assert int(port) in {p["port"] for p in manifests.find("Service", host)["spec"]["ports"]}
    return [str(a) for a in only_container(manifests.service_workload(host))["args"]]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sessions_use_the_persistent_redis_and_embeddings_the_bounded_one(overlay: str) -> None:
    manifests = render(overlay)
    _, gateway = _parsed(manifests, "gateway")
    state = _redis_args(manifests, gateway.state_url)
    assert _flag(state, "--maxmemory-policy") == "noeviction"
    assert _flag(state, "--appendonly") == "yes"
    cache_urls = {_parsed(manifests, worker)[1].redis_url for worker in WORKERS} | {gateway.redis_url}
    assert len(cache_urls) == 1, "vision writes the embeddings and images the others read"
    cache = _redis_args(manifests, cache_urls.pop())
    assert _flag(cache, "--maxmemory-policy") == "allkeys-lru"
    assert _flag(cache, "--appendonly") == "no" and _flag(cache, "--save") == ""
    assert re.fullmatch(r"\d+[mg]b", _flag(cache, "--maxmemory"))
    prefixes = {_parsed(manifests, s)[1].cache_prefix for s in SERVICES}
    assert len(prefixes) == 1


def _unhashed(name: str) -> str:
    """A generated Secret's name without the content hash kustomize appends (demo overlay)."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keys_and_internal_token_come_from_secrets(overlay: str) -> None:
    """Tenants' keys are a mounted Secret; the internal token opens the workers and nothing else."""
    manifests = render(overlay)
    gateway_pod = manifests.find("Deployment", "tandem-gateway")["spec"]["template"]["spec"]
    gateway = only_container(manifests.find("Deployment", "tandem-gateway"))
    env = {e["name"]: e for e in gateway["env"]}
    keys_dir = env["TANDEM_API_KEYS_FILE"]["value"]
    mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == keys_dir)
    volume = next(v for v in gateway_pod["volumes"] if v["name"] == mount["name"])
    assert _unhashed(volume["secret"]["secretName"]) == "tandem-api-keys" and mount["readOnly"]
    assert "TANDEM_AUTH_TOKEN" not in env and "TANDEM_DOWNSTREAM_AUTH_TOKEN" not in env
    for container in [gateway] + [
        only_container(manifests.find("Deployment", f"tandem-{w}")) for w in WORKERS
    ]:
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        internal = refs["TANDEM_INTERNAL_TOKEN"]
        assert (_unhashed(internal["name"]), internal["key"]) == ("tandem-internal", "token")
        assert "TANDEM_AUTH_TOKEN" not in refs
    secrets = {_unhashed(s["metadata"]["name"]): s for s in manifests.kinds("Secret")}
    if overlay == "demo":
        assert set(secrets) == {"tandem-api-keys", "tandem-internal"}
        assert set(secrets["tandem-api-keys"]["data"]) == {"demo"}
        assert set(secrets["tandem-internal"]["data"]) == {"token"}
    else:
        assert not secrets, "production secrets are created out of band, never committed"


def test_entrypoint_runs_each_service_module_and_fetches_weights() -> None:
    script = (DEPLOY / "entrypoint.sh").read_text()
    for name, (module, _, _) in CONFIGS.items():
        assert f"{name}) exec python -m {module} " in script
        assert (ROOT / module / "__main__.py").exists()
    assert "fetch-model)" in script and "from tandem.models.checkpoint import resolve" in script


def test_dockerfile_builds_a_wheel_and_installs_it_with_the_constraints() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 2
    assert "AS builder" in dockerfile and "pip wheel --no-deps" in dockerfile
    for package in ("protos", "tandem", "vision_service", "llm_service", "gateway"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "COPY deploy/constraints.txt " in dockerfile and "--constraint " in dockerfile
    assert 'ENTRYPOINT ["tandem-entrypoint"]' in dockerfile
    assert "COPY deploy/entrypoint.sh /usr/local/bin/tandem-entrypoint" in dockerfile
    for label in ("title", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in dockerfile
    for variable in ("HOME=/home/tandem", "HF_HOME=/home/tandem/", "XDG_CACHE_HOME=/home/tandem/"):
        assert variable in dockerfile
    assert f"TANDEM_MODEL={BUNDLED_MODEL}" in dockerfile and f" {BUNDLED_MODEL}" in dockerfile


def test_image_user_is_the_manifests_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert f"useradd --uid {user.group(1)} --gid {user.group(2)} --home-dir /home/tandem" in dockerfile
    manifests = render("production")
    for name, pod in manifests.pod_specs():
        if any(c["image"].startswith("tandem:") for c in pod["containers"]):
            context = pod["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == tuple(map(int, user.groups())), name


def _constraints_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_constraints", DEPLOY / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constraints_pin_every_runtime_dependency() -> None:
    """Every package Tandem needs at run time (transitively) has an exact version that fits."""
    pinned: dict[str, str] = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name] = version
    needed = _constraints_module().runtime_requirements()
    missing = sorted(set(needed) - set(pinned))
    assert not missing, f"regenerate deploy/constraints.txt (deploy/constraints.py); missing {missing}"
    for name, requirements in needed.items():
        for requirement in requirements:
            assert Requirement(str(requirement)).specifier.contains(pinned[name], prereleases=True), (
                f"{name}=={pinned[name]} does not satisfy {requirement}"
            )
