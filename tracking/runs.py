"""MLflow runs for studies and trials: one experiment per study, one parent run, nested trial runs.

Design points (see ../shared/DESIGN.md, "MLflow 3.17"):

* Only explicit run ids through :class:`mlflow.tracking.MlflowClient`; never the fluent
  ``mlflow.start_run`` global state, because Ray may run several trials in one worker process.
* Runs are found again by tags (``s2ap.study`` + ``s2ap.role=study`` for the parent,
  ``s2ap.trial_id`` under the parent for a trial), so resuming a study or restarting a trial reuses
  its run instead of creating a duplicate (what Ray's MLflowLoggerCallback does after a restore).
* Every write goes through retry + the local outbox (:mod:`tracking.outbox`): an MLflow outage of
  a few seconds or minutes loses nothing.
* Params are immutable in MLflow: a resumed trial logs only the params it lacks, and a changed
  value raises :class:`ParamConflictError` instead of an opaque server error.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from tracking.artifacts import (
    MASK_SUFFIX,
    STATE_DICT_SUFFIX,
    config_hash,
    read_mask_header,
    save_masks,
    save_state_dict,
)
from tracking.outbox import (
    DEFAULT_RETRY,
    NO_RETRY,
    Outbox,
    RetryPolicy,
    call_with_retry,
    describe_op,
    execute_op,
    is_transient,
)

_log = logging.getLogger(__name__)

# Tag names (one place, so pull.py, the CLI and the tests agree).
TAG_STUDY = "s2ap.study"
TAG_ROLE = "s2ap.role"
TAG_TRIAL_ID = "s2ap.trial_id"
TAG_PHASE = "s2ap.phase"
TAG_CONFIG_HASH = "s2ap.config_hash"
TAG_DEVICE = "s2ap.device"
TAG_PARENT = "mlflow.parentRunId"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
PRIMARY_METRIC = "val_robust_acc"

#: Experiment tags that make the MLflow 3.17 UI open the model-training view with our objective.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.experiment.primaryMetric.name": PRIMARY_METRIC,
    "mlflow.experiment.primaryMetric.greaterIsBetter": "true",
}
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store or server cannot be reached."""


class ParamConflictError(ValueError):
    """A run already has a param with a different value (MLflow params are write-once)."""


# --------------------------------------------------------------------------------------------
# URIs, clients, server checks

_SQL_SCHEMES = ("postgresql", "mysql", "mssql")


def resolve_tracking_uri(uri: str | None, storage_root: str | os.PathLike[str]) -> str:
    """Return the tracking URI to use, or raise ``ValueError`` explaining what to use instead.

    ``None``/empty -> ``sqlite:////<abs storage_root>/mlflow.db`` (embedded, single machine).
    ``http(s)://`` servers, absolute ``sqlite:////...`` files and SQLAlchemy database URIs are
    kept. Relative sqlite paths and file stores are rejected: Ray trials ``chdir`` into their own
    folders (so a relative path means a different database per trial), and MLflow >= 3.13 refuses
    ``file:``/``./mlruns`` stores.
    """
    if not uri:
        db = Path(storage_root).expanduser().absolute() / "mlflow.db"
        return f"sqlite:///{db}"
    uri = uri.strip()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ValueError(
                f"tracking_uri {uri!r}: an in-memory sqlite store vanishes with the process; use "
                "sqlite:////absolute/path/mlflow.db or leave tracking_uri unset"
            )
        if not path.startswith("/"):
            raise ValueError(
                f"tracking_uri {uri!r} is a relative sqlite path; Ray trials change directory, so "
                "each would open a different database. Use four slashes and an absolute path "
                f"(sqlite:///{Path(path).absolute()}) or leave tracking_uri unset to use "
                "<storage_root>/mlflow.db"
            )
        return uri
    if scheme.split("+", 1)[0] in _SQL_SCHEMES or scheme == "databricks":
        return uri
    if scheme == "file" or not scheme or uri.startswith((".", "/", "~")):
        raise ValueError(
            f"tracking_uri {uri!r} is a file store; MLflow 3.13+ rejects file stores. Use an "
            "absolute sqlite URI (sqlite:////abs/path/mlflow.db), an http://host:port MLflow "
            "server, or leave tracking_uri unset to use <storage_root>/mlflow.db"
        )
    raise ValueError(
        f"tracking_uri {uri!r}: unsupported scheme {scheme!r}; use http(s)://host:port, "
        "sqlite:////abs/path/mlflow.db or a SQLAlchemy database URI (postgresql://...)"
    )


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def make_client(tracking_uri: str) -> MlflowClient:
    """Create a client for ``tracking_uri`` (creating an sqlite store's folder if needed).

    For http servers this sets defaults (only where the user has not set them) for MLflow's own
    HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=60``):
    retrying is done by :func:`tracking.outbox.call_with_retry`, whose budget the caller controls;
    MLflow's default would block a trial for minutes while the server is down.
    """
    db = _sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    if _is_http(tracking_uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    return MlflowClient(tracking_uri=tracking_uri)


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, if the tracking store cannot be used.

    http(s): ``GET <uri>/health`` must answer 200. sqlite: the database folder must be writable.
    Raises :class:`TrackingUnavailableError` naming the problem and the fix.
    """
    if _is_http(uri):
        import requests

        url = uri.rstrip("/") + "/health"
        try:
            resp = requests.get(url, timeout=timeout_s)
        except requests.RequestException as exc:
            raise TrackingUnavailableError(
                f"MLflow server at {uri} is unreachable ({type(exc).__name__}: {exc}). Start it "
                "(`s2ap ui`, `mlflow server`, or the docker compose mlflow service), or fix "
                "tracking_uri / MLFLOW_TRACKING_URI"
            ) from exc
        if resp.status_code == 403 and "host" in resp.text.lower():
            raise TrackingUnavailableError(
                f"MLflow server at {uri} rejected this client's Host header "
                f"({resp.text.strip()!r}); start the server with --allowed-hosts including "
                "the host name used here"
            )
        if resp.status_code != 200:
            raise TrackingUnavailableError(
                f"MLflow server at {uri} answered {url} with HTTP {resp.status_code} "
                f"({resp.text.strip()[:200]!r}); is this an MLflow server, and is it healthy?"
            )
        return
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailableError(
                f"cannot create the folder {db.parent} for the MLflow database: {exc}"
            ) from exc
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailableError(
                f"MLflow database {db} is not writable by this user; fix its permissions or choose "
                "another storage_root"
            )


# --------------------------------------------------------------------------------------------
# params, tags, versions


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value), default=str)
    else:
        text = str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params: ``{"a": {"b": 1}} -> {"a.b": "1"}``.

    Lists become JSON (``"[1, 2]"``), scalars ``str(value)``; empty dicts ``"{}"``.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten_params(value, name))
            else:
                flat[name] = "{}"
        else:
            flat[name] = _param_value(value)
    return flat


def _tag_value(value: Any) -> str:
    return (value if isinstance(value, str) else str(value))[:MAX_TAG_VAL_LENGTH]


@functools.lru_cache(maxsize=1)
def version_tags() -> dict[str, str]:
    """Tags recording what produced a run: s2ap/torch/mlflow/python versions and the git commit."""
    try:
        s2ap_version = importlib.metadata.version("s2ap")
    except importlib.metadata.PackageNotFoundError:
        s2ap_version = "unknown"
    tags = {
        "s2ap.version": s2ap_version,
        "s2ap.torch_version": torch.__version__,
        "s2ap.mlflow_version": mlflow.__version__,
        "s2ap.python_version": platform.python_version(),
    }
    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        tags["s2ap.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def _quote(value: str) -> str:
    """Quote a value for an MLflow filter string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} contains both quote characters; use an id without quotes")


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars / 1-element arrays
        try:
            item = value.item()
        except (ValueError, TypeError):
            return None
        return float(item) if isinstance(item, (bool, int, float)) else None
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '.' or '-' only")


# --------------------------------------------------------------------------------------------
# the shared writer


class _RunWriter:
    """Writes to one MLflow run through retry + outbox. Subclasses find or create the run."""

    tracking_uri: str
    run_id: str
    storage_root: Path
    _client: MlflowClient
    _retry: RetryPolicy
    _outbox: Outbox
    _params: dict[str, str]

    def _init_writer(
        self, tracking_uri: str, storage_root: str | os.PathLike[str], key: str, retry: RetryPolicy
    ) -> None:
        self.tracking_uri = tracking_uri
        self.storage_root = Path(storage_root).absolute()
        self._client = make_client(tracking_uri)
        self._retry = retry
        self._outbox = Outbox(self.storage_root, key)
        self._lock = threading.RLock()
        self._warned_outage = False
        self._finished = False
        self._params = {}

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, fn: Any, what: str) -> Any:
        """A read or run-creating call: retried, and raised as TrackingUnavailableError."""
        try:
            return call_with_retry(fn, self._retry, what)
        except Exception as exc:
            if is_transient(exc):
                raise TrackingUnavailableError(
                    f"MLflow at {self.tracking_uri} did not answer {what} within "
                    f"{self._retry.total_s:.0f}s ({exc}); check that the server is up"
                ) from exc
            raise

    def _client_for(self, uri: str) -> MlflowClient:
        return self._client if uri == self.tracking_uri else make_client(uri)

    def _replay(self, policy: RetryPolicy) -> bool:
        """Send what the outbox holds; True if it is empty afterwards."""
        if not self._outbox.path.exists():
            return True
        try:
            self._outbox.replay(self._client_for, policy)
        except Exception as exc:
            if not is_transient(exc):
                raise
        empty = not self._outbox.path.exists()
        if empty and self._warned_outage:
            _log.warning("MLflow at %s is back; sent the queued operations", self.tracking_uri)
            self._warned_outage = False
        return empty

    def _submit(self, op: dict[str, Any]) -> bool:
        """Execute a write now, or queue it behind earlier queued writes. True if sent now."""
        with self._lock:
            if not self._replay(NO_RETRY):
                self._outbox.append(op, self.tracking_uri)
                return False
            try:
                call_with_retry(lambda: execute_op(self._client, op), self._retry, describe_op(op))
                return True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._outbox.append(op, self.tracking_uri)
                if not self._warned_outage:
                    _log.warning(
                        "MLflow at %s unavailable (%s); queueing writes in %s until it is back",
                        self.tracking_uri,
                        exc,
                        self._outbox.path,
                    )
                    self._warned_outage = True
                return False

    # -- public writes ---------------------------------------------------------------------
    def log_metrics(
        self, metrics: Mapping[str, Any], step: int, *, timestamp_ms: int | None = None
    ) -> None:
        """Log numeric metrics at ``step`` (the epoch). Strings become tags ``s2ap.<key>``
        (so ``{"phase": "prune"}`` sets ``s2ap.phase``); other non-numeric values are ignored."""
        ts = _now_ms() if timestamp_ms is None else int(timestamp_ms)
        values: list[list[Any]] = []
        tags: list[list[str]] = []
        for key, value in metrics.items():
            number = _to_number(value)
            if number is not None:
                values.append([str(key), number, ts, int(step)])
            elif isinstance(value, str):
                tags.append([f"s2ap.{key}", _tag_value(value)])
        if values or tags:
            self._submit(
                {"op": "log_batch", "run_id": self.run_id, "metrics": values, "tags": tags}
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (overwrite) run tags; values are converted to strings."""
        items = [[str(k), _tag_value(v)] for k, v in tags.items()]
        if items:
            self._submit({"op": "log_batch", "run_id": self.run_id, "tags": items})

    def set_phase(self, phase: str) -> None:
        """Record the trial's current phase (``warmup``, ``prune``, ``finetune``, ...)."""
        self.set_tags({TAG_PHASE: phase})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested dicts are flattened with dots). Already-logged identical values are
        skipped; a different value raises :class:`ParamConflictError`."""
        flat = self._check_params(params)
        missing = [[k, v] for k, v in flat.items() if k not in self._params]
        if missing:
            self._submit({"op": "log_batch", "run_id": self.run_id, "params": missing})
            self._params.update(dict(missing))

    def _check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Flatten ``params``; raise ParamConflictError if any differs from a logged value."""
        flat = flatten_params(params)
        conflicts = {
            k: (self._params[k], v)
            for k, v in flat.items()
            if k in self._params and self._params[k] != v
        }
        if conflicts:
            shown = "; ".join(
                f"{k}: logged {a!r}, now {b!r}" for k, (a, b) in list(conflicts.items())[:10]
            )
            raise ParamConflictError(
                f"run {self.run_id} already has different values for {len(conflicts)} param(s) "
                f"({shown}). MLflow params cannot change: start a new study/trial for a changed "
                "config, or restore the original one"
            )
        return flat

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload a file (or every file under a folder) to the run's artifacts."""
        path = Path(local_path)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.parent.relative_to(path).as_posix()
                dest = "/".join(x for x in (artifact_path, rel if rel != "." else None) if x)
                self.log_artifact(file, dest or None)
            return
        if not path.is_file():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        self._submit(
            {
                "op": "log_artifact",
                "run_id": self.run_id,
                "local_path": str(path.absolute()),
                "artifact_path": artifact_path,
            }
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact ``artifact_file`` (e.g. ``study.yaml``)."""
        self._log_via_tempfile(artifact_file, lambda p: Path(p).write_text(text, encoding="utf-8"))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure as a PNG artifact (e.g. ``plots/stability.png``)."""
        self._log_via_tempfile(artifact_file, lambda p: figure.savefig(p, format="png", dpi=100))

    def _log_via_tempfile(self, artifact_file: str, write: Any) -> None:
        dirname, basename = os.path.split(artifact_file.strip("/"))
        if not basename:
            raise ValueError(f"artifact_file {artifact_file!r} must name a file")
        with tempfile.TemporaryDirectory(prefix="s2ap-artifact-") as tmp:
            path = os.path.join(tmp, basename)
            write(path)
            self.log_artifact(path, dirname or None)

    def pending(self) -> int:
        """Number of writes waiting in this run's outbox."""
        return len(self._outbox)

    def flush(self, policy: RetryPolicy | None = None) -> bool:
        """Try to send queued writes now (retrying per ``policy``); True if nothing is left."""
        with self._lock:
            return self._replay(policy or self._retry)

    def finish(self, status: str = "FINISHED") -> int:
        """Flush the outbox and mark the run ``FINISHED``/``FAILED``/``KILLED``.

        Returns how many writes remain unsent (0 normally); those stay in the outbox for
        :func:`tracking.outbox.flush_outbox`. Calling it twice is harmless.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"finish(status={status!r}): use one of {TERMINAL_STATUSES}")
        with self._lock:
            if self._finished:
                return self.pending()
            self._replay(self._retry)
            self._submit(
                {
                    "op": "set_terminated",
                    "run_id": self.run_id,
                    "status": status,
                    "end_time": _now_ms(),
                }
            )
            self._finished = True
            left = self.pending()
            if left:
                _log.warning(
                    "run %s finished with %d writes not yet sent to %s; they are in %s "
                    "(send them with `flush_outbox` / the s2ap command line)",
                    self.run_id,
                    left,
                    self.tracking_uri,
                    self._outbox.path,
                )
            return left

    def __enter__(self) -> _RunWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED")


def _load_params(run: Any) -> dict[str, str]:
    return dict(run.data.params)


# --------------------------------------------------------------------------------------------
# study


class StudyTracker(_RunWriter):
    """The study's experiment and parent run.

    Use ``start()`` on the driver before trials start; pass :meth:`trial_context` (plain data) to
    each trial so it can :meth:`TrialTracker.open` its nested run.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        study_name: str,
        *,
        study_config: Mapping[str, Any],
        storage_root: str | os.PathLike[str],
        study_text: str | None = None,
        tags: Mapping[str, Any] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not study_name or not study_name.strip():
            raise ValueError("study_name must be a non-empty string")
        self.study_name = study_name
        self.study_config = dict(study_config)
        self.study_text = study_text
        self.extra_tags = dict(tags or {})
        uri = resolve_tracking_uri(tracking_uri, storage_root)
        self._init_writer(uri, storage_root, f"study-{study_name}", retry)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.resumed = False

    @property
    def run_id(self) -> str:  # type: ignore[override]
        if self.parent_run_id is None:
            raise RuntimeError("StudyTracker.start() has not been called yet")
        return self.parent_run_id

    def _artifact_location(self) -> str | None:
        db = _sqlite_path(self.tracking_uri)
        if db is None:
            return None  # a server decides (mlflow-artifacts:/ with --serve-artifacts)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.study_name).strip("._") or "study"
        # Beside the database, never MLflow's default ./mlruns relative to the cwd.
        return (db.parent / "mlartifacts" / slug).as_uri()

    def _ensure_experiment(self) -> str:
        client = self._client
        exp = self._call(lambda: client.get_experiment_by_name(self.study_name), "get_experiment")
        if exp is None:
            try:
                return self._call(
                    lambda: client.create_experiment(
                        self.study_name,
                        artifact_location=self._artifact_location(),
                        tags=EXPERIMENT_TAGS,
                    ),
                    "create_experiment",
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self._call(lambda: client.get_experiment_by_name(self.study_name), "get")
        if exp.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {self.study_name!r} is deleted (in the trash); restore it with "
                f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or use another "
                "study name"
            )
        for key, value in EXPERIMENT_TAGS.items():
            if exp.tags.get(key) != value:
                self._call(
                    lambda k=key, v=value: client.set_experiment_tag(exp.experiment_id, k, v),
                    "set_experiment_tag",
                )
        return exp.experiment_id

    def start(self) -> str:
        """Create or find the experiment and the parent run; return the parent run id.

        Resuming (same study name, same store) reuses the parent run and sets it RUNNING again.
        """
        check_tracking_server(self.tracking_uri)
        client = self._client
        self.experiment_id = self._ensure_experiment()
        flt = (
            f"tags.`{TAG_STUDY}` = {_quote(self.study_name)} AND tags.`{TAG_ROLE}` = '{ROLE_STUDY}'"
        )
        runs = self._call(
            lambda: client.search_runs(
                [self.experiment_id],
                filter_string=flt,
                run_view_type=ViewType.ACTIVE_ONLY,
                order_by=["attributes.start_time ASC"],
                max_results=10,
            ),
            "search_runs(study)",
        )
        tags = {
            **version_tags(),
            **{k: _tag_value(v) for k, v in self.extra_tags.items()},
            TAG_STUDY: self.study_name,
            TAG_ROLE: ROLE_STUDY,
            TAG_CONFIG_HASH: config_hash(self.study_config),
        }
        if runs:
            if len(runs) > 1:
                _log.warning(
                    "study %r has %d parent runs; using the oldest (%s)",
                    self.study_name,
                    len(runs),
                    runs[0].info.run_id,
                )
            run = runs[0]
            self.parent_run_id = run.info.run_id
            self.resumed = True
            self._params = _load_params(run)
            self._check_params(self.study_config)
            if run.info.status != "RUNNING":
                self._call(
                    lambda: client.update_run(run.info.run_id, status="RUNNING"), "update_run"
                )
        else:
            run = self._call(
                lambda: client.create_run(self.experiment_id, run_name=self.study_name, tags=tags),
                "create_run(study)",
            )
            self.parent_run_id = run.info.run_id
        self._finished = False
        self._replay(NO_RETRY)
        self.set_tags(tags)
        self.log_params(self.study_config)
        if self.study_text is not None:
            self.log_text(self.study_text, "study.yaml")
        return self.parent_run_id

    def trial_context(self) -> dict[str, str]:
        """Plain data a Ray trial needs to open its run: ``TrialTracker.open(**ctx, ...)``."""
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.study_name,
            "parent_run_id": self.run_id,
            "storage_root": str(self.storage_root),
        }

    def open_trial(
        self,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> TrialTracker:
        """Open a trial run in this process (tests, local runs); Ray workers call ``open``."""
        return TrialTracker.open(
            **self.trial_context(), trial_id=trial_id, params=params, tags=tags or {}, **kw
        )

    def trials(self) -> list[dict[str, Any]]:
        """Summaries of this study's trial runs: trial_id, run_id, status, params, metrics, tags."""
        client = self._client
        flt = f"tags.`{TAG_PARENT}` = '{self.run_id}' AND tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
        result = []
        token = None
        while True:
            page = self._call(
                lambda t=token: client.search_runs(
                    [self.experiment_id], filter_string=flt, max_results=1000, page_token=t
                ),
                "search_runs(trials)",
            )
            for run in page:
                result.append(
                    {
                        "trial_id": run.data.tags.get(TAG_TRIAL_ID),
                        "run_id": run.info.run_id,
                        "status": run.info.status,
                        "params": dict(run.data.params),
                        "metrics": dict(run.data.metrics),
                        "tags": dict(run.data.tags),
                    }
                )
            token = page.token
            if not token:
                return result

    def log_study_plots(
        self,
        trials: list[Mapping[str, Any]] | None = None,
        *,
        metric: str = PRIMARY_METRIC,
        hyperparameters: tuple[str, ...] = ("rho", "ascent_steps"),
    ) -> list[str]:
        """Log ``plots/<metric>_vs_<hp>.png`` scatter plots over the trials; return artifact paths.

        ``trials`` defaults to :meth:`trials` (finished or not; trials lacking a value are skipped).
        """
        from tracking import plots

        trials = self.trials() if trials is None else trials
        logged = []
        for hp in hyperparameters:
            fig = plots.plot_study_scatter(trials, x=hp, y=metric)
            name = f"plots/{metric}_vs_{hp}.png"
            self.log_figure(fig, name)
            logged.append(name)
        return logged


# --------------------------------------------------------------------------------------------
# trial


class TrialTracker(_RunWriter):
    """One trial's nested MLflow run. Create with :meth:`open` (usable inside a Ray worker)."""

    def __init__(self) -> None:  # use TrialTracker.open
        self.trial_id = ""
        self.experiment_name = ""
        self.experiment_id = ""
        self.parent_run_id = ""
        self.run_id = ""
        self.resumed = False

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment_name: str,
        parent_run_id: str,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        *,
        storage_root: str | os.PathLike[str] | None = None,
        run_name: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> TrialTracker:
        """Find this trial's run under ``parent_run_id`` (by tag ``s2ap.trial_id``) or create it.

        ``params`` is the trial's full config (flattened with dots). On a reopened run only missing
        params are logged; a changed value raises :class:`ParamConflictError`. ``tags`` are added
        to ``s2ap.study``/``s2ap.trial_id``/``s2ap.role``/version tags (pass ``s2ap.device``).
        ``storage_root`` holds the outbox; it defaults to the sqlite database's folder and is
        required for http servers.
        """
        if not trial_id:
            raise ValueError("trial_id must be a non-empty string")
        if storage_root is None:
            db = _sqlite_path(tracking_uri)
            if db is None:
                raise ValueError(
                    "TrialTracker.open: pass storage_root= (where the outbox for unsent writes "
                    f"lives) when tracking to {tracking_uri}"
                )
            storage_root = db.parent
        tracking_uri = resolve_tracking_uri(tracking_uri, storage_root)
        self = cls()
        self._init_writer(tracking_uri, storage_root, trial_id, retry)
        self.trial_id = trial_id
        self.experiment_name = experiment_name
        self.parent_run_id = parent_run_id
        client = self._client

        exp = self._call(lambda: client.get_experiment_by_name(experiment_name), "get_experiment")
        if exp is None:
            raise ValueError(
                f"MLflow experiment {experiment_name!r} does not exist at {tracking_uri}; start "
                "the study first (StudyTracker.start) and pass its trial_context() to the trial"
            )
        self.experiment_id = exp.experiment_id
        flt = (
            f"tags.`{TAG_TRIAL_ID}` = {_quote(trial_id)} AND "
            f"tags.`{TAG_PARENT}` = {_quote(parent_run_id)}"
        )
        runs = self._call(
            lambda: client.search_runs(
                [exp.experiment_id],
                filter_string=flt,
                run_view_type=ViewType.ACTIVE_ONLY,
                order_by=["attributes.start_time ASC"],
                max_results=10,
            ),
            "search_runs(trial)",
        )
        all_tags = {
            **version_tags(),
            **{k: _tag_value(v) for k, v in (tags or {}).items()},
            TAG_STUDY: experiment_name,
            TAG_TRIAL_ID: trial_id,
            TAG_ROLE: ROLE_TRIAL,
            TAG_CONFIG_HASH: config_hash(dict(params)),
        }
        if runs:
            run = runs[0]
            self.resumed = True
            self._params = _load_params(run)
            self.run_id = run.info.run_id
            self._check_params(params)  # before anything is written
            if run.info.status != "RUNNING":
                self._call(
                    lambda: client.update_run(run.info.run_id, status="RUNNING"), "update_run"
                )
        else:
            run = self._call(
                lambda: client.create_run(
                    exp.experiment_id,
                    run_name=run_name or trial_id,
                    tags={**all_tags, TAG_PARENT: parent_run_id},
                ),
                "create_run(trial)",
            )
        self.run_id = run.info.run_id
        self._replay(NO_RETRY)  # writes a previous process of this trial could not send
        self.log_params(params)
        self.set_tags(all_tags)
        return self

    def log_masks(
        self,
        masks: Mapping[str, torch.Tensor],
        header: Mapping[str, Any] | None = None,
        name: str = "final",
    ) -> str:
        """Store masks as the artifact ``masks/<name>.s2mask``; return the payload sha256.

        Also tags the run with ``s2ap.masks.<name>.sha256`` and ``.sparsity``; ``trial_id`` and
        ``study`` are added to the header unless given.
        """
        _check_name(name, "mask name")
        meta = dict(header or {})
        meta.setdefault("study", self.experiment_name)
        meta.setdefault("trial_id", self.trial_id)
        with tempfile.TemporaryDirectory(prefix="s2ap-mask-") as tmp:
            path = os.path.join(tmp, f"{name}{MASK_SUFFIX}")
            sha = save_masks(path, masks, meta)
            sparsity = read_mask_header(path)["global_sparsity"]
            self.log_artifact(path, "masks")
        self.set_tags(
            {
                f"s2ap.masks.{name}.sha256": sha,
                f"s2ap.masks.{name}.sparsity": f"{sparsity:.6f}",
            }
        )
        return sha

    def log_trial_plots(
        self,
        *,
        history: Mapping[str, Any] | None = None,
        hamming: Any = None,
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> list[str]:
        """Log the per-trial plots that have data; return their artifact paths.

        ``history``: metric -> per-epoch series (``plots/training_curves.png``); ``hamming``:
        mask-stability series or dict of series (``plots/mask_stability.png``); ``masks``: the
        final masks (``plots/layer_sparsity.png``). See :mod:`tracking.plots`.
        """
        from tracking import plots

        figures = []
        if history:
            figures.append(("plots/training_curves.png", plots.plot_training_curves(history)))
        if hamming is not None and len(hamming):
            figures.append(("plots/mask_stability.png", plots.plot_mask_stability(hamming)))
        if masks:
            sparsity = plots.layer_sparsity(masks)
            figures.append(("plots/layer_sparsity.png", plots.plot_layer_sparsity(sparsity)))
        for name, fig in figures:
            self.log_figure(fig, name)
        return [name for name, _ in figures]

    def log_state_dict(self, state_dict: Mapping[str, torch.Tensor], name: str = "final") -> str:
        """Store weights as ``weights/<name>.safetensors`` (or ``.pt``); return the artifact path.

        Tags the run with ``s2ap.weights.<name>.sha256``.
        """
        _check_name(name, "weights name")
        filename = f"{name}{STATE_DICT_SUFFIX}"
        with tempfile.TemporaryDirectory(prefix="s2ap-weights-") as tmp:
            path = os.path.join(tmp, filename)
            sha = save_state_dict(path, state_dict)
            self.log_artifact(path, "weights")
        self.set_tags({f"s2ap.weights.{name}.sha256": sha})
        return f"weights/{filename}"


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a metric, ordered by step, for plots and checks."""
    client = make_client(tracking_uri)
    hist = client.get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]
