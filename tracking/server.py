"""The MLflow tracking server command, in one place, and a process wrapper to run it.

:func:`mlflow_server_command` is the single source of truth for the server's flags: the tests,
``s2ap ui`` and the docker compose service all run this argv (a test compares the compose file
with it). The server proxies artifacts (``--serve-artifacts --artifacts-destination``), so clients
on other machines upload and download masks through HTTP and need no shared filesystem.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from tracking.client import server_answers

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a free TCP port on ``host`` (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str, port: int) -> list[str] | None:
    """The Host headers a server bound to ``host`` accepts, when nobody said otherwise.

    Loopback: ``localhost:PORT`` and ``127.0.0.1:PORT`` only (a web page in the user's browser
    cannot reach the server under another name: no DNS rebinding). A named interface: that name
    too. All interfaces (``0.0.0.0``): ``None``, i.e. MLflow's default (localhost and private
    IPs), since the names clients use are not known here.
    """
    if host in _WILDCARD_HOSTS:
        return None
    names = [f"localhost:{port}", f"127.0.0.1:{port}"]
    return names if is_loopback(host) else [f"{host}:{port}", *names]


def exposure_warning(host: str, port: int) -> str | None:
    """The risk of binding ``host``, in words, or ``None`` for loopback."""
    if is_loopback(host):
        return None
    where = "every network interface" if host in _WILDCARD_HOSTS else host
    return (
        f"the MLflow server listens on {where} (port {port}) and has no authentication: anyone "
        "who reaches that port can read, change and delete every run, mask and checkpoint. "
        "Bind 127.0.0.1 and use an SSH tunnel, or put authentication in front (`mlflow server "
        "--app-name basic-auth`, or a reverse proxy; see docs/cluster.md)"
    )


def mlflow_server_command(
    *,
    host: str = "127.0.0.1",
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    workers: int = 1,
    allowed_hosts: list[str] | None = None,
) -> list[str]:
    """The exact argv of the MLflow server (``argv[0]`` is ``"mlflow"``).

    ``backend_store_uri``: ``sqlite:////abs/mlflow.db`` or a SQLAlchemy URI (no file stores).
    ``artifacts_destination``: where proxied artifacts go (a folder, ``s3://...``).
    ``allowed_hosts``: the Host headers accepted (e.g. the compose service name
    ``mlflow:5000``); needed when clients reach the server by another name. ``None``: see
    :func:`default_allowed_hosts` (on loopback, ``localhost:PORT`` and ``127.0.0.1:PORT``).
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least one server worker")
    argv = [
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(int(port)),
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        str(int(workers)),
    ]
    if allowed_hosts is None:
        allowed_hosts = default_allowed_hosts(host, int(port))
    if allowed_hosts:
        argv += ["--allowed-hosts", ",".join(allowed_hosts)]
    return argv


def mlflow_server_env() -> dict[str, str]:
    """Environment for the server process: no background job runner, no telemetry.

    Job execution (on by default in 3.x) starts extra workers and slows start-up; s2ap does not use
    it.
    """
    return {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def mlflow_executable() -> list[str]:
    """The command that runs this environment's MLflow CLI (the ``mlflow`` next to Python)."""
    beside = Path(sys.executable).with_name("mlflow")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlflow")
    return [found] if found else [sys.executable, "-m", "mlflow"]


class MlflowServerError(RuntimeError):
    """The MLflow server did not start or stop as expected."""


class MlflowServer:
    """Run ``mlflow server`` as a child process in its own process group.

    ``with MlflowServer(backend_store_uri=..., artifacts_destination=..., log_dir=...) as srv:``
    starts it, waits for ``/health`` and exposes :attr:`url`; leaving the block stops it by PID
    (SIGTERM to its process group, SIGKILL after ``stop_timeout_s``). Output goes to
    ``<log_dir>/mlflow-server.log``; the server's working directory is ``log_dir`` so nothing is
    written to the caller's cwd.
    """

    def __init__(
        self,
        *,
        backend_store_uri: str,
        artifacts_destination: str | os.PathLike[str],
        log_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int | None = None,
        workers: int = 1,
        allowed_hosts: list[str] | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = os.fspath(artifacts_destination)
        self.log_dir = Path(log_dir).absolute()
        self.log_path = self.log_dir / "mlflow-server.log"
        self.workers = workers
        self.allowed_hosts = allowed_hosts
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Tracking URI of the server, e.g. ``http://127.0.0.1:5123``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        """The argv that is run (``mlflow`` resolved to this environment's executable)."""
        argv = mlflow_server_command(
            host=self.host,
            port=self.port,
            backend_store_uri=self.backend_store_uri,
            artifacts_destination=self.artifacts_destination,
            workers=self.workers,
            allowed_hosts=self.allowed_hosts,
        )
        return mlflow_executable() + argv[1:]

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The end of the server log (for error messages)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", "replace")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """True if ``GET /health`` answers 200."""
        return server_answers(self.url, timeout_s)

    def start(self) -> MlflowServer:
        """Start the server and wait until ``/health`` answers; raise MlflowServerError if not."""
        if self.is_running():
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **mlflow_server_env(), **self.extra_env}
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.log_dir,
            env=env,
            start_new_session=True,  # own process group: stop() signals the server and workers
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._close_log()
                raise MlflowServerError(
                    f"mlflow server exited with code {code} while starting on {self.url}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy(timeout_s=1.0):
                return self
            time.sleep(0.2)
        self.stop()
        raise MlflowServerError(
            f"mlflow server did not answer {self.url}/health within {self.startup_timeout_s:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # pgid == pid: start_new_session=True

    def stop(self) -> None:
        """Stop the server by PID: SIGTERM its process group, SIGKILL after ``stop_timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=self.stop_timeout_s)
        # Workers left behind in the group (the main process died first) are killed too.
        self._signal_group(signal.SIGKILL)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> MlflowServer:
        """Stop and start again on the same port and store (used by the outage test)."""
        self.stop()
        self.process = None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:  # the old socket may linger a moment
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((self.host, self.port))
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise MlflowServerError(
                        f"port {self.port} is still in use after stopping the server"
                    ) from exc
                time.sleep(0.2)
        return self.start()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
