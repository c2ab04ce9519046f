"""Where runs go and how to reach it: tracking URIs, MLflow clients, tag names, a health check.

Everything else in :mod:`tracking` builds on this module and it imports nothing of theirs, so the
outbox, the runs and the best-trial lookup share one client factory without an import loop.

Retrying is MLflow's own: an HTTP request is retried by MLflow's client as the user's
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` /
``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` say (defaults: 7 retries,
factor 2, jitter 1 s, 120 s per request), read at each request. A write that still fails is
queued on disk by :mod:`tracking.outbox`; nothing here edits those variables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "EXPERIMENT_TAGS",
    "OUTCOME_COMPLETED",
    "PRIMARY_METRIC",
    "ROLE_STUDY",
    "ROLE_TRIAL",
    "TAG_BEST_TRIAL_ID",
    "TAG_CONFIG_HASH",
    "TAG_DEVICE",
    "TAG_OBJECTIVES",
    "TAG_OBJECTIVE_METRIC",
    "TAG_OBJECTIVE_MODE",
    "TAG_OUTCOME",
    "TAG_PARENT",
    "TAG_PHASE",
    "TAG_ROLE",
    "TAG_STUDY",
    "TAG_TRIAL_ID",
    "TrackingUnavailableError",
    "check_tracking_server",
    "filter_quote",
    "is_completed_run",
    "is_http",
    "make_client",
    "resolve_tracking_uri",
    "search_all_runs",
    "server_answers",
    "sqlite_path",
]

# Tag names (one place, so the runs, the best-trial lookup, the report and the CLI agree).
TAG_STUDY = "s2ap.study"
TAG_ROLE = "s2ap.role"
TAG_TRIAL_ID = "s2ap.trial_id"
TAG_PHASE = "s2ap.phase"
TAG_CONFIG_HASH = "s2ap.config_hash"
TAG_DEVICE = "s2ap.device"
TAG_PARENT = "mlflow.parentRunId"
#: On the study run: the trial the study service chose when the study finished.
TAG_BEST_TRIAL_ID = "s2ap.best_trial_id"
#: On the study run: the first objective (metric, ``max``/``min``) and all of them as JSON.
TAG_OBJECTIVE_METRIC = "s2ap.objective.metric"
TAG_OBJECTIVE_MODE = "s2ap.objective.mode"
TAG_OBJECTIVES = "s2ap.objectives"
#: On a trial run: how the trial ended (the study service's vocabulary is
#: ``tune.trial.recorder.OUTCOMES``). The run's status alone does not say it: a trial the
#: scheduler stopped early ends FINISHED too, as Ray Tune's own MLflow callback ends it.
TAG_OUTCOME = "s2ap.outcome"
#: The outcome of a trial that ran every epoch: the only kind that is a result.
OUTCOME_COMPLETED = "completed"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
PRIMARY_METRIC = "val_robust_acc"

#: Experiment tags that make the MLflow 3.17 UI open the model-training view with our objective.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.experiment.primaryMetric.name": PRIMARY_METRIC,
    "mlflow.experiment.primaryMetric.greaterIsBetter": "true",
}

_SQL_SCHEMES = ("postgresql", "mysql", "mssql")


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store or server cannot be reached."""


def _resolve_sqlite(uri: str) -> str:
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


def resolve_tracking_uri(uri: str | None, storage_root: str | os.PathLike[str]) -> str:
    """Return the tracking URI to use, or raise ``ValueError`` explaining what to use instead.

    ``None``/empty -> ``sqlite:////<abs storage_root>/mlflow.db`` (embedded, single machine).
    ``http(s)://`` servers, absolute ``sqlite:////...`` files and SQLAlchemy database URIs are
    kept. Relative sqlite paths and file stores are rejected: Ray trials ``chdir`` into their own
    folders (so a relative path means a different database per trial), and MLflow >= 3.13 refuses
    ``file:``/``./mlruns`` stores.
    """
    if not uri:
        return f"sqlite:///{Path(storage_root).expanduser().absolute() / 'mlflow.db'}"
    uri = uri.strip()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    if scheme == "sqlite":
        return _resolve_sqlite(uri)
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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def make_client(tracking_uri: str, *, read_only: bool = False) -> MlflowClient:
    """A client for ``tracking_uri`` (creating an sqlite store's folder if needed).

    ``read_only``: for readers (pull, report), which must create nothing: a missing sqlite
    store raises :class:`TrackingUnavailableError` instead of being created empty (MLflow
    creates the database file on the first query).

    HTTP requests are retried by MLflow itself, as its ``MLFLOW_HTTP_REQUEST_*`` variables say
    (see the module docstring).
    """
    db = sqlite_path(tracking_uri)
    if db is not None and read_only and not db.is_file():
        raise TrackingUnavailableError(
            f"no MLflow store at {db}: nothing has been tracked there yet (has the study run?)"
        )
    if db is not None and not read_only:
        db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow is imported by the first client, not with this module: the URI checks above and
    # the tag names are used where MLflow's import (~1 s) is not wanted yet (a launch's checks).
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def server_answers(uri: str, timeout_s: float = 5.0) -> bool:
    """One ``GET <uri>/health`` without retries: is the server up right now?

    Used to decide whether queued writes can be sent, so that a trial does not wait out MLflow's
    whole retry budget at every write while the server is down.
    """
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def _check_http(uri: str, timeout_s: float) -> None:
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


def _check_sqlite(db: Path) -> None:
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


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial starts, if the tracking store cannot be used.

    http(s): ``GET <uri>/health`` must answer 200. sqlite: the database folder must be writable.
    Raises :class:`TrackingUnavailableError` naming the problem and the fix.
    """
    if is_http(uri):
        _check_http(uri, timeout_s)
        return
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite(db)


def is_completed_run(run: Any) -> bool:
    """A trial run that is a result: FINISHED, and completed by its outcome tag (a run without
    the tag, written by hand or by an older s2ap that ended stopped trials KILLED, counts by its
    status alone)."""
    outcome = run.data.tags.get(TAG_OUTCOME, OUTCOME_COMPLETED)
    return run.info.status == "FINISHED" and outcome == OUTCOME_COMPLETED


def filter_quote(value: str) -> str:
    """Quote a value for an MLflow filter string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} contains both quote characters; use an id without quotes")


def search_all_runs(
    client: MlflowClient,
    experiment_ids: list[str],
    filter_string: str,
    *,
    order_by: list[str] | None = None,
) -> Iterator[Any]:
    """Every active run matching ``filter_string``, page by page (MLflow pages at 1000)."""
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return
