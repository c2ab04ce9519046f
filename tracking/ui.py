"""The MLflow UI for one study, opened on its trials (``s2ap ui``).

MLflow 3.17's root page opens an experiment in its GenAI overview ("Traces 0"), one click away
from the runs; in the runs table a study's trials sit collapsed under the study run, and the
metric and param columns are off to the right. So the URL printed here opens the study's runs
page in a *saved view* of the MLflow UI: an experiment tag ``mlflow.sharedViewState.s2ap-trials``
(the UI's own format: ``{"name", "createdAt", "updatedAt", "state"}``, ``state`` a JSON string
of the runs page's search facets and columns), written before the server starts and named in the
URL's ``viewStateShareKey``. The view shows the trial runs only (``s2ap.role = 'trial'``; with
the study run filtered out they are listed flat), best first on the study's objective, with the
objective, clean accuracy, sparsity, the searched params and each trial's outcome as columns; it
appears as "s2ap: trials" in the page's Views menu. ``workflowType=machine_learning`` puts the
sidebar in its "Model training" mode (the UI's default, "GenAI", is kept in local storage)::

    http://127.0.0.1:PORT/#/experiments/<id>/runs?viewStateShareKey=s2ap-trials
        &workflowType=machine_learning

If the tag cannot be written, the URL carries the same facets instead (the UI reads
``searchFilter``, ``orderByKey`` and ``orderByAsc`` from the URL; the columns are then the UI's
defaults). The study run's page (its Artifacts tab holds the comparison plots
``plots/<metric>_vs_<hp>.png`` and ``study.yaml``) is printed too, open on the first plot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from mlflow.tracking import MlflowClient

from tracking.client import (
    PRIMARY_METRIC,
    ROLE_TRIAL,
    TAG_ROLE,
    is_http,
    make_client,
    search_all_runs,
    sqlite_path,
)
from tracking.pull import StudyNotFoundError, study_experiment, study_objectives, study_run
from tracking.selection import Objective
from tracking.server import MlflowServer, MlflowServerError, exposure_warning

__all__ = [
    "TRIALS_FILTER",
    "VIEW_KEY",
    "VIEW_TAG",
    "MlflowServerError",
    "StudyNotFoundError",
    "StudyPages",
    "save_trials_view",
    "serve_study_ui",
    "study_pages",
]

#: The runs page's filter: trial runs only (the study run would fold them under itself).
TRIALS_FILTER = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
#: The saved view's id, and the experiment tag that holds it (the MLflow UI's naming).
VIEW_KEY = "s2ap-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: Columns besides the objectives and the searched params, when the trials have them.
SHOWN_METRICS = (PRIMARY_METRIC, "val_clean_acc", "sparsity")
SHOWN_TAGS = ("s2ap.outcome",)
MAX_PARAM_COLUMNS = 8
#: The sidebar's "Model training" mode (the UI's default is "GenAI").
_WORKFLOW = {"workflowType": "machine_learning"}
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclasses.dataclass(frozen=True)
class StudyPages:
    """What the UI URLs of a study need: its experiment, its run, its objectives, and the saved
    view of its trials (``None`` until :func:`save_trials_view` wrote it)."""

    study_name: str
    experiment_id: str
    study_run_id: str | None
    objectives: tuple[Objective, ...]
    study_plot: str | None = None
    view_key: str | None = None

    def facets(self) -> dict[str, Any]:
        """The runs page's search facets: trials only, best first on the first objective."""
        first = self.objectives[0]
        return {
            "searchFilter": TRIALS_FILTER,
            "orderByKey": f"metrics.`{first.metric}`",
            "orderByAsc": first.mode == "min",
        }

    def runs_url(self, base_url: str) -> str:
        """The study's trials: the saved view if there is one, else the same facets."""
        if self.view_key:
            query: dict[str, str] = {"viewStateShareKey": self.view_key}
        else:
            query = {
                k: str(v).lower() if isinstance(v, bool) else v for k, v in self.facets().items()
            }
        query.update(_WORKFLOW)
        path = f"#/experiments/{self.experiment_id}/runs"
        return f"{base_url.rstrip('/')}/{path}?{urlencode(query, quote_via=quote)}"

    def study_run_url(self, base_url: str) -> str | None:
        """The study run's Artifacts tab, open on its first comparison plot if it has one."""
        if self.study_run_id is None:
            return None
        tab = f"artifactPath/{self.study_plot}" if self.study_plot else "artifacts"
        path = f"#/experiments/{self.experiment_id}/runs/{self.study_run_id}/{tab}"
        return f"{base_url.rstrip('/')}/{path}?{urlencode(_WORKFLOW)}"


def study_pages(tracking_uri: str, study_name: str) -> StudyPages:
    """Look the study up in its tracking store (:class:`StudyNotFoundError` if it is not there)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        # Opening a missing sqlite store would create an empty one.
        raise StudyNotFoundError(f"no MLflow store at {db} yet; run the study first")
    client = make_client(tracking_uri, read_only=True)
    exp = study_experiment(client, tracking_uri, study_name)
    run = study_run(client, exp.experiment_id)
    own = study_objectives(dict(run.data.tags)) if run else []
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")] if run else []
    return StudyPages(
        study_name=study_name,
        experiment_id=exp.experiment_id,
        study_run_id=run.info.run_id if run else None,
        objectives=tuple(own) or (Objective(PRIMARY_METRIC, "max"),),
        study_plot=min((p for p in plots if p.endswith(".png")), default=None),
    )


def _varying_params(trials: Sequence[Any]) -> list[str]:
    """The params whose values differ between trials: the searched ones."""
    values: dict[str, set[str]] = {}
    for run in trials:
        for key, value in run.data.params.items():
            values.setdefault(key, set()).add(value)
    return sorted(k for k, v in values.items() if len(v) > 1)[:MAX_PARAM_COLUMNS]


def trials_view_columns(objectives: Sequence[Objective], trials: Sequence[Any]) -> list[str]:
    """The view's columns, in the UI's key format: objectives and a few metrics, the searched
    params, the outcome tag (each only if some trial has it)."""
    metrics = dict.fromkeys([*(o.metric for o in objectives), *SHOWN_METRICS])
    present = {k for run in trials for k in run.data.metrics}
    tags = {k for run in trials for k in run.data.tags}
    return [
        *(f"metrics.`{m}`" for m in metrics if m in present),
        *(f"params.`{p}`" for p in _varying_params(trials)),
        *(f"tags.`{t}`" for t in SHOWN_TAGS if t in tags),
    ]


def save_trials_view(client: MlflowClient, pages: StudyPages) -> StudyPages:
    """Write the saved view of the study's trials (see the module docstring); return ``pages``
    with its key."""
    trials = list(search_all_runs(client, [pages.experiment_id], TRIALS_FILTER))
    state = {
        **pages.facets(),
        "selectedColumns": trials_view_columns(pages.objectives, trials),
    }
    now = int(time.time() * 1000)
    envelope = {
        "name": "s2ap: trials",
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps(state),
    }
    client.set_experiment_tag(pages.experiment_id, VIEW_TAG, json.dumps(envelope))
    return dataclasses.replace(pages, view_key=VIEW_KEY)


def _with_view(tracking_uri: str, pages: StudyPages, err: IO[str]) -> StudyPages:
    try:
        return save_trials_view(make_client(tracking_uri, read_only=True), pages)
    except Exception as exc:  # the view is a convenience; the facets URL works without it
        print(f"warning: could not save the trials view ({exc}); the URL filters instead", file=err)
        return pages


def _print_pages(pages: StudyPages, base_url: str, out: IO[str]) -> None:
    print(f"MLflow UI for study {pages.study_name}: {pages.runs_url(base_url)}", file=out)
    study_run = pages.study_run_url(base_url)
    if study_run:
        print(f"  study run and its comparison plots: {study_run}", file=out)
    out.flush()


@contextlib.contextmanager
def _stop_on_termination(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, a closed terminal) set ``stop`` like Ctrl-C ends the wait,
    so the server is stopped too instead of being left running. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(server: MlflowServer, stop: threading.Event) -> None:
    """Until Ctrl-C, ``stop`` is set, or the server process ends."""
    try:
        with _stop_on_termination(stop):
            while server.is_running() and not stop.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass


def serve_study_ui(
    tracking_uri: str,
    study_name: str,
    *,
    storage_root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int | None = None,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    stop: threading.Event | None = None,
) -> int:
    """Serve the MLflow UI on the study's store and print the URL of its trials; block until
    Ctrl-C, SIGTERM/SIGHUP or ``stop`` is set, then stop the server by PID. Returns the exit
    code (0; 1 if the server died on its own).

    A study tracked by an ``http(s)://`` server needs no new server: its URL is printed at once.
    Binding anything but loopback prints the risk to ``err`` (MLflow has no authentication).
    Raises :class:`StudyNotFoundError` when the store or the study is missing, and
    :class:`~tracking.server.MlflowServerError` when the server does not start.
    """
    pages = _with_view(tracking_uri, study_pages(tracking_uri, study_name), err)
    if is_http(tracking_uri):
        _print_pages(pages, tracking_uri, out)
        return 0
    root = Path(storage_root).absolute()
    server = MlflowServer(
        backend_store_uri=tracking_uri,
        artifacts_destination=root / "mlartifacts",
        log_dir=root / ".mlflow-ui",
        host=host,
        port=port,
    )
    warning = exposure_warning(host, server.port)
    if warning:
        print(f"warning: {warning}", file=err)
    stop = stop or threading.Event()
    with server:
        _print_pages(pages, server.url, out)
        print("(Ctrl-C to stop)", file=out, flush=True)
        _wait(server, stop)
        died = not server.is_running() and not stop.is_set()
    if died:
        print(f"the MLflow server stopped; log {server.log_path}:\n{server.log_tail()}", file=err)
        return 1
    return 0
