"""The deployment manifests in cluster/ agree with KubeRay's required fields, each other and the code.

Checked without Ray or Kubernetes: every manifest parses and starts with the command that uses it; the
RayCluster, RayJob and RayService cluster specs carry what KubeRay needs (rayVersion = the installed Ray, head
rayStartParams and containers, named worker groups with replicas in [minReplicas, maxReplicas]), images tagged
with that Ray, requests == limits, a GPU group asking for nvidia.com/gpu, Serve's HAProxy ingress switched on
before the nodes start, the shared volume on every pod; the RayService's serveConfigV2 is
serve_configs/fraud.yaml plus the documented adaptations; the RayJob entrypoint names a job in jobs/ whose
overrides `rayml.pipeline.load_job` accepts; the PodMonitors select labels and port names the Ray pods carry;
the `ray up` YAML validates against Ray's own ray-schema.json and pins the same Ray; the Dockerfile's base
image is that Ray.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from rayml import pipeline
from rayml.serve import ServeConfig
from tests.conftest import REPO

K8S = REPO / "cluster" / "k8s"
VM_CONFIG = REPO / "cluster" / "vm" / "ray-cluster.yaml"
DOCKERFILE = REPO / "cluster" / "docker" / "Dockerfile"
MANIFESTS = sorted(K8S.glob("*.yaml")) + [VM_CONFIG]

MOUNT = "/mnt/rayml"  # the shared volume: run directories, data, registry
SERVE_ADAPTED = {"host": "0.0.0.0", "registry": f"{MOUNT}/registry"}  # documented in rayservice.yaml
GPU = "nvidia.com/gpu"
RAY_VERSION_PATTERNS = (  # every way a file names a Ray version
    r"rayproject/ray:(\d+\.\d+\.\d+)",
    r"\bray(?:\[[\w,]*\])?==(\d+\.\d+\.\d+)",
    r"__version__ == '(\d+\.\d+\.\d+)'",
    r"-ray(\d+\.\d+\.\d+)",
)


@functools.cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def one(kind: str) -> dict[str, Any]:
    """The single object of ``kind`` among the Kubernetes manifests."""
    found = [doc for path in sorted(K8S.glob("*.yaml")) for doc in documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {K8S}, found {len(found)}"
    return found[0]


def cluster_specs() -> dict[str, dict[str, Any]]:
    """Every RayCluster spec KubeRay would create, by the name of the object holding it."""
    return {
        "RayCluster": one("RayCluster")["spec"],
        "RayJob": one("RayJob")["spec"]["rayClusterSpec"],
        "RayService": one("RayService")["spec"]["rayClusterConfig"],
    }


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(node type, group name, pod template) for the head and each worker group, as KubeRay names them."""
    yield "head", "headgroup", spec["headGroupSpec"]["template"]
    for group in spec["workerGroupSpecs"]:
        yield "worker", group["groupName"], group["template"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for _, _, template in pod_templates(spec):
        yield from template["spec"]["containers"]


def kuberay_pod_labels(owner: str, node_type: str, group: str, template: dict[str, Any]) -> dict[str, str]:
    """The labels of a Ray pod: its template's plus those KubeRay adds. KubeRay generates the cluster names of
    RayJobs and RayServices, so the name here is a stand-in that no selector may rely on."""
    cluster = "rayml" if owner == "RayCluster" else f"{owner.lower()}-generated-x7k2q"
    return {**template.get("metadata", {}).get("labels", {}), "ray.io/cluster": cluster,
            "ray.io/node-type": node_type, "ray.io/group": group, "ray.io/is-ray-node": "yes"}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"Exists": key in labels, "DoesNotExist": key not in labels,
              "In": labels.get(key) in values, "NotIn": labels.get(key) not in values}[op]
        if not ok:
            return False
    return True


def port_names(template: dict[str, Any]) -> set[str]:
    ports = [port for c in template["spec"]["containers"] for port in c.get("ports", [])]
    return {port["name"] for port in ports if "name" in port}


def ray_versions_named(text: str) -> set[str]:
    return {version for pattern in RAY_VERSION_PATTERNS for version in re.findall(pattern, text)}


def commands(entrypoint: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, parentheses)."""
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    result, current = [], []
    for token in lexer:
        if token in {"&&", "||", ";", "(", ")", "|"}:
            if current:
                result.append(current)
            current = []
        else:
            current.append(token)
    return result + ([current] if current else [])


# --- every manifest -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS + [DOCKERFILE], ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_parses_and_starts_with_its_command(path: Path) -> None:
    if path != DOCKERFILE:
        assert documents(path), f"{path} holds no YAML document"
    lines = path.read_text().splitlines()
    head = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert head, f"{path} must start with a comment giving the exact command"
    relative = str(path.relative_to(REPO))
    expected = {"Dockerfile": f"docker build -f {relative}", "ray-cluster.yaml": f"ray up -y {relative}"}
    assert expected.get(path.name, f"kubectl apply -f {relative}") in head


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_objects_have_api_version_kind_and_name(path: Path) -> None:
    for doc in documents(path):
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: an object without apiVersion/kind"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]
        if doc["kind"] in {"RayCluster", "RayJob", "RayService"}:
            assert doc["apiVersion"] == "ray.io/v1"


def test_installed_ray_is_the_pinned_one() -> None:
    pin = re.search(r'"ray\[[\w,]+\]==([\d.*]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml no longer pins ray"
    assert re.fullmatch(pin.group(1).replace(".", r"\.").replace("*", r"\d+"), ray.__version__)


# --- KubeRay cluster specs ------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob", "RayService"])
def test_cluster_spec_has_what_kuberay_requires(owner: str) -> None:
    spec = cluster_specs()[owner]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert all(isinstance(value, str) for value in params.values()), "rayStartParams values must be strings"
    assert params["dashboard-host"] == "0.0.0.0", "the operator reaches the dashboard via the head service"
    assert params["metrics-export-port"] == "8080"
    assert "num-cpus" in params
    assert head["template"]["spec"]["containers"], "the head pod needs its Ray container"
    groups = spec["workerGroupSpecs"]
    names = [group["groupName"] for group in groups]
    assert len(set(names)) == len(names) and all(names)
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert group["rayStartParams"].get("metrics-export-port") == "8080", group["groupName"]
        assert group["template"]["spec"]["containers"], group["groupName"]


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob", "RayService"])
def test_images_are_tagged_with_the_installed_ray(owner: str) -> None:
    for container in containers(cluster_specs()[owner]):
        image = container["image"]
        assert ":" in image, f"{image}: pin a tag"
        assert ray_versions_named(image.rsplit(":", 1)[1]) == {ray.__version__}, image


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob", "RayService"])
def test_resources_requests_equal_limits(owner: str) -> None:
    spec = cluster_specs()[owner]
    for container in containers(spec):
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], container["name"]
        assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
    if spec.get("enableInTreeAutoscaling"):
        autoscaler = spec["autoscalerOptions"]["resources"]
        assert autoscaler["requests"] == autoscaler["limits"]


@pytest.mark.parametrize("owner", ["RayCluster", "RayService"])
def test_gpu_group_requests_gpus_and_uses_the_gpu_image(owner: str) -> None:
    spec = cluster_specs()[owner]
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(GPU in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert len(gpu_groups) == 1
    group = gpu_groups[0]
    assert group["minReplicas"] == 0, "GPU nodes only when asked for"
    for container in group["template"]["spec"]["containers"]:
        assert int(container["resources"]["limits"][GPU]) >= 1
        assert container["image"].endswith("-gpu"), "the GPU image carries onnxruntime-gpu"
    for container in containers(spec):
        if GPU not in container["resources"]["limits"]:
            assert not container["image"].endswith("-gpu"), container["name"]


@pytest.mark.parametrize("owner", ["RayCluster", "RayService"])
def test_serve_haproxy_ingress_is_on_before_the_nodes_start(owner: str) -> None:
    for container in containers(cluster_specs()[owner]):  # proxies run on every node: every container
        env = {var["name"]: var.get("value") for var in container.get("env", [])}
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", container["name"]


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob", "RayService"])
def test_every_pod_mounts_the_shared_read_write_many_volume(owner: str) -> None:
    claims = {doc["metadata"]["name"]: doc for doc in documents(K8S / "raycluster.yaml")
              if doc["kind"] == "PersistentVolumeClaim"}
    for _, group, template in pod_templates(cluster_specs()[owner]):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert MOUNT in mounts, f"{group}/{container['name']} does not mount {MOUNT}"
            claim = volumes[mounts[MOUNT]]["persistentVolumeClaim"]["claimName"]
            assert claim in claims, f"{group}: claim {claim!r} is not defined in raycluster.yaml"
            assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_ports_are_named_within_kubernetes_limits() -> None:
    for owner, spec in cluster_specs().items():
        for container in containers(spec):
            names = [port["name"] for port in container.get("ports", [])]
            assert len(set(names)) == len(names), f"{owner}/{container['name']}: duplicate port names"
            assert all(len(name) <= 15 for name in names), names
        head = spec["headGroupSpec"]["template"]
        assert {"gcs-server", "dashboard", "client", "metrics"} <= port_names(head), owner


# --- RayService -----------------------------------------------------------------------------------


def test_rayservice_serve_config_is_the_shipped_one_adapted() -> None:
    served = yaml.safe_load(one("RayService")["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((REPO / "serve_configs" / "fraud.yaml").read_text())
    assert served["http_options"]["host"] == SERVE_ADAPTED["host"]
    shipped["http_options"]["host"] = SERVE_ADAPTED["host"]
    for app in served["applications"]:
        assert app["args"]["registry"] == SERVE_ADAPTED["registry"]
    for app in shipped["applications"]:
        app["args"]["registry"] = SERVE_ADAPTED["registry"]
    assert served == shipped, "serveConfigV2 differs from serve_configs/fraud.yaml beyond the adaptations"


def test_rayservice_serve_config_passes_serve_and_rayml_validation() -> None:
    from ray.serve.schema import ServeDeploySchema

    served = yaml.safe_load(one("RayService")["spec"]["serveConfigV2"])
    assert ServeDeploySchema.model_validate(served).applications
    for app in served["applications"]:
        ServeConfig(**app["args"])
    ports = port_names(cluster_specs()["RayService"]["headGroupSpec"]["template"])
    assert "serve" in ports, "KubeRay's serve service targets the head container port named 'serve'"
    head = cluster_specs()["RayService"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == served["http_options"]["port"]


def test_rayservice_runs_on_the_raycluster_spec() -> None:
    assert cluster_specs()["RayService"] == cluster_specs()["RayCluster"]


# --- RayJob ---------------------------------------------------------------------------------------


def test_rayjob_lifecycle_fields() -> None:
    spec = one("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0


def test_rayjob_entrypoint_runs_a_shipped_job_on_generated_data() -> None:
    steps = commands(one("RayJob")["spec"]["entrypoint"])
    workdir = re.search(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert workdir and steps[0] == ["cd", workdir.group(1)], "run from the image's copy of the repository"
    runs = [step for step in steps if step[:2] == ["rayml", "run"]]
    assert len(runs) == 1, f"expected one `rayml run` in {steps}"
    job_file, overrides = runs[0][2], runs[0][3:]
    assert job_file.startswith("jobs/") and (REPO / job_file).is_file(), job_file
    job = pipeline.load_job(REPO / job_file, overrides)  # the same key=value overrides as the CLI
    assert job.run.root.startswith(MOUNT + "/") and job.registry.root.startswith(MOUNT + "/")
    assert job.run.name, "a fixed run.name lets a retried RayJob resume"
    assert job.registry.root == SERVE_ADAPTED["registry"], "the RayService serves what the RayJob registers"
    generates = [step for step in steps if step[:2] == ["rayml", "generate"]]
    assert len(generates) == 1
    out = generates[0][generates[0].index("--out") + 1]
    assert job.source.path == out, "the job reads the data the entrypoint generates"


# --- Prometheus operator --------------------------------------------------------------------------


@pytest.mark.parametrize("node_type", ["head", "worker"])
def test_pod_monitors_select_ray_pods_and_their_port_names(node_type: str) -> None:
    monitors = [doc for doc in documents(K8S / "monitoring.yaml") if doc["kind"] == "PodMonitor"
                and selects(doc["spec"]["selector"], {"ray.io/node-type": node_type,
                                                      "app.kubernetes.io/part-of": "rayml",
                                                      "ray.io/cluster": "x"})]
    assert len(monitors) == 1, f"expected one PodMonitor for {node_type} pods"
    monitor = monitors[0]
    endpoints = [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]]
    assert "metrics" in endpoints
    for owner, spec in cluster_specs().items():
        selected = [(group, template) for kind, group, template in pod_templates(spec)
                    if selects(monitor["spec"]["selector"], kuberay_pod_labels(owner, kind, group, template))]
        expected = [group for kind, group, _ in pod_templates(spec) if kind == node_type]
        assert [group for group, _ in selected] == expected, f"{monitor['metadata']['name']} on {owner}"
        for group, template in selected:
            assert "metrics" in port_names(template), f"{owner}/{group} has no port named 'metrics'"
            metrics = next(p for c in template["spec"]["containers"] for p in c.get("ports", [])
                           if p.get("name") == "metrics")
            params = (spec["headGroupSpec"] if node_type == "head" else next(
                g for g in spec["workerGroupSpecs"] if g["groupName"] == group))["rayStartParams"]
            assert str(metrics["containerPort"]) == params["metrics-export-port"]
    named_somewhere = set().union(*(port_names(template) for spec in cluster_specs().values()
                                    for kind, _, template in pod_templates(spec) if kind == node_type))
    assert set(endpoints) <= named_somewhere, f"endpoints name ports no {node_type} pod has"


def test_service_monitor_scrapes_the_kuberay_operator() -> None:
    monitors = [doc for doc in documents(K8S / "monitoring.yaml") if doc["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    spec = monitors[0]["spec"]
    # The labels and port name of the Service the KubeRay operator's Helm chart creates.
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert [endpoint["port"] for endpoint in spec["endpoints"]] == ["http"]
    for doc in documents(K8S / "monitoring.yaml"):
        assert doc["metadata"]["labels"]["release"], "kube-prometheus-stack selects monitors by release label"


# --- `ray up` and the image -----------------------------------------------------------------------


def test_ray_up_config_validates_against_rays_schema() -> None:
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = documents(VM_CONFIG)[0]
    jsonschema.validate(config, schema)
    # What Ray's validate_config checks beyond the schema.
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    for name, node_type in types.items():
        assert node_type.get("min_workers", 0) <= node_type.get("max_workers", config["max_workers"]), name


def test_ray_up_config_fails_the_schema_when_broken() -> None:
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = json.loads(json.dumps(documents(VM_CONFIG)[0]))
    config["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5  # resources must be integers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_ray_up_config_pins_the_installed_ray_and_starts_ray_for_rayml() -> None:
    config = documents(VM_CONFIG)[0]
    assert ray_versions_named(VM_CONFIG.read_text()) == {ray.__version__}
    types = config["available_node_types"]
    setups = {"head/cpu": config["setup_commands"] + config.get("head_setup_commands", [])}
    setups |= {name: t["worker_setup_commands"] for name, t in types.items() if "worker_setup_commands" in t}
    for name, lines in setups.items():
        text = " ".join(lines)
        assert f"ray[data,train,serve,tune]=={ray.__version__}" in text, name
        assert re.search(r"/home/ray/rayml\[(cpu|gpu)\]", text), f"{name} does not install rayml"
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker type"
    for name in gpu_types:
        assert "rayml[gpu]" in " ".join(types[name]["worker_setup_commands"]), name
        assert types[name]["docker"]["worker_image"].endswith("-gpu"), name
    assert "rayml[cpu]" in " ".join(config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(line for line in config[key] if "ray start" in line)
        assert "RAY_SERVE_ENABLE_HA_PROXY=1 ray start" in start, key
        assert "--metrics-export-port=8080" in start, key


def test_dockerfile_builds_on_the_installed_ray_with_one_onnxruntime_extra() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and base.group(1) == f"rayproject/ray:{ray.__version__}-py311"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)
    assert ray_versions_named(text) == {ray.__version__}
    extra = re.search(r"^ARG EXTRA=(\w+)$", text, re.MULTILINE)
    assert extra and extra.group(1) == "cpu"
    pyproject = (REPO / "pyproject.toml").read_text()
    extras = re.search(r"^\[project\.optional-dependencies\]\n(.*?)\n\n", pyproject, re.MULTILINE | re.DOTALL)
    assert extras and re.search(r"^cpu = ", extras.group(1), re.MULTILINE)
    assert re.search(r"^gpu = ", extras.group(1), re.MULTILINE)
    assert '".[${EXTRA}]"' in text
