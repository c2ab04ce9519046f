"""A supervised one-box Ray cluster for the tests: started and stopped by PID.

:class:`LocalRayCluster` runs the recipes' ``ray start --head --block`` (``tune.cluster``'s
:func:`~tune.cluster.loopback_head`) as a child process in its own session, on free ports of
127.0.0.1, with its own temp dir, and records every process that belongs to it.
:meth:`LocalRayCluster.stop` stops every process it started (by PID, never ``ray stop``: other Ray
clusters on the same machine are left alone), so a test can assert that nothing survives.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tune.cluster import (
    LoopbackHead,
    head_environment,
    loopback_head,
    loopback_worker,
    wait_for_head,
)

if TYPE_CHECKING:
    import psutil

__all__ = ["LocalRayCluster", "import_psutil", "is_alive"]


def import_psutil() -> Any:
    """psutil, imported on first use: Ray 2.60 vendors it under ``ray/thirdparty_files``, which
    ``import ray`` puts on ``sys.path`` when no standalone psutil is installed."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")  # puts ray/thirdparty_files on sys.path
        return importlib.import_module("psutil")


def is_alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (a zombie, exited but not yet reaped, counts as gone)."""
    psutil = import_psutil()
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` is alive (zombies count as gone); return the survivors."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if is_alive(p)]
    return alive


class LocalRayCluster:
    """A real Ray cluster (head node only) on 127.0.0.1, started and stopped by PID::

        with LocalRayCluster(num_cpus=2) as cluster:
            ray.init(address=cluster.address)          # "127.0.0.1:PORT"
            JobSubmissionClient(cluster.dashboard_url)  # "http://127.0.0.1:PORT"

    The head runs in its own session/process group, with free ports and a private temp dir
    (short, under /tmp). ``stop()`` sends SIGTERM to it (Ray tears down raylet, GCS, dashboard
    and workers), then kills whatever it recorded as started by this cluster and is still alive:
    the descendants of the head process, the members of its session, and processes whose
    command line names its temp dir.
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
        worker_nodes: Sequence[int] = (),
    ) -> None:
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = dict(resources) if resources else None
        self.object_store_memory = object_store_memory
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.keep_temp_dir = keep_temp_dir
        #: CPUs of each worker node (``ray start --address``) joined to the head, in order.
        self.worker_nodes = list(worker_nodes)
        self._workers: list[subprocess.Popen[bytes]] = []
        self._own_temp_dir = temp_dir is None
        self._temp_dir_arg = None if temp_dir is None else os.path.abspath(os.fspath(temp_dir))
        self.temp_dir: str | None = None
        self.head: LoopbackHead | None = None
        self.log_path: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._known: dict[int, psutil.Process] = {}
        self._leader_pid: int | None = None
        #: PIDs that :meth:`stop` had to SIGKILL because SIGTERM did not take them down.
        self.force_killed: list[int] = []

    # ---- addresses ---------------------------------------------------------------------------

    def _started_head(self) -> LoopbackHead:
        if self._proc is None or self.head is None:
            raise RuntimeError("LocalRayCluster is not started: call start() or use `with`")
        return self.head

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)`` / ``s2ap tune --address``."""
        return self._started_head().address

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job API URL for ``JobSubmissionClient`` / ``s2ap submit --address``."""
        return self._started_head().dashboard_url

    @property
    def dashboard_port(self) -> int:
        return self._started_head().dashboard_port

    @property
    def dashboard_agent_listen_port(self) -> int:
        return self._started_head().dashboard_agent_listen_port

    @property
    def pid(self) -> int | None:
        """PID of the ``ray start --head --block`` process (also its session id)."""
        return None if self._proc is None else self._proc.pid

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
        self.temp_dir = self._make_temp_dir()
        self.head = loopback_head(
            self.temp_dir,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            resources=self.resources,
            object_store_memory=self.object_store_memory,
        )
        self.log_path = os.path.join(self.temp_dir, "ray-start.log")
        self._log_file = open(self.log_path, "wb")
        env = head_environment(self.env, multi_node=bool(self.worker_nodes))
        env.setdefault("RAY_raylet_start_wait_time_s", "120")  # a loaded machine starts slowly
        self._proc = subprocess.Popen(
            self.head.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._leader_pid = self._proc.pid
        self._remember(import_psutil().Process(self._proc.pid))
        try:
            wait_for_head(
                self._proc,
                self.head,
                timeout_s=self.start_timeout_s,
                output=self.log_tail,
                on_poll=self._record_processes,
            )
            # One node at a time: raylets starting together on a loaded 2-core box time out
            # registering with the GCS.
            for i, cpus in enumerate(self.worker_nodes):
                self._start_worker(cpus, env)
                self._wait_for_nodes(2 + i)
        except BaseException:
            self.stop()
            raise
        self._record_processes()
        return self

    def _start_worker(self, num_cpus: int, env: Mapping[str, str]) -> None:
        """One more node: ``ray start --address`` in its own session, logging to the head's log."""
        command = loopback_worker(
            self._started_head(),
            num_cpus=num_cpus,
            num_gpus=0,
            object_store_memory=self.object_store_memory,
        )
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
        self._workers.append(proc)
        self._remember(import_psutil().Process(proc.pid))

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The cluster's ALIVE nodes, from the head's state API (no ``ray.init`` needed)."""
        url = f"{self.dashboard_url}/api/v0/nodes?limit=1000"
        with urllib.request.urlopen(url, timeout=10) as response:
            data = json.load(response)
        return [n for n in data["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def _wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        alive: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self._record_processes()
            failed = [w.args for w in self._workers if w.poll() is not None]
            if failed:
                raise RuntimeError(f"a worker node exited at start: {failed}\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                alive = self.alive_nodes()
                if len(alive) >= count:
                    return
            time.sleep(1.0)
        raise TimeoutError(
            f"{len(alive)} of {count} Ray nodes alive after {self.start_timeout_s} s\n"
            f"{self.log_tail()}"
        )

    def _make_temp_dir(self) -> str:
        if self._temp_dir_arg is None:
            return tempfile.mkdtemp(prefix="s2ray-", dir="/tmp" if os.name == "posix" else None)
        os.makedirs(self._temp_dir_arg, exist_ok=True)
        return self._temp_dir_arg

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the ``ray start`` output (for error messages)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as handle:
            data = handle.read()
        return f"({self.log_path})\n" + data[-max_chars:].decode("utf-8", "replace")

    # ---- process bookkeeping -----------------------------------------------------------------

    def _remember(self, proc: psutil.Process) -> None:
        psutil = import_psutil()
        with contextlib.suppress(psutil.Error):
            proc.create_time()  # cached: is_running() then also guards against PID reuse
            self._known.setdefault(proc.pid, proc)

    def _session_processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: descendants of the head process, members of its
        session (``start_new_session``: Ray's workers get their own process group but stay in
        the session), and processes whose command line names this cluster's temp dir."""
        psutil = import_psutil()
        found: list[psutil.Process] = []
        if self._proc is not None:
            with contextlib.suppress(psutil.Error):
                found += psutil.Process(self._proc.pid).children(recursive=True)
        for worker in self._workers:
            with contextlib.suppress(psutil.Error):
                found += psutil.Process(worker.pid).children(recursive=True)
        leader = self._leader_pid if self._leader_pid_is_ours() else None
        # Worker nodes run in sessions of their own (their leader's PID), like the head.
        leaders = {leader} if leader is not None else set()
        leaders |= {w.pid for w in self._workers if w.pid in self._known}
        marker = self.temp_dir
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid == me:
                continue
            try:
                if leaders & {os.getsid(proc.pid), os.getpgid(proc.pid)}:
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
        psutil = import_psutil()
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
        return {pid for pid, proc in self._known.items() if is_alive(proc)}

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
        try:
            self._record_processes()
            for worker in self._workers:  # before the head: a worker drains against its GCS
                self._terminate_head(worker)
            self._terminate_head(self._proc)
            self._record_processes()
            self._kill_stragglers()
        finally:
            self._workers = []
            self._proc = None
            self._leader_pid = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self._own_temp_dir and not self.keep_temp_dir and self.temp_dir:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _terminate_head(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)

    def _kill_stragglers(self) -> None:
        psutil = import_psutil()
        remaining = _wait_gone(list(self._known.values()), timeout=5.0)
        for _ in range(3):
            remaining += [p for p in self._session_processes() if is_alive(p)]
            if not remaining:
                return
            for straggler in remaining:
                self._remember(straggler)
                self.force_killed.append(straggler.pid)
                with contextlib.suppress(psutil.Error):
                    straggler.kill()
            remaining = _wait_gone(remaining, timeout=5.0)
