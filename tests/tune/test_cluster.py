"""tune.cluster: the `ray start` argv, the storage check, and a real one-box cluster.

The cluster test starts `ray start --head --block` on 127.0.0.1 (free ports, own temp dir),
connects a driver in a subprocess, submits a job through the job API, stops the cluster and
checks that no process it started survives (by PID, by session and by temp dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.ray_cluster import LocalRayCluster
from tests.support.ray_cluster import import_psutil as _psutil
from tune.cluster import (
    check_storage_for_address,
    main,
    ray_head_command,
    ray_worker_command,
)

# ---------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------


def test_head_command_defaults_keep_the_dashboard_on_loopback() -> None:
    assert ray_head_command() == [
        "ray",
        "start",
        "--head",
        "--port=6379",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--dashboard-port=8265",
        "--disable-usage-stats",
        "--block",
    ]


def test_head_command_with_every_option() -> None:
    argv = ray_head_command(
        port=7000,
        dashboard_host="0.0.0.0",
        dashboard_port=9000,
        temp_dir="/tmp/r",
        num_cpus=0,
        num_gpus=1,
        resources={"b": 2, "a": 1},
        block=False,
        node_ip_address="10.0.0.5",
        object_store_memory=10**9,
        dashboard_agent_listen_port=52365,
        ray_client_server_port=10001,
        ray_executable="/venv/bin/ray",
        extra_args=["--log-style=record"],
    )
    assert argv == [
        "/venv/bin/ray",
        "start",
        "--head",
        "--port=7000",
        "--node-ip-address=10.0.0.5",
        "--temp-dir=/tmp/r",
        "--num-cpus=0",
        "--num-gpus=1",
        '--resources={"a":1,"b":2}',
        "--object-store-memory=1000000000",
        "--include-dashboard=true",
        "--dashboard-host=0.0.0.0",
        "--dashboard-port=9000",
        "--dashboard-agent-listen-port=52365",
        "--ray-client-server-port=10001",
        "--disable-usage-stats",
        "--log-style=record",
    ]


def test_worker_command() -> None:
    assert ray_worker_command(address="ray-head:6379", num_gpus="${N:-0}") == [
        "ray",
        "start",
        "--address=ray-head:6379",
        "--num-gpus=${N:-0}",
        "--disable-usage-stats",
        "--block",
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 70000}, "port"),
        ({"dashboard_port": "http"}, "dashboard_port"),
        ({"temp_dir": "relative/dir"}, "temp_dir"),
        ({"resources": {"GPU_A": -1}}, "resources"),
    ],
)
def test_head_command_names_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ray_head_command(**kwargs)


def test_worker_command_rejects_the_dashboard_url() -> None:
    with pytest.raises(ValueError, match="GCS address"):
        ray_worker_command(address="http://head:8265")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic warnings of ray.serve
def test_every_flag_exists_in_this_ray() -> None:
    """The flags we emit are flags of the installed `ray start` (catches renames on upgrade)."""
    from ray.scripts.scripts import start

    known = {opt for param in start.params for opt in param.opts}
    argv = ray_head_command(
        temp_dir="/t",
        num_cpus=1,
        num_gpus=0,
        resources={"x": 1},
        node_ip_address="127.0.0.1",
        object_store_memory=1,
        dashboard_agent_listen_port=1,
        ray_client_server_port=1,
    ) + ray_worker_command(address="h:1")
    flags = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    assert flags <= known, flags - known


# ---------------------------------------------------------------------------------------------
# Storage check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "root", "kwargs", "warns"),
    [
        (None, "/data/studies", {}, False),
        ("local", "/data/studies", {}, False),
        ("auto", "/data/studies", {}, False),
        ("127.0.0.1:6379", "/data/studies", {}, False),
        ("localhost:6379", "/data/studies", {}, False),
        ("ray://127.0.0.1:10001", "/data/studies", {}, False),
        ("10.0.0.5:6379", "/data/studies", {}, True),
        ("head.example.org:6379", "file:///data/studies", {}, True),
        ("http://head:8265", "/data/studies", {}, True),
        ("ray://head:10001", "/data/studies", {}, True),
        ("10.0.0.5:6379", "s3://bucket/studies", {}, False),
        ("10.0.0.5:6379", "gs://bucket/studies", {}, False),
        ("10.0.0.5:6379", "/shared/studies", {"shared": True}, False),
        ("auto", "/data/studies", {"num_nodes": 3}, True),
        ("10.0.0.5:6379", "/data/studies", {"num_nodes": 1}, False),
    ],
)
def test_check_storage_for_address(address, root, kwargs, warns) -> None:
    message = check_storage_for_address(address, root, **kwargs)
    assert (message is not None) == warns, message
    if warns:
        assert root in message and "shared" in message and "s3://" in message


# ---------------------------------------------------------------------------------------------
# A real cluster
# ---------------------------------------------------------------------------------------------

_DRIVER = """
import json, sys, ray
ray.init(address=sys.argv[1])
square = ray.remote(lambda x: x * x)
print(json.dumps({"squares": ray.get([square.remote(i) for i in range(4)]),
                  "cpus": ray.cluster_resources().get("CPU")}))
ray.shutdown()
"""


def _run_driver(address: str, env: dict[str, str] | None = None) -> dict:
    """Run :data:`_DRIVER` in another process against ``address``; its JSON result."""
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, address],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _session_leftovers(temp_dir: str, leader: int) -> list[int]:
    """PIDs still alive that name the cluster's temp dir or sit in its session."""
    psutil = _psutil()
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            if os.getsid(proc.pid) == leader or any(
                temp_dir in part for part in (proc.info["cmdline"] or [])
            ):
                left.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return left


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_local_cluster_runs_tasks_and_jobs_and_stops_every_process() -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    psutil = _psutil()
    cluster = LocalRayCluster(num_cpus=2, keep_temp_dir=True)
    with cluster:
        assert cluster.address.startswith("127.0.0.1:")
        assert cluster.dashboard_url.startswith("http://127.0.0.1:")
        leader = cluster.pid
        assert leader is not None and os.getsid(leader) == leader  # own session

        # A driver on another process joins through the GCS address.
        assert _run_driver(cluster.address) == {"squares": [0, 1, 4, 9], "cpus": 2.0}

        # The dashboard and its job API answer.
        with urllib.request.urlopen(f"{cluster.dashboard_url}/api/version", timeout=10) as r:
            assert json.load(r)["ray_version"] == "2.60.0"
        client = JobSubmissionClient(cluster.dashboard_url)
        job = client.submit_job(entrypoint=f"{sys.executable} -c \"print('job says', 6 * 7)\"")
        deadline = time.monotonic() + 90
        status = client.get_job_status(job)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get_job_status(job)
        assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
        assert "job says 42" in client.get_job_logs(job)

        # The health check the container recipes run (`python -m tune.cluster health`).
        health = [
            "health",
            f"--agent-port={cluster.dashboard_agent_listen_port}",
            f"--dashboard-port={cluster.dashboard_port}",
        ]
        assert main(health) == 0

        started = cluster.pids()
        # head, GCS, raylet, dashboard at least; all found again by the session scan.
        assert len(started) >= 4
        assert set(_session_leftovers(cluster.temp_dir, leader)) >= {leader}

    # After stop(): nothing it started, nothing in its session, nothing naming its temp dir.
    alive = [
        pid
        for pid in cluster.started_pids()
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], alive
    assert _session_leftovers(cluster.temp_dir, leader) == []
    assert main(health) == 1
    # Informational: Ray's own SIGTERM teardown is expected to be enough.
    print("force-killed after SIGTERM:", cluster.force_killed)
    cluster.stop()  # idempotent
    import shutil

    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_local_cluster_reports_a_failed_start_and_leaves_nothing_behind() -> None:
    cluster = LocalRayCluster(num_cpus=2, resources={"x": 1}, start_timeout_s=45)
    cluster.resources = "not json"  # type: ignore[assignment]  (ray start rejects it)
    with pytest.raises((RuntimeError, TimeoutError), match="ray start"):
        cluster.start()
    assert cluster.pid is None
    assert not os.path.exists(cluster.temp_dir or "/nonexistent")


def test_address_needs_a_started_cluster() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = LocalRayCluster().address


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_local_cluster_with_token_auth_as_the_recipes_run_it() -> None:
    """docker/compose.yaml and the KubeRay manifests run Ray with RAY_AUTH_MODE=token and the
    token in RAY_AUTH_TOKEN: the job API refuses requests without it, a driver with it works."""
    import secrets

    token = secrets.token_hex(32)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    with LocalRayCluster(num_cpus=1, env=auth_env) as cluster:
        url = f"{cluster.dashboard_url}/api/version"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert json.load(r)["ray_version"] == "2.60.0"

        assert _run_driver(cluster.address, auth_env)["squares"] == [0, 1, 4, 9]
