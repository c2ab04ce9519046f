"""Ray cluster commands, the node health check, and a storage sanity check.

One source of truth for the ``ray start`` command lines: the Docker compose file and the KubeRay
manifests in ``docker/`` run exactly the argv that :func:`ray_head_command` and
:func:`ray_worker_command` build (``tests/docker/test_recipes.py`` compares them), and
:func:`loopback_head` runs the same argv on 127.0.0.1 (``python -m tune.cluster local``, and the
test suite's supervised cluster in ``tests/support/ray_cluster.py``). So the commands the tests
exercise are the commands the images run.

:func:`node_healthy` is the containers' health check (``python -m tune.cluster health``): it asks
Ray's public health endpoints, which need no token even with token auth.

:func:`check_storage_for_address` warns when a study is about to run on a multi-node cluster with
a storage root that only exists on one machine: since Ray 2.7, Tune no longer syncs trial
directories to the head node, so every node must see the storage root at the same path (NFS) or
it must be object storage (``s3://``, ``gs://``).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import urlparse

__all__ = [
    "DASHBOARD_AGENT_LISTEN_PORT",
    "LOCAL_ADDRESSES",
    "LoopbackHead",
    "NodeOptions",
    "check_storage_for_address",
    "free_ports",
    "head_environment",
    "loopback_head",
    "loopback_worker",
    "main",
    "node_healthy",
    "ray_executable",
    "ray_head_command",
    "ray_worker_command",
    "wait_for_head",
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

# Ray's unix socket paths must stay under 107 bytes: one-box heads get a short temp dir.
_SHORT_TMP = "/tmp" if os.name == "posix" else None


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


class NodeOptions(TypedDict, total=False):
    """``ray start`` options that head and worker nodes share (all optional).

    ``None`` values are left to Ray (it detects CPUs and GPUs itself). Values may be strings
    such as ``"${RAY_HEAD_NUM_CPUS:-0}"`` so the same functions describe templated recipes.
    """

    temp_dir: str | os.PathLike[str] | None  # absolute (or a ``${...}`` template)
    num_cpus: int | str | None
    num_gpus: int | str | None
    resources: Mapping[str, float] | str | None  # custom resources, e.g. ``{"GPU_A": 1}``
    block: bool  # ``--block``: stay in the foreground (containers); default True
    node_ip_address: str | None
    object_store_memory: int | str | None
    dashboard_agent_listen_port: int | str | None
    disable_usage_stats: bool  # default True
    ray_executable: str  # default ``"ray"``
    extra_args: Sequence[str]  # appended last, verbatim


def _node_options(node: Mapping[str, Any]) -> NodeOptions:
    """``node`` with the defaults filled in; an unknown option is a TypeError, as for a
    keyword argument (a TypedDict does not check at run time)."""
    unknown = sorted(set(node) - set(NodeOptions.__annotations__))
    if unknown:
        raise TypeError(
            f"unknown ray start option(s) {unknown}; known: {sorted(NodeOptions.__annotations__)}"
        )
    defaults: NodeOptions = {"block": True, "disable_usage_stats": True, "ray_executable": "ray"}
    return {**defaults, **node}  # type: ignore[typeddict-item]


def _node_args(node: NodeOptions) -> list[str]:
    """Flags shared by head and worker nodes, in the order both commands use."""
    argv: list[str] = []
    if node.get("node_ip_address") is not None:
        argv.append(f"--node-ip-address={node['node_ip_address']}")
    temp_dir = node.get("temp_dir")
    if temp_dir is not None:
        temp_dir = os.fspath(temp_dir)
        if not (temp_dir.startswith("${") or os.path.isabs(temp_dir)):
            raise ValueError(f"temp_dir must be an absolute path, got {temp_dir!r}")
        argv.append(f"--temp-dir={temp_dir}")
    for name in ("num_cpus", "num_gpus"):
        if node.get(name) is not None:
            argv.append(f"--{name.replace('_', '-')}={node[name]}")
    resources = node.get("resources")
    if resources is not None:
        argv.append(f"--resources={_resources_json(resources)}")
    if node.get("object_store_memory") is not None:
        argv.append(f"--object-store-memory={node['object_store_memory']}")
    return argv


def _node_tail(node: NodeOptions, *command_flags: str) -> list[str]:
    """The flags every node command ends with, around the command's own last flags."""
    argv: list[str] = []
    agent_port = node.get("dashboard_agent_listen_port")
    if agent_port is not None:
        _check_port("dashboard_agent_listen_port", agent_port)
        argv.append(f"--dashboard-agent-listen-port={agent_port}")
    argv += command_flags
    if node["disable_usage_stats"]:
        argv.append("--disable-usage-stats")
    if node["block"]:
        argv.append("--block")
    return argv + list(node.get("extra_args", ()))


def ray_head_command(
    *,
    port: int | str = 6379,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | str = 8265,
    ray_client_server_port: int | str | None = None,
    **node: Unpack[NodeOptions],
) -> list[str]:
    """The argv of ``ray start --head`` (GCS, dashboard, job server) for Ray 2.60.

    ``dashboard_host`` is where the dashboard *and the job API* listen. The job API runs
    arbitrary code on the cluster: keep it on 127.0.0.1 unless it sits behind a network you
    trust (in a container, bind 0.0.0.0 inside and publish the port on 127.0.0.1 of the host).
    The node's own options are :class:`NodeOptions`.
    """
    options = _node_options(node)
    _check_port("port", port)
    _check_port("dashboard_port", dashboard_port)
    argv = [options["ray_executable"], "start", "--head", f"--port={port}"]
    argv += _node_args(options)
    argv += [
        "--include-dashboard=true",
        f"--dashboard-host={dashboard_host}",
        f"--dashboard-port={dashboard_port}",
    ]
    client: list[str] = []
    if ray_client_server_port is not None:
        _check_port("ray_client_server_port", ray_client_server_port)
        client.append(f"--ray-client-server-port={ray_client_server_port}")
    return argv + _node_tail(options, *client)


def ray_worker_command(*, address: str, **node: Unpack[NodeOptions]) -> list[str]:
    """The argv of ``ray start --address HEAD:PORT`` that joins a worker node to a head.

    ``address`` is the head's GCS address (``"ray-head:6379"``), not the dashboard URL. The
    node's own options are :class:`NodeOptions`.
    """
    options = _node_options(node)
    if not address or "://" in address:
        raise ValueError(
            f"address must be the head's GCS address HOST:PORT (e.g. 'ray-head:6379'), "
            f"got {address!r}; the http://...:8265 URL is for `s2ap submit`"
        )
    argv = [options["ray_executable"], "start", f"--address={address}"]
    return argv + _node_args(options) + _node_tail(options)


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
# Health check
# --------------------------------------------------------------------------------------------


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


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


# --------------------------------------------------------------------------------------------
# A head node on 127.0.0.1
# --------------------------------------------------------------------------------------------


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
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


def ray_executable() -> str:
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


@dataclass(frozen=True)
class LoopbackHead:
    """A head node on 127.0.0.1: its ports, its temp dir and its ``ray start`` argv."""

    command: tuple[str, ...]
    port: int
    dashboard_port: int
    dashboard_agent_listen_port: int
    ray_client_server_port: int
    temp_dir: str

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)`` / ``s2ap tune --address``."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job API URL for ``JobSubmissionClient`` / ``s2ap submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def healthy(self) -> bool:
        """Whether the GCS, the dashboard and the raylet answer."""
        return node_healthy(
            agent_port=self.dashboard_agent_listen_port, dashboard_port=self.dashboard_port
        )


def loopback_head(
    temp_dir: str,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: Mapping[str, float] | str | None = None,
    object_store_memory: int | None = None,
) -> LoopbackHead:
    """The recipes' ``ray start --head --block`` (:func:`ray_head_command`) on free ports of
    127.0.0.1, with ``temp_dir`` as Ray's temp dir (keep it short: Ray's unix socket paths must
    stay under 107 bytes). Starts nothing."""
    port, dashboard, agent, client = free_ports(4)
    command = ray_head_command(
        port=port,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard,
        temp_dir=temp_dir,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        node_ip_address="127.0.0.1",
        object_store_memory=object_store_memory,
        dashboard_agent_listen_port=agent,
        ray_client_server_port=client,
        ray_executable=ray_executable(),
    )
    return LoopbackHead(tuple(command), port, dashboard, agent, client, temp_dir)


def loopback_worker(
    head: LoopbackHead,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
) -> list[str]:
    """The recipes' ``ray start --address`` (:func:`ray_worker_command`) joining ``head`` from
    this machine, with its own free dashboard-agent port: several worker nodes on one box, each
    a separate Ray node with its own CPUs (a multi-node cluster for tests and benchmarks).
    Start the head and the workers with :func:`head_environment` ``(multi_node=True)``."""
    (agent,) = free_ports(1)
    return ray_worker_command(
        address=head.address,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        node_ip_address="127.0.0.1",
        object_store_memory=object_store_memory,
        dashboard_agent_listen_port=agent,
        ray_executable=ray_executable(),
    )


def head_environment(
    extra: Mapping[str, str] | None = None, *, multi_node: bool = False
) -> dict[str, str]:
    """This process's environment for a one-box head, plus ``extra``. ``multi_node``: worker
    nodes will join (Ray refuses joins while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` pins a
    one-node cluster)."""
    env = dict(os.environ)
    if multi_node:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    # Stop promptly: the 30 s SIGTERM drain is for Serve replicas, not for a one-box cluster.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    env.update(extra or {})
    return env


def wait_for_head(
    proc: subprocess.Popen[bytes],
    head: LoopbackHead,
    *,
    timeout_s: float,
    output: Callable[[], str] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Block until ``head`` (started as ``proc``) answers its health checks.

    Raises ``RuntimeError`` when ``ray start`` exits first and ``TimeoutError`` after
    ``timeout_s``; both messages end with ``output()`` (e.g. the tail of its log).
    ``on_poll`` runs before every check (a supervisor records the processes Ray starts).
    """
    deadline = time.monotonic() + timeout_s
    output = output or (lambda: "")
    while time.monotonic() < deadline:
        if on_poll is not None:
            on_poll()
        if proc.poll() is not None:
            raise RuntimeError(
                f"`ray start --head` exited with code {proc.returncode} before the cluster was "
                f"ready; its output:\n{output()}"
            )
        if head.healthy():
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"the Ray head did not answer {head.dashboard_url}{_GCS_HEALTH_PATH} and "
        f"http://127.0.0.1:{head.dashboard_agent_listen_port}{_RAYLET_HEALTH_PATH} within "
        f"{timeout_s} s (`ray start` may need longer on a slow machine); its output:\n{output()}"
    )


def run_local_head(
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    start_timeout_s: float = 180.0,
) -> int:
    """Run a head on 127.0.0.1 in the foreground until Ctrl-C (or SIGTERM); its exit code.

    ``ray start --block`` stops raylet, GCS, dashboard and workers when it gets SIGTERM; its
    output goes to this terminal. The temp dir is removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="s2ray-", dir=_SHORT_TMP) as temp_dir:
        head = loopback_head(
            temp_dir,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory=object_store_memory,
        )
        proc = subprocess.Popen(head.command, stdin=subprocess.DEVNULL, env=head_environment())
        for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT may be ignored in a background job
            signal.signal(signum, _raise_keyboard_interrupt)
        try:
            wait_for_head(proc, head, timeout_s=start_timeout_s)
            print(f"Ray address:    {head.address}    (s2ap tune --address {head.address})")
            print(f"Dashboard/jobs: {head.dashboard_url}    (s2ap submit --address ...)")
            print(f"Logs:           {temp_dir}")
            print("Ctrl-C stops the cluster.", flush=True)
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            _terminate(proc)


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (Ray's own teardown of the node), SIGKILL if that does not end it in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# `python -m tune.cluster local|health`
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tune.cluster local|health`` (see ``--help``).

    ``local`` runs a one-box cluster until Ctrl-C. ``health`` is the container health check of
    the recipes (exit 0 when this node's raylet, and with ``--dashboard-port`` the GCS, answer).
    """
    args = _parser().parse_args(argv)
    if args.action == "health":
        ok = node_healthy(
            agent_port=args.agent_port, dashboard_port=args.dashboard_port, host=args.host
        )
        return 0 if ok else 1
    return run_local_head(
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        object_store_memory=args.object_store_memory,
    )
