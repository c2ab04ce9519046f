"""docker/compose.yaml run for real, for the tests: one compose project, started and removed by
its own name.

:class:`ComposeStack` writes an env file (a fresh Ray token and database password, free host
ports), runs ``docker compose`` (v2 plugin) or ``docker-compose`` (v1, Debian's package) on the
unmodified compose file with that env file, waits until every container reports healthy, and
removes its containers, network and volumes afterwards. Only this project's containers and
volumes are touched (by the project name); nothing else on the Docker host.

:class:`RayJobs` and :class:`MlflowQueries` are what a user reaches from the host: the job API on
127.0.0.1 (with the token) and the MLflow server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tracking.server import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"

__all__ = [
    "COMPOSE_FILE",
    "REPORT",
    "ROOT",
    "ComposeStack",
    "MlflowQueries",
    "RayJobs",
    "compose_command",
    "docker_unavailable",
    "image_exists",
    "job_id_of",
    "wait_until",
]

#: Lines of the cluster test's summary: tests/docker/conftest.py prints them at the end of the
#: session (and writes them to $S2AP_CLUSTER_REPORT when that is set).
REPORT: list[str] = []


def _run(argv: Sequence[str], *, timeout: float = 120, env: Mapping[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-3000:]}"
            f"{done.stderr[-3000:]}"
        )
    return done


def compose_command() -> list[str] | None:
    """``docker compose`` (v2) where the plugin exists, else ``docker-compose`` (v1), else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def docker_unavailable() -> str | None:
    """Why the stack cannot run here (None: it can)."""
    if not shutil.which("docker"):
        return "no docker command (make test-cluster installs Docker: docker/host.sh)"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if info.returncode != 0:
        reason = (info.stderr or info.stdout).strip().splitlines()[-1:] or ["no answer"]
        return f"no Docker daemon can be reached ({reason[0]})"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def image_exists(name: str) -> bool:
    return _run(["docker", "image", "inspect", name], check=False).returncode == 0


def wait_until(
    what: str, check: Callable[[], Any], *, timeout: float, interval: float = 2.0,
    detail: Callable[[], str] | None = None,
) -> Any:  # fmt: skip
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s{extra}")
        time.sleep(interval)


@dataclass
class ComposeStack:
    """``docker/compose.yaml`` as project ``project``, with the settings in ``settings`` (written
    to an env file in ``workdir``; the token, password and host ports are generated)."""

    project: str
    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    workers: int = 2
    command: list[str] = field(default_factory=lambda: compose_command() or ["docker-compose"])

    def __post_init__(self) -> None:
        self.token = secrets.token_hex(32)
        self.dashboard_port = free_port("127.0.0.1")
        self.mlflow_port = free_port("127.0.0.1")
        while self.mlflow_port == self.dashboard_port:
            self.mlflow_port = free_port("127.0.0.1")
        values = {
            "COMPOSE_PROJECT_NAME": self.project,
            "RAY_AUTH_TOKEN": self.token,
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "RAY_DASHBOARD_HOST_PORT": str(self.dashboard_port),
            "MLFLOW_HOST_PORT": str(self.mlflow_port),
            "S2AP_CONFIG_DIR": str(ROOT / "configs"),
            **self.settings,
        }
        self.values = values
        self.env_file = self.workdir / "stack.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.env_file.chmod(0o600)
        self.started_s: float | None = None

    # ---- addresses -----------------------------------------------------------------------------

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def client_env(self) -> dict[str, str]:
        """The environment of a client on the host (``s2ap submit``): the cluster's token."""
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    # ---- compose -------------------------------------------------------------------------------

    def _compose_env(self) -> dict[str, str]:
        """Only what compose itself needs: shell variables would override the env file."""
        keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "LANG")
        return {k: os.environ[k] for k in keep if k in os.environ}

    def compose(self, *args: str, timeout: float = 600, check: bool = True):
        argv = [
            *self.command,
            "--project-name", self.project,
            "--file", str(COMPOSE_FILE),
            "--env-file", str(self.env_file),
            *args,
        ]  # fmt: skip
        return _run(argv, timeout=timeout, env=self._compose_env(), check=check)

    def up(self, timeout: float = 600) -> float:
        """Start postgres, mlflow, the head and ``workers`` workers; wait until all are
        healthy. Returns the seconds it took."""
        start = time.monotonic()
        self.compose("up", "-d", "--no-build", "--scale", f"ray-worker={self.workers}",
                     timeout=timeout)  # fmt: skip
        self.wait_healthy(timeout=max(60.0, timeout - (time.monotonic() - start)))
        self.started_s = time.monotonic() - start
        return self.started_s

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20",
                     timeout=300, check=False)  # fmt: skip

    def container_ids(self, service: str | None = None) -> list[str]:
        """IDs of this project's containers (of ``service``), running or not."""
        label = [f"label=com.docker.compose.project={self.project}"]
        if service:
            label.append(f"label=com.docker.compose.service={service}")
        argv = ["docker", "ps", "-a", "-q", "--no-trunc"]
        for lab in label:
            argv += ["--filter", lab]
        return _run(argv).stdout.split()

    def volumes(self) -> list[str]:
        out = _run(["docker", "volume", "ls", "-q", "--filter",
                    f"label=com.docker.compose.project={self.project}"])  # fmt: skip
        return out.stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(_run(["docker", "inspect", container]).stdout)[0]

    def container(self, service: str, index: int = 1) -> str:
        """The ID of replica ``index`` (1-based) of ``service``."""
        for cid in self.container_ids(service):
            labels = self.inspect(cid)["Config"]["Labels"]
            if labels.get("com.docker.compose.container-number") == str(index):
                return cid
        raise LookupError(f"no container {service} #{index} in project {self.project}")

    def health(self) -> dict[str, str]:
        """{container name: health status (or state when it has no health check)}."""
        states = {}
        for cid in self.container_ids():
            info = self.inspect(cid)
            if info["Config"]["Labels"].get("com.docker.compose.oneoff") == "True":
                continue
            state = info["State"]
            status = state.get("Health", {}).get("Status") if state.get("Health") else None
            states[info["Name"].lstrip("/")] = status or state["Status"]
        return states

    def wait_healthy(self, timeout: float = 300) -> None:
        def all_healthy() -> bool:
            states = self.health()
            return bool(states) and all(s == "healthy" for s in states.values())

        wait_until(
            "every container healthy", all_healthy, timeout=timeout, interval=3,
            detail=lambda: f"{self.health()}\n{self.logs(tail=40)}",
        )  # fmt: skip

    def logs(self, service: str | None = None, tail: int = 200) -> str:
        args = ["logs", "--no-color", f"--tail={tail}"]
        if service:
            args.append(service)
        out = self.compose(*args, check=False, timeout=120)
        return out.stdout + out.stderr

    def docker(self, *args: str, timeout: float = 300, check: bool = True):
        return _run(["docker", *args], timeout=timeout, check=check)

    def exec(self, service: str, *argv: str, timeout: float = 300, check: bool = True):
        return self.docker("exec", self.container(service), *argv, timeout=timeout, check=check)

    def hostname(self, container: str) -> str:
        return self.inspect(container)["Config"]["Hostname"]

    def ip(self, container: str) -> str:
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return next(iter(networks.values()))["IPAddress"]


@dataclass
class RayJobs:
    """Ray's job and state REST API on the head's published dashboard port, with the token."""

    url: str
    token: str | None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.url + path, headers=self._headers(), params=params, timeout=30)

    def status(self, job_id: str) -> str:
        resp = self.get(f"/api/jobs/{job_id}")
        resp.raise_for_status()
        return resp.json()["status"]

    def logs(self, job_id: str) -> str:
        resp = self.get(f"/api/jobs/{job_id}/logs")
        return resp.json().get("logs", "") if resp.ok else f"(logs: HTTP {resp.status_code})"

    def wait(self, job_id: str, timeout: float) -> str:
        terminal = ("SUCCEEDED", "FAILED", "STOPPED")
        return wait_until(
            f"Ray job {job_id} finished",
            lambda: (s := self._status_or_none(job_id)) in terminal and s,
            timeout=timeout, interval=5, detail=lambda: self.logs(job_id)[-4000:],
        )  # fmt: skip

    def _status_or_none(self, job_id: str) -> str | None:
        try:
            return self.status(job_id)
        except (requests.RequestException, KeyError, ValueError):
            return None  # the head is restarting

    def nodes(self) -> list[dict[str, Any]]:
        """Alive and dead nodes as the state API lists them."""
        resp = self.get("/api/v0/nodes", detail="true", limit="100")
        resp.raise_for_status()
        return resp.json()["data"]["result"]["result"]


@dataclass
class MlflowQueries:
    """The study's runs on the MLflow server, as a user on the host sees them."""

    url: str

    def __post_init__(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.url)

    def runs(self, study: str, role: str | None = None) -> list[Any]:
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        where = f"tags.`s2ap.study` = '{study}'"
        if role:
            where += f" and tags.`s2ap.role` = '{role}'"
        runs, token = [], None
        while True:
            page = self.client.search_runs(experiments, where, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))


def job_id_of(submit_output: str) -> str:
    """The job id that ``s2ap submit`` prints (``... as Ray job <id>``)."""
    match = re.search(r"as Ray job (\S+)", submit_output)
    if not match:
        raise AssertionError(f"no job id in the output of s2ap submit:\n{submit_output}")
    return match.group(1)
