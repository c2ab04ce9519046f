"""A throw-away PostgreSQL server for the tests: ``initdb`` in a temp dir, stopped by PID.

:class:`LocalPostgres` is the database the docker recipes put behind ``mlflow server``
(``postgresql+psycopg://...``), run on 127.0.0.1 with trust authentication. It never touches a
system PostgreSQL: its own data directory and socket directory under ``/tmp``, a free port, and
a ``postgres`` process it started itself and stops by PID. PostgreSQL refuses to run as root,
so when the tests run as root (containers, CI) the server runs as ``nobody`` and the temp dir
belongs to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tracking.server import free_port

if TYPE_CHECKING:
    import psycopg

__all__ = ["LocalPostgres", "PostgresError", "server_binaries"]

#: Where Debian's ``postgresql-NN`` packages put the server programs (not on PATH there).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The account the server runs as when the tests run as root.
UNPRIVILEGED_USER = "nobody"
INSTALL_HINT = (
    "`make test` installs it (Debian's `postgresql` package); by hand: "
    "apt-get install --no-install-recommends postgresql"
)


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, started or stopped (the message says why)."""


def _psycopg() -> Any:
    """The psycopg 3 module, or a PostgresError naming the fix."""
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresError(
            "psycopg (the PostgreSQL driver of the recipes' postgresql+psycopg:// URIs) is not "
            "installed: `make install` installs it with the dev extra"
        ) from exc
    return psycopg


def _version_key(folder: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/17/bin`` -> ``(17,)``: newest major version first when sorted."""
    return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name))


def server_binaries() -> Path:
    """The folder holding ``initdb`` and ``postgres``: PATH first, then Debian's layout."""
    on_path = shutil.which("initdb")
    candidates = [str(Path(on_path).resolve().parent)] if on_path else []
    candidates += sorted(glob.glob(DEBIAN_BIN_GLOB), key=_version_key, reverse=True)
    for folder in candidates:
        if all(os.access(Path(folder, name), os.X_OK) for name in ("initdb", "postgres")):
            return Path(folder)
    raise PostgresError(
        f"no PostgreSQL server (initdb, postgres) on PATH or under {DEBIAN_BIN_GLOB}: "
        + INSTALL_HINT
    )


def _run_as() -> dict[str, Any]:
    """``subprocess`` keywords that drop root to :data:`UNPRIVILEGED_USER` (nothing otherwise)."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError as exc:
        raise PostgresError(
            f"running as root, and PostgreSQL refuses root: no {UNPRIVILEGED_USER!r} user to "
            "run it as"
        ) from exc
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1 with one database, started and stopped by PID::

        with LocalPostgres(database="mlflow", user="mlflow") as pg:
            pg.sqlalchemy_uri()    # "postgresql+psycopg://mlflow@127.0.0.1:PORT/mlflow"
            with pg.connect() as conn:
                conn.execute("select 1")

    ``start()`` runs ``initdb`` (trust authentication, ``user`` as superuser) into a fresh temp
    dir and ``postgres`` in the foreground in its own process group, waits until it accepts
    connections and creates ``database``. ``stop()`` asks for a fast shutdown (SIGINT), kills
    the process group if that does not finish in ``stop_timeout_s`` and removes the temp dir.
    """

    def __init__(
        self,
        *,
        database: str = "mlflow",
        user: str = "mlflow",
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        self.database = database
        self.user = user
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the ``postgres`` server process (also its process group id)."""
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> Path:
        return self._root() / "postgres.log"

    def sqlalchemy_uri(self, driver: str = "psycopg") -> str:
        """The backend store URI of ``mlflow server`` (the recipes' form, without a password)."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self._port()}/{self.database}"

    def connect(self, database: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection over TCP (as clients on other machines would connect)."""
        return _psycopg().connect(
            host=self.host,
            port=self._port(),
            user=self.user,
            dbname=database or self.database,
            connect_timeout=5,
            **kwargs,
        )

    def _port(self) -> int:
        if self.port is None or self.process is None:
            raise PostgresError("LocalPostgres is not started: call start() or use `with`")
        return self.port

    def _root(self) -> Path:
        if self.root is None:
            raise PostgresError("LocalPostgres has no temp dir yet: call start()")
        return self.root

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalPostgres:
        """initdb, start the server, wait until it answers, create the database."""
        if self.process is not None:
            raise PostgresError("LocalPostgres is already started")
        binaries = server_binaries()
        run_as = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="s2pg-", dir="/tmp"))  # short: socket path
        if run_as:
            os.chown(self.root, run_as["user"], run_as["group"])
        try:
            self._initdb(binaries, run_as)
            self._launch(binaries, run_as)
            self._wait_ready()
            with self.connect("postgres", autocommit=True) as conn:
                sql = _psycopg().sql
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        except BaseException:
            self.stop()
            raise
        return self

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/tmp"}

    def _initdb(self, binaries: Path, run_as: dict[str, Any]) -> None:
        argv = [
            str(binaries / "initdb"),
            "--pgdata", str(self._root() / "data"),
            "--username", self.user,
            "--auth", "trust",  # local and loopback connections only (pg_hba.conf defaults)
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",  # a throw-away cluster: no fsync of the fresh files
            "--no-instructions",
        ]  # fmt: skip
        done = subprocess.run(
            argv, cwd=self._root(), env=self._env(), capture_output=True, text=True, **run_as
        )
        if done.returncode != 0:
            raise PostgresError(
                f"initdb failed with exit code {done.returncode}:\n{done.stdout}{done.stderr}"
            )

    def _launch(self, binaries: Path, run_as: dict[str, Any]) -> None:
        self.port = free_port(self.host)
        argv = [
            str(binaries / "postgres"),
            "-D", str(self._root() / "data"),
            "-k", str(self._root()),  # the unix socket stays in the temp dir, not /var/run
            "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            "-c", "fsync=off",  # throw-away data: durability buys nothing here
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv,
            cwd=self._root(),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches every backend
            **run_as,
        )

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The end of the server log (for error messages)."""
        with contextlib.suppress(OSError, PostgresError):
            return self.log_path.read_bytes()[-n_bytes:].decode("utf-8", "replace")
        return ""

    def _wait_ready(self) -> None:
        psycopg = _psycopg()
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise PostgresError(
                    f"postgres exited with code {self.process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with self.connect("postgres"):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"postgres did not accept connections on {self.host}:{self.port} within "
                        f"{self.start_timeout_s:.0f}s ({exc}); log:\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.1)

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # pgid == pid: start_new_session=True

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL to the group after ``stop_timeout_s``;
        remove the temp dir. Idempotent."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    # The server and its backends (same group); signalled before it is reaped,
                    # so the group id cannot belong to anyone else yet.
                    self._signal_group(signal.SIGKILL)
                    self.process.wait(timeout=10)
        finally:
            self.process = None
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
