"""Pre-flight: everything a study's trials will need, checked before Ray starts, in seconds.

Without it a bad input surfaces late: an image folder that is not there fails the first trial
about 100 s after the launch (Ray up, dense model built), a tracking server that is down keeps
the driver waiting out MLflow's retries for minutes, a Ray address nobody answers on waits for
Ray's own timeout. :func:`preflight` runs, in this order (cheap and local first, network last):

1. storage: ``study.storage_root`` and ``--ray-temp-dir`` can be created and written (not
   under a file, not read-only, not ``/proc``), and Ray's socket paths fit under the temp dir;
2. this machine (a local runtime): one trial's ``study.resources`` fit its CPUs and GPUs;
3. data (:mod:`s2ap.data.checks`): the source's files, options and the validation split;
4. tracking: an http(s) server answers ``GET /health`` within :data:`TRACKING_TIMEOUT_S`
   (``--wait-for-tracking`` gives a server that is starting more time), an sqlite store's
   folder can be created and an existing file is an SQLite database, a database server's port
   is open and its driver installed;
5. the cluster (``--address``): something answers on the address.

:func:`preflight_submit` is the part that applies to ``s2ap submit`` (the job runs on the
cluster, so only what does not depend on this machine's files, plus the dashboard address).
Every check raises :class:`~tune.study.file.StudyError` (exit code 2): one message naming the
field, flag or URL and the fix. Nothing is created.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from tune.common.inputs import UserError, check_writable_folder
from tune.driver.options import LaunchOptions
from tune.study.file import Study, StudyError

__all__ = [
    "NETWORK_TIMEOUT_S",
    "TRACKING_TIMEOUT_S",
    "check_ray_address",
    "check_tracking",
    "preflight",
    "preflight_submit",
]

#: How long the tracking server may take to answer ``GET /health`` (a healthy one: ~10 ms).
TRACKING_TIMEOUT_S = 3.0
#: How long a TCP port (a Ray head, a dashboard, a database server) may take to accept.
NETWORK_TIMEOUT_S = 3.0
#: Ray puts its Unix sockets at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
#: (64 bytes after the temp dir with a 7-digit pid) and a socket path holds at most 107 bytes.
_RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
_MAX_SOCKET_PATH = 107
_SQLITE_HEADER = b"SQLite format 3\x00"
#: SQLAlchemy dialect(+driver) -> (the module it imports, what to install); dialect -> port.
_DB_DRIVERS = {
    "postgresql": ("psycopg2", "pip install psycopg2-binary"),
    "postgresql+psycopg2": ("psycopg2", "pip install psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "pip install 'psycopg[binary]'"),
    "postgresql+pg8000": ("pg8000", "pip install pg8000"),
    "mysql": ("MySQLdb", "pip install mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "pip install mysqlclient"),
    "mysql+pymysql": ("pymysql", "pip install pymysql"),
    "mssql": ("pyodbc", "pip install pyodbc"),
    "mssql+pyodbc": ("pyodbc", "pip install pyodbc"),
    "mssql+pymssql": ("pymssql", "pip install pymssql"),
}
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}

T = TypeVar("T")


# --- helpers --------------------------------------------------------------------------------
def _bounded(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()`` in a thread, given ``timeout_s`` (a name lookup is not covered by socket
    timeouts); raises :class:`TimeoutError` when it takes longer (the thread is left to end)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="s2ap-preflight", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _tcp_problem(host: str, port: int, timeout_s: float = NETWORK_TIMEOUT_S) -> str | None:
    """Why nothing accepts on ``host:port`` (refused, no answer, unknown host), or ``None``."""

    def connect() -> None:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass

    try:
        _bounded(connect, timeout_s + 1.0)
    except socket.gaierror as exc:
        return f"unknown host {host!r} ({exc.strerror or exc})"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _redact(uri: str) -> str:
    """``uri`` without the password of its user info (``user:***@host``)."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", uri)


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _study_error(exc: Exception) -> StudyError:
    return StudyError(str(exc))


# --- 1. storage -------------------------------------------------------------------------------
def _check_storage(study: Study, options: LaunchOptions) -> None:
    try:
        check_writable_folder(study.storage_root, "study.storage_root")
        if options.ray_temp_dir:
            check_writable_folder(options.ray_temp_dir, "--ray-temp-dir")
    except UserError as exc:
        raise _study_error(exc) from None
    if options.ray_temp_dir and _is_local(options.address):
        temp = str(Path(options.ray_temp_dir).absolute())
        room = _MAX_SOCKET_PATH - _RAY_SOCKET_SUFFIX
        if len(temp.encode()) > room:
            raise StudyError(
                f"--ray-temp-dir {temp}: {len(temp.encode())} bytes is too long for Ray's "
                f"sockets (Unix socket paths hold {_MAX_SOCKET_PATH} bytes and Ray adds "
                f"{_RAY_SOCKET_SUFFIX}: at most {room} here); give a shorter path, e.g. "
                "/tmp/ray-s2ap"
            )


# --- 2. this machine ----------------------------------------------------------------------------
def _is_local(address: str | None) -> bool:
    return address in (None, "", "local")


def _machine_gpus() -> int | None:
    """NVIDIA GPUs a local Ray runtime would see (``CUDA_VISIBLE_DEVICES`` and the device
    files); ``None`` when unknown (not Linux, another vendor's GPU): the check is skipped."""
    if not sys.platform.startswith("linux"):
        return None
    devices = [p for p in Path("/dev").glob("nvidia*") if p.name[6:].isdigit()]
    if not devices and Path("/dev/kfd").exists():
        return None  # an AMD GPU: Ray counts it too
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(devices)
    ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    return min(len(ids), len(devices))


def _check_machine(study: Study, options: LaunchOptions) -> None:
    """A local runtime (started here, not yet up) must hold one trial: Ray would leave the
    trials PENDING forever. A cluster is checked once joined (:mod:`tune.driver.ray_runtime`)."""
    if not _is_local(options.address):
        if options.num_cpus is not None or options.num_gpus is not None:
            raise StudyError(
                "--num-cpus/--num-gpus size a local Ray runtime; a cluster (--address) has its "
                "own; drop them"
            )
        return
    if options.skip_resource_check or _ray_is_up():
        return
    res = study.settings.resources
    cpus = options.num_cpus if options.num_cpus is not None else os.cpu_count() or 1
    if res.cpu > cpus + 1e-9:
        given = "--num-cpus" if options.num_cpus is not None else "this machine"
        raise StudyError(
            f"study.resources.cpu: each trial asks for {res.cpu:g} CPUs but {given} has "
            f"{cpus}, so no trial could start; lower study.resources.cpu, or run on a cluster "
            "(--address)"
        )
    if res.gpu <= 0:
        return
    gpus = options.num_gpus if options.num_gpus is not None else _machine_gpus()
    if gpus is not None and res.gpu > gpus + 1e-9:
        given = f"--num-gpus {gpus}" if options.num_gpus is not None else "this machine"
        has = "no GPU" if gpus == 0 else f"only {gpus} GPUs"
        raise StudyError(
            f"study.resources.gpu: each trial asks for {res.gpu:g} GPU but the local Ray "
            f"runtime has {has} ({given}), so no trial could start; set study.resources.gpu: 0 "
            "(and device: auto or cpu) to train on CPUs, or run on a machine or cluster with GPUs"
        )


# --- 3. data ------------------------------------------------------------------------------------
def _check_data(study: Study, *, files: bool = True) -> None:
    from s2ap.data.checks import DataCheckError, check_data

    try:
        download_into = check_data(study.run_config.data, files=files)
        if download_into is not None:
            check_writable_folder(download_into, "data.root (the download goes there)")
    except (DataCheckError, UserError) as exc:
        raise StudyError(f"{study.path or 'study'}: {exc}") from None


# --- 4. tracking --------------------------------------------------------------------------------
def _http_reason(exc: BaseException) -> str:
    """The short reason inside a requests error (``[Errno 111] Connection refused``)."""
    cause = exc.__cause__ or exc
    text = str(cause)
    found = re.findall(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if found:
        return found[-1].strip()
    if "timed out" in text.lower() or "timeout" in type(cause).__name__.lower():
        return "no answer in time"
    return type(cause).__name__


def _check_http(uri: str, field: str, wait_s: float, err: IO[str] | None) -> None:
    from tracking.client import TrackingUnavailableError, check_tracking_server, server_answers

    if wait_s > 0 and not server_answers(uri, timeout_s=TRACKING_TIMEOUT_S):
        print(f"waiting up to {wait_s:g} s for the MLflow server at {uri}", file=err, flush=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not server_answers(uri, timeout_s=1.0):
            time.sleep(1.0)
    try:
        _bounded(lambda: check_tracking_server(uri, TRACKING_TIMEOUT_S), TRACKING_TIMEOUT_S + 2)
    except TimeoutError:
        reason = f"no answer within {TRACKING_TIMEOUT_S:g} s"
    except TrackingUnavailableError as exc:
        if "unreachable" not in str(exc):
            raise StudyError(f"{field}: {exc}") from None  # it answered, but not as MLflow
        reason = _http_reason(exc)
    else:
        return
    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
    raise StudyError(
        f"{field} {uri}: the MLflow server does not answer GET /health ({reason}){waited}. "
        "Start it (`mlflow server`, or the docker compose mlflow service), fix the URI, give "
        "a server that is starting time with --wait-for-tracking SECONDS, or leave the URI "
        "unset to track to <storage_root>/mlflow.db"
    )


def _check_sqlite(db: Path, field: str) -> None:
    try:
        check_writable_folder(db.parent, field)
    except UserError as exc:
        raise _study_error(exc) from None
    if db.is_dir():
        raise StudyError(f"{field}: {db} is a folder; the sqlite store is a file (mlflow.db)")
    if db.is_file() and db.stat().st_size > 0:
        with db.open("rb") as fh:
            header = fh.read(len(_SQLITE_HEADER))
        if header != _SQLITE_HEADER:
            raise StudyError(
                f"{field}: {db} is not an SQLite database (MLflow would fail on it); point the "
                "URI at an MLflow store, or at a new file"
            )


def _check_database(uri: str, field: str) -> None:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    dialect = scheme.split("+", 1)[0]
    shown = _redact(uri)
    driver = _DB_DRIVERS.get(scheme)
    if driver and importlib.util.find_spec(driver[0]) is None:
        raise StudyError(
            f"{field} {shown}: MLflow reaches this database through the {driver[0]!r} "
            f"package, which is not installed ({driver[1]})"
        )
    if not parts.hostname:
        return  # a socket or a driver-specific target: left to MLflow
    port = parts.port or _DB_PORTS.get(dialect)
    if port is None:
        return
    problem = _tcp_problem(parts.hostname, port)
    if problem:
        raise StudyError(
            f"{field} {shown}: no database server answers at {parts.hostname}:{port} "
            f"({problem}); start it or fix the URI"
        )


def check_tracking(
    tracking_uri: str, field: str, *, wait_s: float = 0.0, err: IO[str] | None = None
) -> None:
    """The MLflow store at ``tracking_uri`` can be used (see the module docstring); ``field``
    names where the URI came from (``--tracking-uri``, ``study.tracking_uri``)."""
    from tracking.client import is_http, sqlite_path

    if is_http(tracking_uri):
        _check_http(tracking_uri, field, wait_s, err)
        return
    db = sqlite_path(tracking_uri)
    if db is not None:
        _check_sqlite(db, field)
    elif urlsplit(tracking_uri).scheme.split("+", 1)[0].lower() in _DB_PORTS:
        _check_database(tracking_uri, field)


# --- 5. the cluster -----------------------------------------------------------------------------
def _auto_address() -> str:
    """What ``ray.init(address="auto")`` would join (``RAY_ADDRESS``, the last ``ray start`` on
    this machine, a running GCS), by Ray's own lookup."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return str(canonicalize_bootstrap_address_or_die("auto"))
    except (ConnectionError, ValueError) as exc:
        raise StudyError(
            f"--address auto: no running Ray cluster found on this machine ({exc}); start one "
            "(`ray start --head`), give the head's HOST:PORT, or leave --address out for a "
            "local runtime"
        ) from None


def check_ray_address(address: str) -> None:
    """Something accepts connections at the Ray cluster ``address`` (``auto``, ``HOST:PORT``
    of the head's GCS, ``ray://HOST:PORT``); a dashboard URL is refused with the command that
    takes it."""
    given = address.strip()
    if given.startswith(("http://", "https://")):
        raise StudyError(
            f"--address {given}: is a dashboard URL; `s2ap tune --address` joins a cluster by "
            "its head's HOST:PORT (the GCS, 6379 by default) or auto on a cluster node. To send "
            f"the study to the cluster as a job, use `s2ap submit STUDY.yaml --address {given}`"
        )
    target, default_port = given, 6379
    if given == "auto":
        target = _auto_address()
    elif given.startswith("ray://"):
        target, default_port = given.removeprefix("ray://"), 10001
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, str(default_port)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StudyError(
            f"--address {given}: expected HOST:PORT of the Ray head (e.g. 10.0.0.5:6379), "
            "ray://HOST:PORT or auto"
        )
    problem = _tcp_problem(host.strip("[]"), int(port_text))
    if problem:
        raise StudyError(
            f"--address {given}: nothing answers at {host}:{port_text} ({problem}); check the "
            "address (the head's GCS port, 6379 by default) and that the cluster is up "
            "(`ray status` on the head)"
        )


def _check_dashboard(address: str) -> None:
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StudyError(
            f"--address {address}: expected the head's dashboard URL, http://HEAD:8265"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise StudyError(
            f"--address {address}: the port is not a number; give http://HEAD:8265"
        ) from None
    problem = _tcp_problem(parts.hostname, port)
    if problem:
        raise StudyError(
            f"--address {address}: no Ray dashboard answers at {parts.hostname}:{port} "
            f"({problem}); give the head's dashboard URL (http://HEAD:8265) and check that the "
            "cluster is up"
        )


# --- entry points -------------------------------------------------------------------------------
def preflight(
    study: Study, options: LaunchOptions, tracking_uri: str, *, err: IO[str] | None = None
) -> None:
    """Every check of the module docstring, before Ray starts; raises :class:`StudyError`."""
    _check_storage(study, options)
    _check_machine(study, options)
    _check_data(study)
    field = "--tracking-uri" if options.tracking_uri else "study.tracking_uri"
    check_tracking(tracking_uri, field, wait_s=options.wait_for_tracking, err=err)
    if not _is_local(options.address) and not _ray_is_up():
        check_ray_address(str(options.address))


def preflight_submit(study: Study, address: str) -> None:
    """What applies to ``s2ap submit``: the data checks that need no local files (the job
    reads the cluster's), and a dashboard that answers at ``address``."""
    _check_data(study, files=False)
    _check_dashboard(address)
