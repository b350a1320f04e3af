"""The Kubernetes manifests (k8s/) and the container image (Dockerfile), checked offline.

KubeRay cannot run here, so the promises are checked against schemas instead: the RayCluster
and RayJob manifests against KubeRay's CRD schemas (../shared/k8s-schemas) plus a field-name
check (the CRDs allow unknown fields, so a typo would pass silently), core kinds and every
embedded pod template against Kubernetes' own strict schemas (kubernetes-validate), the
kustomize base as `kubectl kustomize` renders it, and every RayJob entrypoint against
raysisa's own CLI parser. Each check is also shown to reject a broken manifest.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "k8s-schemas"
CRD_SCHEMA_FILES = {"RayCluster": "raycluster-ray.io-v1.json.gz", "RayJob": "rayjob-ray.io-v1.json.gz"}
KUBERNETES_VERSION = "1.32.0"  # kubectl's here; the oldest kubernetes-validate knows is 1.25
CONFIG_MOUNT = "/etc/raysisa"  # where the ConfigMap raysisa-configs is mounted
S3_SECRET = "raysisa-s3"
CONFIG_MAP = "raysisa-configs"
IMAGE = "raysisa:0.1.0"
RAY_JOB_PURPOSES = {"train", "unlearn", "sweep", "coordinator"}


# --- reading ---------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifest_files() -> list[Path]:
    """The Kubernetes objects of k8s/ (not the kustomization itself, not the config files)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _one(path: Path) -> dict[str, Any]:
    (doc,) = _documents(path)
    return doc


def _ray_jobs() -> dict[str, dict[str, Any]]:
    return {path.name: _one(path) for path in sorted(K8S.glob("ray-job.*.yaml"))}


def _ray_pin() -> str:
    """The Ray version pyproject.toml pins (``ray[...]==X``): image, rayVersion and client must agree."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [dep for dep in deps if re.match(r"ray(\[|==)", dep)]
    return pin.split("==", 1)[1]


def _crd_schema(kind: str) -> dict[str, Any]:
    path = SCHEMAS / CRD_SCHEMA_FILES[kind]
    if not path.exists():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMAS} (../shared/k8s-schemas beside the checkout)")
    with gzip.open(path, "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The base as `kubectl apply -k k8s/` would send it."""
    return _kustomize(K8S)


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: cannot render the kustomize base")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


# --- what a manifest holds -------------------------------------------------------------------


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The RayCluster spec of a RayCluster, or the one a RayJob creates (None: it selects one)."""
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")


def _ray_pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, group spec, pod template) of every Ray node group."""
    spec = _cluster_spec(doc)
    if spec is None:
        return
    yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group, group["template"]


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template a Ray manifest holds: Ray nodes and the job submitter."""
    for where, _, template in _ray_pod_templates(doc):
        yield where, template
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]


def _secured_containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container a Ray manifest makes run, the autoscaler KubeRay adds included."""
    for where, template in _pod_templates(doc):
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            yield f"{where} container {container['name']}", container
    spec = _cluster_spec(doc)
    if spec is not None and spec.get("enableInTreeAutoscaling"):
        yield "autoscaler", spec.get("autoscalerOptions", {})


# --- the checks (each returns what is wrong, so tests can show it catches breakage) -----------


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Field names the schema does not declare. Maps (``additionalProperties``) are checked
    through their values; objects the schema leaves open (no properties, or
    ``x-kubernetes-preserve-unknown-fields``) are not descended into."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [bad for i, item in enumerate(value) for bad in _unknown_fields(item, schema["items"], f"{path}[{i}]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    properties = schema.get("properties")
    if properties is None:
        values = schema.get("additionalProperties")
        if not isinstance(values, dict):
            return []
        return [bad for key, item in value.items() for bad in _unknown_fields(item, values, f"{path}.{key}")]
    found = []
    for key, item in value.items():
        if key in properties:
            found += _unknown_fields(item, properties[key], f"{path}.{key}")
        else:
            found.append(f"{path}.{key}: unknown field")
    return found


def crd_problems(doc: dict[str, Any]) -> list[str]:
    """What KubeRay's CRD schema rejects in ``doc``, and the field names it does not know."""
    schema = _crd_schema(doc["kind"])
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc)
    ]
    return errors + _unknown_fields(doc, schema)


def pod_template_problem(template: dict[str, Any]) -> str | None:
    """What Kubernetes' strict core/v1 schema rejects in an embedded pod template."""
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    try:
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    return None


NON_ROOT_POD = {"runAsNonRoot": True, "runAsUser": 1000}
NON_ROOT_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def hardening_problems(doc: dict[str, Any]) -> list[str]:
    """Containers without CPU and memory requests and limits or without the non-root,
    unprivileged security context, and pods without a non-root one."""
    problems = []
    for where, template in _pod_templates(doc):
        pod = template["spec"].get("securityContext", {})
        problems += [f"{where}: pod securityContext.{k} is not {v!r}" for k, v in NON_ROOT_POD.items() if pod.get(k) != v]
        if pod.get("seccompProfile") != {"type": "RuntimeDefault"}:
            problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for where, container in _secured_containers(doc):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound, {}))
            if missing:
                problems.append(f"{where}: no {bound} for {', '.join(sorted(missing))}")
        context = container.get("securityContext", {})
        problems += [f"{where}: securityContext.{k} is not {v!r}" for k, v in NON_ROOT_CONTAINER.items() if context.get(k) != v]
    return problems


def ray_node_problems(doc: dict[str, Any]) -> list[str]:
    """The Ray containers' shared setup: the image, Ray's version, token auth, no usage stats,
    S3 credentials from the Secret, the configs mounted, the metrics port named for Prometheus."""
    spec = _cluster_spec(doc)
    if spec is None:
        return []
    problems = []
    if spec.get("rayVersion") != _ray_pin():
        problems.append(f"rayVersion {spec.get('rayVersion')!r} is not the pinned Ray {_ray_pin()}")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append("authOptions.mode is not token")
    for where, group, template in _ray_pod_templates(doc):
        ray = template["spec"]["containers"][0]  # KubeRay's Ray container is the first
        env = {e["name"]: e.get("value") for e in ray.get("env", [])}
        ports = {p.get("name"): p["containerPort"] for p in ray.get("ports", [])}
        mounts = {m["mountPath"]: m["name"] for m in ray.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        if ray.get("image") != IMAGE:
            problems.append(f"{where}: image {ray.get('image')!r} is not {IMAGE}")
        if env.get("RAY_USAGE_STATS_ENABLED") != "0":
            problems.append(f"{where}: RAY_USAGE_STATS_ENABLED is not '0'")
        if {"secretRef": {"name": S3_SECRET}} not in ray.get("envFrom", []):
            problems.append(f"{where}: no envFrom of the Secret {S3_SECRET}")
        if ports.get("metrics") != 8080 or group["rayStartParams"].get("metrics-export-port") != "8080":
            problems.append(f"{where}: metrics are not exported on the container port named metrics (8080)")
        volume = volumes.get(mounts.get(CONFIG_MOUNT, ""), {})
        if volume.get("configMap", {}).get("name") != CONFIG_MAP:
            problems.append(f"{where}: the ConfigMap {CONFIG_MAP} is not mounted at {CONFIG_MOUNT}")
        limits, requests = ray.get("resources", {}).get("limits"), ray.get("resources", {}).get("requests")
        if limits != requests:
            problems.append(f"{where}: Ray container requests {requests} differ from limits {limits}")
    return problems


# Flags whose value names where a run, a sweep or data lives: never a local path in a job.
LOCATION_FLAGS = ("store", "storage", "data_dir")
# Flags (and the sweep's positional study) whose value is a file the job reads: from the ConfigMap.
FILE_FLAGS = ("config", "ids_file", "exclude_ids_file", "study")


def entrypoint_problems(entrypoint: str) -> list[str]:
    """An entrypoint that is not `python -m raysisa ...` as raysisa's own CLI parses it, that
    puts a store, sweep or data anywhere but s3://, or that reads a file not in the ConfigMap."""
    from raysisa.cli import build_parser

    argv = shlex.split(entrypoint)
    if argv[:3] != ["python", "-m", "raysisa"]:
        return [f"{entrypoint!r} does not start with `python -m raysisa`"]
    try:
        args = build_parser().parse_args(argv[3:])
    except SystemExit:
        return [f"raysisa's CLI rejects {entrypoint!r}"]
    problems = []
    for flag in LOCATION_FLAGS:
        value = getattr(args, flag, None)
        if value is not None and not value.startswith("s3://"):
            problems.append(f"{flag} {value!r} is not an s3:// URI")
    for override in getattr(args, "set", None) or []:
        key, _, value = override.partition("=")
        if key in ("data.uri", "data.data_dir") and not value.startswith("s3://"):
            problems.append(f"--set {override} is not an s3:// URI")
    for flag in FILE_FLAGS:
        value = getattr(args, flag, None)
        if value is None:
            continue
        folder, _, name = value.rpartition("/")
        if folder != CONFIG_MOUNT or not (K8S / "configs" / name).is_file():
            problems.append(f"{flag} {value!r} is not a file of k8s/configs/ mounted at {CONFIG_MOUNT}")
    return problems


def dockerfile_base(text: str, build_args: dict[str, str] | None = None) -> str:
    """The image the Dockerfile builds FROM, with its ARG defaults (or ``build_args``) filled in."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ARG "):
            name, _, default = line[4:].strip().partition("=")
            values[name] = default.strip('"')
        if line.startswith("FROM "):
            values.update(build_args or {})
            return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line.split()[1])
    raise AssertionError("no FROM line")


def dockerfile_problems(text: str) -> list[str]:
    """A base image that is not Ray's official image of the pinned Ray and Python."""
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py3(?P<minor>\d+)(?P<variant>.*)", dockerfile_base(text))
    if match is None:
        return [f"FROM {dockerfile_base(text)} is not the official Ray image"]
    problems = []
    if match["ray"] != _ray_pin():
        problems.append(f"FROM has Ray {match['ray']}, pyproject.toml pins {_ray_pin()}")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    if f"3.{match['minor']}" not in SpecifierSet(requires):
        problems.append(f"FROM has Python 3.{match['minor']}, pyproject.toml requires {requires}")
    return problems


# --- files and schemas -----------------------------------------------------------------------


def test_every_yaml_in_k8s_parses_and_names_what_it_is():
    paths = sorted(K8S.rglob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        assert _documents(path), path
    for path in _manifest_files():
        for doc in _documents(path):
            assert {"apiVersion", "kind"} <= doc.keys() and doc["metadata"]["name"], path
    # KubeRay's sample naming: ray-cluster.<name>.yaml, ray-job.<name>.yaml
    for path in list(K8S.glob("ray-cluster.*.yaml")) + list(K8S.glob("ray-job.*.yaml")):
        assert path.name.split(".")[1] == _one(path)["metadata"]["name"], path


@pytest.mark.parametrize("name", [p.name for p in sorted(K8S.glob("ray-*.yaml"))])
def test_ray_manifests_validate_against_the_kuberay_crds(name):
    doc = _one(K8S / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_problems(doc) == []


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``value`` set at the dotted ``path`` (list indexes as numbers)."""
    doc = copy.deepcopy(doc)
    *parents, leaf = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    node[leaf] = value
    return doc


def test_crd_check_rejects_wrong_types_and_unknown_field_names():
    job = _one(K8S / "ray-job.raysisa-train.yaml")
    assert crd_problems(job) == []
    head = "spec.rayClusterSpec.headGroupSpec"

    wrong_type = crd_problems(_with(job, "spec.shutdownAfterJobFinishes", "yes"))
    assert wrong_type == ["spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'"]
    assert crd_problems(_with(job, "spec.shutdownAfterJobFinish", True)) == [".spec.shutdownAfterJobFinish: unknown field"]
    assert crd_problems(_with(job, f"{head}.template.spec.containers.0.imagee", IMAGE)) == [
        ".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].imagee: unknown field"
    ]
    assert crd_problems(_with(job, "spec.rayClusterSpec.authOptions.mode", "tokens")) == [
        "spec.rayClusterSpec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']"
    ]
    # rayStartParams become `ray start` flags: any name, string values
    assert crd_problems(_with(job, f"{head}.rayStartParams.object-store-memory", "1000000000")) == []
    assert crd_problems(_with(job, f"{head}.rayStartParams.metrics-export-port", 8080)) == [
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.metrics-export-port: 8080 is not of type 'string'"
    ]


def test_embedded_pod_templates_are_strictly_valid_core_pod_templates():
    for path in sorted(K8S.glob("ray-*.yaml")):
        for where, template in _pod_templates(_one(path)):
            assert pod_template_problem(template) is None, f"{path.name} {where}"
    template = copy.deepcopy(_one(K8S / "ray-cluster.raysisa.yaml")["spec"]["headGroupSpec"]["template"])
    template["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    assert "'runAsNonroot' was unexpected" in pod_template_problem(template)


def test_core_kinds_validate_strictly_against_kubernetes_schemas(rendered):
    core = [doc for doc in rendered if doc["apiVersion"] == "v1"]
    assert {doc["kind"] for doc in core} == {"Namespace", "Secret", "ConfigMap"}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (secret,) = _by_kind(rendered, "Secret")
    with pytest.raises(kubernetes_validate.ValidationError, match="'stringdata' was unexpected"):
        kubernetes_validate.validate({**secret, "stringdata": {"AWS_ACCESS_KEY_ID": "x"}}, KUBERNETES_VERSION, strict=True)


# --- the kustomize base ----------------------------------------------------------------------


def test_kustomize_base_renders_the_long_lived_resources_in_one_namespace(rendered):
    kinds = ["ConfigMap", "ConfigMap", "Namespace", "PodMonitor", "PrometheusRule", "RayCluster", "Secret"]
    assert sorted(doc["kind"] for doc in rendered) == kinds
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "raysisa", doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "raysisa"
    (namespace,) = _by_kind(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # fixed names: the RayCluster and the RayJob files refer to them
    (secret,) = _by_kind(rendered, "Secret")
    assert secret["metadata"]["name"] == S3_SECRET
    assert set(secret["data"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    config_map, dashboard = sorted(_by_kind(rendered, "ConfigMap"), key=lambda d: d["metadata"]["name"] != CONFIG_MAP)
    assert config_map["metadata"]["name"] == CONFIG_MAP
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar loads
    assert json.loads(dashboard["data"]["raysisa-dashboard.json"])["uid"] == "raysisa-unlearning"
    assert set(config_map["data"]) == {p.name for p in (K8S / "configs").iterdir()}
    (cluster,) = _by_kind(rendered, "RayCluster")
    assert {c["image"] for _, c in _secured_containers(cluster) if "image" in c} == {IMAGE}


def test_rendered_ray_cluster_is_the_checked_manifest(rendered):
    """kustomize adds the namespace and a label and sets the image: nothing that would
    escape the checks made on the file."""
    (cluster,) = _by_kind(rendered, "RayCluster")
    assert crd_problems(cluster) == []
    source = _one(K8S / "ray-cluster.raysisa.yaml")
    assert cluster["spec"] == source["spec"]


def test_the_secret_holds_placeholders_only():
    values = dict(
        line.split("=", 1) for line in (K8S / "s3.env").read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(values.values()) == {"replace-me"}


def test_an_overlay_replaces_the_credentials_and_the_image_as_the_readme_shows(tmp_path):
    """k8s/README.md, "Credentials": real keys live in an overlay outside git."""
    (tmp_path / "s3.env").write_text("AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY=example-secret\n")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S, tmp_path)],
                "secretGenerator": [{"name": S3_SECRET, "behavior": "replace", "envs": ["s3.env"]}],
                "images": [{"name": "raysisa", "newName": "registry.example.com/raysisa", "newTag": "0.1.0"}],
            }
        )
    )
    docs = _kustomize(tmp_path)
    (secret,) = _by_kind(docs, "Secret")
    assert secret["metadata"]["name"] == S3_SECRET  # still the name the pods load
    assert secret["data"]["AWS_ACCESS_KEY_ID"] == "QUtJQUVYQU1QTEU="  # base64 of AKIAEXAMPLE
    (cluster,) = _by_kind(docs, "RayCluster")
    images = {c["image"] for _, c in _secured_containers(cluster) if "image" in c}
    assert images == {"registry.example.com/raysisa:0.1.0"}


# --- hardening, autoscaling, auth, metrics ---------------------------------------------------


@pytest.mark.parametrize("name", [p.name for p in sorted(K8S.glob("ray-*.yaml"))])
def test_every_container_is_non_root_unprivileged_and_bounded(name):
    doc = _one(K8S / name)
    assert hardening_problems(doc) == []
    assert ray_node_problems(doc) == []
    if doc["kind"] == "RayJob":  # else KubeRay's default submitter runs, with no security context
        assert "submitterPodTemplate" in doc["spec"]


def test_hardening_check_catches_a_missing_limit_and_privilege_escalation():
    cluster = _one(K8S / "ray-cluster.raysisa.yaml")
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    del worker["resources"]["limits"]
    worker["securityContext"]["allowPrivilegeEscalation"] = True
    cluster["spec"]["autoscalerOptions"]["securityContext"] = {}
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrom"] = []
    problems = hardening_problems(cluster)
    assert "worker group cpu container ray-worker: no limits for cpu, memory" in problems
    assert "worker group cpu container ray-worker: securityContext.allowPrivilegeEscalation is not False" in problems
    assert "autoscaler: securityContext.runAsNonRoot is not True" in problems
    assert ray_node_problems(cluster) == [
        f"head: no envFrom of the Secret {S3_SECRET}",
        "worker group cpu: Ray container requests {'cpu': '4', 'memory': '16Gi'} differ from limits None",
    ]


def test_long_lived_cluster_autoscales_with_a_gpu_group_from_zero():
    spec = _one(K8S / "ray-cluster.raysisa.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    cpu_groups = [g for g in groups if g not in gpu_groups]
    assert len(gpu_groups) == 1 and len(cpu_groups) == 1
    assert gpu_groups[0]["minReplicas"] == 0 and gpu_groups[0]["maxReplicas"] >= 1


def test_pod_monitor_scrapes_the_metrics_port_of_every_ray_pod(rendered):
    (monitor,) = _by_kind(rendered, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"  # kube-prometheus-stack's selector
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert ports == {"metrics"}
    kuberay_labels = {"ray.io/is-ray-node": "yes"}  # KubeRay puts it on every Ray pod
    clusters = _by_kind(rendered, "RayCluster") + list(_ray_jobs().values())
    for doc in clusters:
        for where, _, template in _ray_pod_templates(doc):
            labels = {**template["metadata"]["labels"], **kuberay_labels}
            assert wanted.items() <= labels.items(), f"{doc['metadata']['name']} {where}"
            named = {p.get("name") for p in template["spec"]["containers"][0]["ports"]}
            assert ports <= named, f"{doc['metadata']['name']} {where}"


# --- the RayJobs -----------------------------------------------------------------------------


def test_one_ray_job_per_purpose():
    purposes = {doc["metadata"]["labels"]["app.kubernetes.io/component"] for doc in _ray_jobs().values()}
    assert purposes == RAY_JOB_PURPOSES
    assert set(_ray_jobs()) == {f"ray-job.raysisa-{purpose}.yaml" for purpose in RAY_JOB_PURPOSES}


@pytest.mark.parametrize("name", sorted(f"ray-job.raysisa-{purpose}.yaml" for purpose in RAY_JOB_PURPOSES - {"coordinator"}))
def test_run_jobs_bring_their_own_cluster_and_shut_it_down(name):
    spec = _one(K8S / name)["spec"]
    assert "clusterSelector" not in spec and spec["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert isinstance(spec["submitterConfig"]["backoffLimit"], int)


def test_coordinator_job_runs_on_the_long_lived_cluster_and_leaves_it_up():
    spec = _one(K8S / "ray-job.raysisa-coordinator.yaml")["spec"]
    cluster = _one(K8S / "ray-cluster.raysisa.yaml")
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in spec
    assert spec.get("shutdownAfterJobFinishes", False) is False
    assert spec["activeDeadlineSeconds"] > 0 and isinstance(spec["submitterConfig"]["backoffLimit"], int)
    assert shlex.split(spec["entrypoint"])[3:5] == ["coordinator", "start"]


@pytest.mark.parametrize("name", sorted(f"ray-job.raysisa-{purpose}.yaml" for purpose in RAY_JOB_PURPOSES))
def test_runtime_env_sets_environment_variables_only(name):
    runtime_env = yaml.safe_load(_one(K8S / name)["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) == {"env_vars"}  # the code is in the image: no working_dir, no pip
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())


@pytest.mark.parametrize("name", sorted(f"ray-job.raysisa-{purpose}.yaml" for purpose in RAY_JOB_PURPOSES))
def test_entrypoints_parse_and_keep_stores_and_data_on_s3(name):
    assert entrypoint_problems(_one(K8S / name)["spec"]["entrypoint"]) == []


def test_entrypoint_check_rejects_local_paths_and_unknown_flags():
    train = "python -m raysisa train --config /etc/raysisa/train-cifar10.yaml --store s3://raysisa/runs/cifar10"
    assert entrypoint_problems(train) == []
    local_store = train.replace("s3://raysisa/runs/cifar10", "./runs/cifar10")
    assert entrypoint_problems(local_store) == ["store './runs/cifar10' is not an s3:// URI"]
    local_data = train + " --set data.uri=../shared/data/cifar10"
    assert entrypoint_problems(local_data) == ["--set data.uri=../shared/data/cifar10 is not an s3:// URI"]
    assert entrypoint_problems(train.replace("/etc/raysisa/train-cifar10.yaml", "cluster/configs/digits.yaml")) == [
        "config 'cluster/configs/digits.yaml' is not a file of k8s/configs/ mounted at /etc/raysisa"
    ]
    assert entrypoint_problems("python -m raysisa sweep /etc/raysisa/sweep-qmul-cifar10.yaml --storage /tmp/sweeps") == [
        "storage '/tmp/sweeps' is not an s3:// URI"
    ]
    assert entrypoint_problems(train + " --stores s3://x") == [f"raysisa's CLI rejects {train + ' --stores s3://x'!r}"]
    not_a_module = "raysisa train --store s3://x"
    assert entrypoint_problems(not_a_module) == [f"{not_a_module!r} does not start with `python -m raysisa`"]


def test_configs_mounted_for_the_jobs_are_valid_and_read_data_from_s3():
    from raysisa.cli import read_ids_file
    from raysisa.config import load_config
    from raysisa.tune.spec import load_study

    configs = K8S / "configs"
    train = load_config(configs / "train-cifar10.yaml")
    assert train.spec.data.uri.startswith("s3://")
    assert train.cluster.gpus_per_shard > 0  # what makes the GPU group scale up
    coordinator = load_config(configs / "coordinator.yaml")
    assert coordinator.cluster == train.cluster  # the coordinator's shard actors run as training's did
    study = load_study(configs / "sweep-qmul-cifar10.yaml")
    assert study.scenario.job["data"]["uri"].startswith("s3://")
    assert [int(i) for i in read_ids_file(str(configs / "forget-ids.txt"))]


def test_mounted_configs_follow_the_shipped_ones():
    """configs/ are the repository's shipped configs with their data on S3: no silent drift."""
    def read(path: Path) -> dict[str, Any]:
        return yaml.safe_load(path.read_text())

    sweep, shipped = read(K8S / "configs" / "sweep-qmul-cifar10.yaml"), read(ROOT / "tune_configs" / "qmul-cifar10.yaml")
    sweep["scenario"]["job"]["data"]["uri"] = shipped["scenario"]["job"]["data"]["uri"]
    assert sweep == shipped
    coordinator = read(K8S / "configs" / "coordinator.yaml")
    assert coordinator["coordinator"] == read(ROOT / "cluster" / "configs" / "coordinator.yaml")["coordinator"]
    train, parquet = read(K8S / "configs" / "train-cifar10.yaml"), read(ROOT / "cluster" / "configs" / "cifar10-parquet.yaml")
    for key in ("data", "cluster"):  # on S3; resources for the autoscaler
        train.pop(key), parquet.pop(key)
    assert train == parquet


# --- the image -------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_official_ray_image_of_the_pinned_ray_and_python():
    text = (ROOT / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    assert dockerfile_base(text) == f"rayproject/ray:{_ray_pin()}-py311"
    assert dockerfile_base(text, {"RAY_VARIANT": "-gpu"}) == f"rayproject/ray:{_ray_pin()}-py311-gpu"
    pinned = text.replace(f"ARG RAY_VERSION={_ray_pin()}", "ARG RAY_VERSION=2.58.0")
    assert dockerfile_problems(pinned) == [f"FROM has Ray 2.58.0, pyproject.toml pins {_ray_pin()}"]
    assert dockerfile_problems(text.replace("-py311", "-py312")) == ['FROM has Python 3.12, pyproject.toml requires >=3.11,<3.12']


def test_dockerfile_installs_the_project_as_the_non_root_ray_user():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip() and not line.startswith("#")]
    instructions = [line.split()[0] for line in lines if line.split()[0].isupper()]
    assert "ENTRYPOINT" not in instructions  # `docker run IMAGE raysisa --help` runs as typed
    assert lines[-1] == 'CMD ["raysisa", "--help"]'
    first_run = min(i for i, line in enumerate(lines) if line.startswith("RUN"))
    assert "USER 1000:100" in lines[:first_run]  # pip installs as the `ray` user, not root
    assert any(line.startswith("ENV RAY_USAGE_STATS_ENABLED=0") for line in lines)
    assert "COPY --chown=1000:100 pyproject.toml README.md ./" in lines and "COPY --chown=1000:100 raysisa/ raysisa/" in lines
    assert any(line.startswith("RUN pip install --no-cache-dir .") for line in lines)


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "sweeps", "runs", "bench/results", "**/__pycache__", "tests", "k8s", "**/*.env"} <= patterns
    assert not {"pyproject.toml", "README.md", "raysisa"} & patterns
