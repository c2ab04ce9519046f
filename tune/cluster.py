"""Ray cluster commands, a one-box cluster for tests and trials, and a storage sanity check.

One source of truth for the ``ray start`` command lines: the Docker compose file and the KubeRay
manifests in ``docker/`` run exactly the argv that :func:`ray_head_command` and
:func:`ray_worker_command` build (``tests/docker/test_recipes.py`` compares them), and
:class:`LocalRayCluster` runs the same argv on this machine. So the commands the tests exercise
are the commands the images run.

:class:`LocalRayCluster` starts ``ray start --head --block`` as a child process in its own process
group and session, on free ports of 127.0.0.1, with its own temp dir; :meth:`LocalRayCluster.stop`
stops every process it started (by PID, never ``ray stop``: other Ray clusters on the same machine
are left alone).

:func:`check_storage_for_address` warns when a study is about to run on a multi-node cluster with
a storage root that only exists on one machine: since Ray 2.7, Tune no longer syncs trial
directories to the head node, so every node must see the storage root at the same path (NFS) or
it must be object storage (``s3://``, ``gs://``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    import psutil

__all__ = [
    "DASHBOARD_AGENT_LISTEN_PORT",
    "LOCAL_ADDRESSES",
    "LocalRayCluster",
    "check_storage_for_address",
    "node_healthy",
    "ray_head_command",
    "ray_worker_command",
]

#: Addresses that mean "a Ray runtime on this machine" (``None`` and ``""`` too).
LOCAL_ADDRESSES = frozenset({"local", "localhost", "127.0.0.1", "::1", "[::1]"})

# Storage roots with one of these schemes live on the local disk of whoever writes them.
_LOCAL_SCHEMES = frozenset({"", "file", "local"})

#: Ray's default port of the per-node dashboard agent; the recipes pin it for their health checks.
DASHBOARD_AGENT_LISTEN_PORT = 52365

# Public (no token needed even with RAY_AUTH_MODE=token) health endpoints of Ray 2.60.
_GCS_HEALTH_PATH = "/api/gcs_healthz"
_RAYLET_HEALTH_PATH = "/api/local_raylet_healthz"


# --------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------


def _check_port(name: str, value: int | str) -> None:
    """Reject impossible ports early, naming the argument (placeholders like ``${P}`` pass)."""
    if isinstance(value, str):
        if value.startswith("${"):
            return
        if not value.isdigit():
            raise ValueError(f"{name} must be a port number (0-65535; 0 = pick one), got {value!r}")
        value = int(value)
    if isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a port number (0-65535; 0 = pick one), got {value!r}")


def _resources_json(resources: Mapping[str, float] | str) -> str:
    """Ray's ``--resources`` takes a JSON object; keys sorted so the argv is deterministic."""
    if isinstance(resources, str):
        return resources
    for key, amount in resources.items():
        if not isinstance(amount, int | float) or amount < 0:
            raise ValueError(f"resources[{key!r}] must be a non-negative number, got {amount!r}")
    return json.dumps(dict(sorted(resources.items())), separators=(",", ":"))


def _node_args(
    *,
    node_ip_address: str | None,
    temp_dir: str | os.PathLike[str] | None,
    num_cpus: int | str | None,
    num_gpus: int | str | None,
    resources: Mapping[str, float] | str | None,
    object_store_memory: int | str | None,
) -> list[str]:
    """Flags shared by head and worker nodes, in the order both commands use."""
    argv: list[str] = []
    if node_ip_address is not None:
        argv.append(f"--node-ip-address={node_ip_address}")
    if temp_dir is not None:
        temp_dir = os.fspath(temp_dir)
        if not (temp_dir.startswith("${") or os.path.isabs(temp_dir)):
            raise ValueError(f"temp_dir must be an absolute path, got {temp_dir!r}")
        argv.append(f"--temp-dir={temp_dir}")
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        argv.append(f"--num-gpus={num_gpus}")
    if resources is not None:
        argv.append(f"--resources={_resources_json(resources)}")
    if object_store_memory is not None:
        argv.append(f"--object-store-memory={object_store_memory}")
    return argv


def ray_head_command(
    *,
    port: int | str = 6379,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | str = 8265,
    temp_dir: str | os.PathLike[str] | None = None,
    num_cpus: int | str | None = None,
    num_gpus: int | str | None = None,
    resources: Mapping[str, float] | str | None = None,
    block: bool = True,
    node_ip_address: str | None = None,
    object_store_memory: int | str | None = None,
    dashboard_agent_listen_port: int | str | None = None,
    ray_client_server_port: int | str | None = None,
    disable_usage_stats: bool = True,
    ray_executable: str = "ray",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of ``ray start --head`` (GCS, dashboard, job server) for Ray 2.60.

    ``dashboard_host`` is where the dashboard *and the job API* listen. The job API runs
    arbitrary code on the cluster: keep it on 127.0.0.1 unless it sits behind a network you
    trust (in a container, bind 0.0.0.0 inside and publish the port on 127.0.0.1 of the host).
    ``None`` values are left to Ray (it detects CPUs and GPUs itself). Values may be strings
    such as ``"${RAY_HEAD_NUM_CPUS:-0}"`` so the same function describes templated recipes.
    """
    _check_port("port", port)
    _check_port("dashboard_port", dashboard_port)
    argv = [ray_executable, "start", "--head", f"--port={port}"]
    argv += _node_args(
        node_ip_address=node_ip_address,
        temp_dir=temp_dir,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        object_store_memory=object_store_memory,
    )
    argv += [
        "--include-dashboard=true",
        f"--dashboard-host={dashboard_host}",
        f"--dashboard-port={dashboard_port}",
    ]
    if dashboard_agent_listen_port is not None:
        _check_port("dashboard_agent_listen_port", dashboard_agent_listen_port)
        argv.append(f"--dashboard-agent-listen-port={dashboard_agent_listen_port}")
    if ray_client_server_port is not None:
        _check_port("ray_client_server_port", ray_client_server_port)
        argv.append(f"--ray-client-server-port={ray_client_server_port}")
    if disable_usage_stats:
        argv.append("--disable-usage-stats")
    if block:
        argv.append("--block")
    return argv + list(extra_args)


def ray_worker_command(
    *,
    address: str,
    temp_dir: str | os.PathLike[str] | None = None,
    num_cpus: int | str | None = None,
    num_gpus: int | str | None = None,
    resources: Mapping[str, float] | str | None = None,
    block: bool = True,
    node_ip_address: str | None = None,
    object_store_memory: int | str | None = None,
    dashboard_agent_listen_port: int | str | None = None,
    disable_usage_stats: bool = True,
    ray_executable: str = "ray",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of ``ray start --address HEAD:PORT`` that joins a worker node to a head.

    ``address`` is the head's GCS address (``"ray-head:6379"``), not the dashboard URL.
    """
    if not address or "://" in address:
        raise ValueError(
            f"address must be the head's GCS address HOST:PORT (e.g. 'ray-head:6379'), "
            f"got {address!r}; the http://...:8265 URL is for `s2ap submit`"
        )
    argv = [ray_executable, "start", f"--address={address}"]
    argv += _node_args(
        node_ip_address=node_ip_address,
        temp_dir=temp_dir,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        object_store_memory=object_store_memory,
    )
    if dashboard_agent_listen_port is not None:
        _check_port("dashboard_agent_listen_port", dashboard_agent_listen_port)
        argv.append(f"--dashboard-agent-listen-port={dashboard_agent_listen_port}")
    if disable_usage_stats:
        argv.append("--disable-usage-stats")
    if block:
        argv.append("--block")
    return argv + list(extra_args)


# --------------------------------------------------------------------------------------------
# Storage check
# --------------------------------------------------------------------------------------------


def _address_host(address: str) -> str:
    """The host part of a Ray address: ``HOST:PORT``, ``ray://HOST:PORT``, ``http://HOST:PORT``."""
    if "://" in address:
        return (urlparse(address).hostname or "").lower()
    if address.startswith("["):  # [v6]:port
        return address[1:].split("]", 1)[0].lower()
    if address.count(":") > 1:  # bare IPv6 without port
        return address.lower()
    return address.rsplit(":", 1)[0].lower() if ":" in address else address.lower()


def _is_local_address(address: str | None) -> bool:
    if address is None or address.strip() in ("", "local", "auto"):
        return True
    return _address_host(address.strip()) in LOCAL_ADDRESSES


def check_storage_for_address(
    address: str | None,
    storage_root: str | os.PathLike[str],
    *,
    shared: bool = False,
    num_nodes: int | None = None,
) -> str | None:
    """Return a warning when a multi-node run would write its results to one machine's disk.

    ``address`` is what the user passes as ``--address``: ``None``/``"local"``/``"auto"`` and
    loopback hosts count as this machine; any other host is a remote cluster. ``num_nodes``
    (e.g. ``len([n for n in ray.nodes() if n["Alive"]])`` once connected) overrides the guess:
    more than one node is multi-node whatever the address says. ``storage_root`` is fine on a
    multi-node cluster when it is a URI with a non-file scheme (``s3://``, ``gs://``,
    ``abfs://``...) or when the caller knows it is shared storage mounted at the same path on
    every node (``shared=True``, e.g. an NFS or a ReadWriteMany volume). Returns ``None`` when
    nothing is wrong.
    """
    root = os.fspath(storage_root)
    multi_node = num_nodes > 1 if num_nodes is not None else not _is_local_address(address)
    if not multi_node or shared:
        return None
    scheme = urlparse(root).scheme.lower() if "://" in root else ""
    if scheme not in _LOCAL_SCHEMES:
        return None
    where = f"has {num_nodes} nodes" if num_nodes is not None else f"at {address!r} is remote"
    return (
        f"The Ray cluster {where}, but the storage root {root!r} is a local path: each node "
        "would keep its own trials' checkpoints and results on its own disk (Ray no longer "
        "syncs them to the head), so resuming, the best-mask lookup and `s2ap status` would see "
        "only part of the study. Put the storage root on shared storage mounted at the same path "
        "on every node (NFS, a ReadWriteMany volume) and mark it shared, or use object storage "
        "(s3://bucket/prefix, gs://bucket/prefix)."
    )


# --------------------------------------------------------------------------------------------
# One-box cluster
# --------------------------------------------------------------------------------------------


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports on ``host`` (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_healthy(
    *,
    agent_port: int = DASHBOARD_AGENT_LISTEN_PORT,
    dashboard_port: int | None = None,
    host: str = "127.0.0.1",
    timeout: float = 2.0,
) -> bool:
    """True when the Ray node on ``host`` answers: its raylet (through the dashboard agent on
    ``agent_port``) and, for a head node (``dashboard_port`` given), the GCS. Both endpoints are
    public even with token auth, so container health checks need no token."""
    if not _http_ok(f"http://{host}:{agent_port}{_RAYLET_HEALTH_PATH}", timeout):
        return False
    return dashboard_port is None or _http_ok(
        f"http://{host}:{dashboard_port}{_GCS_HEALTH_PATH}", timeout
    )


def _psutil() -> Any:
    """psutil, imported on first use: Ray 2.60 vendors it under ``ray/thirdparty_files``, which
    ``import ray`` puts on ``sys.path`` when no standalone psutil is installed."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")  # puts ray/thirdparty_files on sys.path
        return importlib.import_module("psutil")


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _ray_executable() -> str:
    """The ``ray`` script of the running interpreter's environment (a venv may not be on PATH)."""
    candidate = Path(sys.executable).with_name("ray")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise FileNotFoundError(
            "the `ray` command was not found next to the Python interpreter or on PATH; "
            "install ray[default] into this environment"
        )
    return found


class LocalRayCluster:
    """A real Ray cluster (head node only) on 127.0.0.1, started and stopped by PID.

    For tests, and for users who want to try ``--address``/``s2ap submit`` on one machine::

        with LocalRayCluster(num_cpus=2) as cluster:
            ray.init(address=cluster.address)          # "127.0.0.1:PORT"
            JobSubmissionClient(cluster.dashboard_url)  # "http://127.0.0.1:PORT"

    The head runs ``ray start --head --block`` (the argv of :func:`ray_head_command`) in its own
    session/process group, with free ports and a private temp dir (short, under the system temp
    dir: Ray's unix socket paths must stay under 107 bytes). ``stop()`` sends SIGTERM to it (Ray
    tears down raylet, GCS, dashboard and workers), then kills whatever it recorded as started by
    this cluster and is still alive: the descendants of the head process, the members of its
    process group, and processes whose command line names its temp dir.
    """

    def __init__(
        self,
        *,
        num_cpus: int | None = 2,
        num_gpus: int | None = 0,
        resources: Mapping[str, float] | None = None,
        object_store_memory: int | None = 100 * 1024 * 1024,
        temp_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 90.0,
        stop_timeout_s: float = 30.0,
        keep_temp_dir: bool = False,
    ) -> None:
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = dict(resources) if resources else None
        self.object_store_memory = object_store_memory
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.keep_temp_dir = keep_temp_dir
        self._own_temp_dir = temp_dir is None
        self._temp_dir_arg = None if temp_dir is None else os.path.abspath(os.fspath(temp_dir))
        self.temp_dir: str | None = None
        self.port: int | None = None
        self.dashboard_port: int | None = None
        self.dashboard_agent_listen_port: int | None = None
        self.ray_client_server_port: int | None = None
        self.command: list[str] | None = None
        self.log_path: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._known: dict[int, psutil.Process] = {}
        self._leader_pid: int | None = None
        #: PIDs that :meth:`stop` had to SIGKILL because SIGTERM did not take them down.
        self.force_killed: list[int] = []

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)`` / ``s2ap tune --address``."""
        self._require_started()
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job API URL for ``JobSubmissionClient`` / ``s2ap submit --address``."""
        self._require_started()
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def pid(self) -> int | None:
        """PID of the ``ray start --head --block`` process (also its process group id)."""
        return None if self._proc is None else self._proc.pid

    def _require_started(self) -> None:
        if self._proc is None or self.port is None:
            raise RuntimeError("LocalRayCluster is not started: call start() or use `with`")

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"address={self.address!r}" if self._proc is not None else "not started"
        return f"LocalRayCluster({state})"

    def start(self) -> LocalRayCluster:
        """Start the head and wait until the GCS, the dashboard and the raylet answer."""
        if self._proc is not None:
            raise RuntimeError("LocalRayCluster is already started")
        if self._own_temp_dir:
            self.temp_dir = tempfile.mkdtemp(
                prefix="s2ray-", dir="/tmp" if os.name == "posix" else None
            )
        else:
            assert self._temp_dir_arg is not None
            os.makedirs(self._temp_dir_arg, exist_ok=True)
            self.temp_dir = self._temp_dir_arg
        (
            self.port,
            self.dashboard_port,
            self.dashboard_agent_listen_port,
            self.ray_client_server_port,
        ) = _free_ports(4)
        self.command = ray_head_command(
            port=self.port,
            dashboard_host="127.0.0.1",
            dashboard_port=self.dashboard_port,
            temp_dir=self.temp_dir,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            resources=self.resources,
            node_ip_address="127.0.0.1",
            object_store_memory=self.object_store_memory,
            dashboard_agent_listen_port=self.dashboard_agent_listen_port,
            ray_client_server_port=self.ray_client_server_port,
            ray_executable=_ray_executable(),
        )
        env = dict(os.environ)
        # Stop promptly: the 30 s SIGTERM drain is for Serve replicas, not for a one-box cluster.
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        env.update(self.env)
        self.log_path = os.path.join(self.temp_dir, "ray-start.log")
        self._log_file = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._leader_pid = self._proc.pid
        self._remember(_psutil().Process(self._proc.pid))
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._record_processes()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        assert self.dashboard_agent_listen_port is not None
        gcs = f"{self.dashboard_url}{_GCS_HEALTH_PATH}"
        raylet = f"http://127.0.0.1:{self.dashboard_agent_listen_port}{_RAYLET_HEALTH_PATH}"
        while time.monotonic() < deadline:
            assert self._proc is not None
            self._record_processes()
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"`ray start --head` exited with code {self._proc.returncode} before the "
                    f"cluster was ready; its output ({self.log_path}):\n{self.log_tail()}"
                )
            if node_healthy(
                agent_port=self.dashboard_agent_listen_port, dashboard_port=self.dashboard_port
            ):
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"the Ray head did not answer {gcs} and {raylet} within {self.start_timeout_s} s "
            f"(raise start_timeout_s on a slow machine); its output ({self.log_path}):\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the ``ray start`` output (for error messages)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as handle:
            data = handle.read()
        return data[-max_chars:].decode("utf-8", "replace")

    # ---- process bookkeeping -----------------------------------------------------------------

    def _remember(self, proc: psutil.Process) -> None:
        psutil = _psutil()
        with contextlib.suppress(psutil.Error):
            proc.create_time()  # cached: is_running() then also guards against PID reuse
            self._known.setdefault(proc.pid, proc)

    def _session_processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: descendants of the head process, members of its
        session (``start_new_session``: Ray's workers get their own process group but stay in
        the session), and processes whose command line names this cluster's temp dir."""
        psutil = _psutil()
        found: list[psutil.Process] = []
        if self._proc is not None:
            with contextlib.suppress(psutil.Error):
                found += psutil.Process(self._proc.pid).children(recursive=True)
        leader = self._leader_pid if self._leader_pid_is_ours() else None
        marker = self.temp_dir
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid == me:
                continue
            try:
                if leader is not None and leader in (os.getsid(proc.pid), os.getpgid(proc.pid)):
                    found.append(proc)
                    continue
                cmdline = proc.info.get("cmdline") or []
                if marker and any(marker in part for part in cmdline):
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def _leader_pid_is_ours(self) -> bool:
        """False once the head's PID could belong to someone else (exited and reused)."""
        if self._leader_pid is None:
            return False
        recorded = self._known.get(self._leader_pid)
        if recorded is None:
            return False
        psutil = _psutil()
        try:
            current = psutil.Process(self._leader_pid)
            return current.create_time() == recorded.create_time()
        except psutil.Error:
            # Gone: Linux does not hand out a PID while it is still a live session/group id,
            # so processes that carry it are this cluster's.
            return True

    def _record_processes(self) -> None:
        for proc in self._session_processes():
            self._remember(proc)

    def pids(self) -> set[int]:
        """PIDs of this cluster's processes that are alive now."""
        self._record_processes()
        return {pid for pid, proc in self._known.items() if _alive(proc)}

    def started_pids(self) -> set[int]:
        """Every PID this cluster recorded as its own since start (alive or not)."""
        return set(self._known)

    def stop(self) -> None:
        """Stop the head and every process it started; idempotent.

        SIGTERM to ``ray start --block`` makes Ray kill raylet, GCS, dashboard and, through the
        raylet, the workers. Whatever of this cluster is still alive after that (recorded PIDs,
        session members, processes naming the temp dir) gets SIGKILL; their PIDs are kept in
        :attr:`force_killed` (empty when SIGTERM alone was enough).
        """
        if self._proc is None:
            return
        psutil = _psutil()
        proc = self._proc
        self._record_processes()
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=10)
            self._record_processes()
            remaining = _wait_gone(list(self._known.values()), timeout=5.0)
            for _ in range(3):
                remaining += [p for p in self._session_processes() if _alive(p)]
                if not remaining:
                    break
                for straggler in remaining:
                    self._remember(straggler)
                    self.force_killed.append(straggler.pid)
                    with contextlib.suppress(psutil.Error):
                        straggler.kill()
                remaining = _wait_gone(remaining, timeout=5.0)
        finally:
            self._proc = None
            self._leader_pid = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self._own_temp_dir and not self.keep_temp_dir and self.temp_dir:
                shutil.rmtree(self.temp_dir, ignore_errors=True)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` is alive (zombies count as gone); return the survivors."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(proc: psutil.Process) -> bool:
    psutil = _psutil()
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --------------------------------------------------------------------------------------------
# `python -m tune.cluster`: print the commands, or run a one-box cluster until Ctrl-C
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tune.cluster local|health`` (see ``--help``).

    ``local`` runs a one-box cluster until Ctrl-C. ``health`` is the container health check of
    the recipes (exit 0 when this node's raylet, and with ``--dashboard-port`` the GCS, answer).
    """
    parser = argparse.ArgumentParser(
        prog="python -m tune.cluster",
        description="A one-box Ray cluster, and the health check of the s2ap container recipes.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    local = sub.add_parser("local", help="run a Ray head on 127.0.0.1 until Ctrl-C")
    local.add_argument("--num-cpus", type=int, default=None)
    local.add_argument("--num-gpus", type=int, default=None)
    local.add_argument("--object-store-memory", type=int, default=None)
    health = sub.add_parser("health", help="exit 0 if this Ray node answers its health checks")
    health.add_argument("--agent-port", type=int, default=DASHBOARD_AGENT_LISTEN_PORT)
    health.add_argument(
        "--dashboard-port", type=int, default=None, help="also check the GCS (head nodes)"
    )
    health.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    if args.action == "health":
        ok = node_healthy(
            agent_port=args.agent_port, dashboard_port=args.dashboard_port, host=args.host
        )
        return 0 if ok else 1

    cluster = LocalRayCluster(
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        object_store_memory=args.object_store_memory,
        start_timeout_s=180.0,
    )
    with cluster:
        print(f"Ray address:    {cluster.address}    (s2ap tune --address {cluster.address})")
        print(f"Dashboard/jobs: {cluster.dashboard_url}    (s2ap submit --address ...)")
        print(f"Logs:           {cluster.temp_dir}")
        print("Ctrl-C stops the cluster.", flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT may be ignored in a background job
            signal.signal(signum, _raise_keyboard_interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            while cluster._proc is not None and cluster._proc.poll() is None:
                time.sleep(1)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
