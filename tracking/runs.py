"""MLflow runs for studies and trials: one experiment per study, one parent run, nested trial runs.

This module holds the study's experiment and run (:class:`StudyTracker`); a trial's run is
:class:`tracking.trial.TrialTracker` (importable from here too). Design points (MLflow 3.17):

* Only explicit run ids through :class:`mlflow.tracking.MlflowClient`; never the fluent
  ``mlflow.start_run`` global state, because Ray may run several trials in one worker process.
* Runs are found again by tags (``s2ap.study`` + ``s2ap.role=study`` for the parent,
  ``s2ap.trial_id`` under the parent for a trial), so resuming a study or restarting a trial reuses
  its run instead of creating a duplicate (what Ray's MLflowLoggerCallback does after a restore).
* Every write goes through the local outbox (:mod:`tracking.writer`): an MLflow outage of a few
  seconds or minutes loses nothing.
* Params are immutable in MLflow: a resumed trial logs only the params it lacks, and a changed
  value raises :class:`ParamConflictError` instead of an opaque server error.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.client import (
    EXPERIMENT_TAGS,
    PRIMARY_METRIC,
    ROLE_STUDY,
    ROLE_TRIAL,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ID,
    TrackingUnavailableError,
    check_tracking_server,
    filter_quote,
    make_client,
    resolve_tracking_uri,
    search_all_runs,
    sqlite_path,
)
from tracking.params import flatten_params
from tracking.selection import Objective
from tracking.trial import TrialTracker
from tracking.writer import ParamConflictError, RunWriter

# This module's own names, and the client names its callers (tests among them) import from here.
__all__ = [
    "EXPERIMENT_TAGS",
    "ParamConflictError",
    "StudyTracker",
    "TrackingUnavailableError",
    "TrialTracker",
    "check_tracking_server",
    "flatten_params",
    "make_client",
    "metric_history",
    "objective_tags",
    "resolve_tracking_uri",
]

_log = logging.getLogger(__name__)


def objective_tags(objectives: Sequence[Objective]) -> dict[str, str]:
    """The study run's record of its objectives: the first one, and all of them as JSON."""
    if not objectives:
        return {}
    first = objectives[0]
    return {
        TAG_OBJECTIVE_METRIC: first.metric,
        TAG_OBJECTIVE_MODE: first.mode,
        TAG_OBJECTIVES: json.dumps([{"metric": o.metric, "mode": o.mode} for o in objectives]),
    }


# --------------------------------------------------------------------------------------------
# study


class StudyTracker(RunWriter):
    """The study's experiment and parent run.

    Use ``start()`` on the driver before trials start; pass :meth:`trial_context` (plain data) to
    each trial so it can :meth:`TrialTracker.open` its nested run. ``objectives`` (the study's,
    in order) are recorded as tags so that ``masks pull`` knows the study's own best trial.
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
        objectives: Sequence[Objective] = (),
    ) -> None:
        if not study_name or not study_name.strip():
            raise ValueError("study_name must be a non-empty string")
        self.study_name = study_name
        self.study_config = dict(study_config)
        self.study_text = study_text
        self.extra_tags = {**dict(tags or {}), **objective_tags(objectives)}
        self.experiment_tags = dict(EXPERIMENT_TAGS)
        if objectives:  # the UI's primary metric is the study's first objective
            self.experiment_tags["mlflow.experiment.primaryMetric.name"] = objectives[0].metric
            greater = "true" if objectives[0].mode == "max" else "false"
            self.experiment_tags["mlflow.experiment.primaryMetric.greaterIsBetter"] = greater
        uri = resolve_tracking_uri(tracking_uri, storage_root)
        self._init_writer(uri, storage_root, f"study-{study_name}")
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.resumed = False

    @property
    def run_id(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("StudyTracker.start() has not been called yet")
        return self.parent_run_id

    @run_id.setter
    def run_id(self, value: str) -> None:
        self.parent_run_id = value

    def _artifact_location(self) -> str | None:
        db = sqlite_path(self.tracking_uri)
        if db is None:
            return None  # a server decides (mlflow-artifacts:/ with --serve-artifacts)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.study_name).strip("._") or "study"
        # Beside the database, never MLflow's default ./mlruns relative to the cwd.
        return (db.parent / "mlartifacts" / slug).as_uri()

    def _get_or_create_experiment(self) -> Any:
        client = self._client
        exp = self._call(lambda: client.get_experiment_by_name(self.study_name), "get_experiment")
        if exp is not None:
            return exp
        try:
            self._call(
                lambda: client.create_experiment(
                    self.study_name,
                    artifact_location=self._artifact_location(),
                    tags=self.experiment_tags,
                ),
                "create_experiment",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self._call(lambda: client.get_experiment_by_name(self.study_name), "get_experiment")

    def _ensure_experiment(self) -> str:
        exp = self._get_or_create_experiment()
        if exp.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {self.study_name!r} is deleted (in the trash); restore it with "
                f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or use another "
                "study name"
            )
        for key, value in self.experiment_tags.items():
            if exp.tags.get(key) != value:
                self._call(
                    functools.partial(
                        self._client.set_experiment_tag, exp.experiment_id, key, value
                    ),
                    "set_experiment_tag",
                )
        return exp.experiment_id

    def start(self) -> str:
        """Create or find the experiment and the parent run; return the parent run id.

        Resuming (same study name, same store) reuses the parent run and sets it RUNNING again.
        """
        check_tracking_server(self.tracking_uri)
        self.experiment_id = self._ensure_experiment()
        flt = (
            f"tags.`{TAG_STUDY}` = {filter_quote(self.study_name)} "
            f"AND tags.`{TAG_ROLE}` = '{ROLE_STUDY}'"
        )
        identity = {TAG_STUDY: self.study_name, TAG_ROLE: ROLE_STUDY}
        self._open_run(
            self.experiment_id,
            flt,
            f"study {self.study_name!r}",
            self.study_name,
            self.study_config,
            self._run_tags(self.study_config, self.extra_tags, identity),
        )
        if self.study_text is not None:
            self.log_text(self.study_text, "study.yaml")
        return self.run_id

    def _started(self) -> tuple[str, str]:
        """(experiment id, parent run id); a RuntimeError before :meth:`start`."""
        run_id = self.run_id
        assert self.experiment_id is not None  # start() sets it before the run
        return self.experiment_id, run_id

    def trial_context(self) -> dict[str, str]:
        """Plain data a Ray trial needs to open its run: ``TrialTracker.open(**ctx, ...)``."""
        experiment_id, run_id = self._started()
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.study_name,
            "experiment_id": experiment_id,
            "parent_run_id": run_id,
            "storage_root": str(self.storage_root),
        }

    def open_trial(
        self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> TrialTracker:
        """Open a trial run in this process (tests, local runs); Ray workers call ``open``."""
        return TrialTracker.open(
            **self.trial_context(), trial_id=trial_id, params=params, tags=tags or {}
        )

    def trials(self) -> list[dict[str, Any]]:
        """Summaries of this study's trial runs: trial_id, run_id, status, params, metrics, tags."""
        experiment_id, run_id = self._started()
        flt = f"tags.`{TAG_PARENT}` = '{run_id}' AND tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
        runs = self._call(
            lambda: list(search_all_runs(self._client, [experiment_id], flt)),
            "search_runs(trials)",
        )
        return [
            {
                "trial_id": run.data.tags.get(TAG_TRIAL_ID),
                "run_id": run.info.run_id,
                "status": run.info.status,
                "params": dict(run.data.params),
                "metrics": dict(run.data.metrics),
                "tags": dict(run.data.tags),
            }
            for run in runs
        ]

    def log_study_plots(
        self,
        trials: Sequence[Mapping[str, Any]] | None = None,
        *,
        metric: str = PRIMARY_METRIC,
        hyperparameters: tuple[str, ...] = ("rho", "ascent_steps"),
    ) -> list[str]:
        """Log ``plots/<metric>_vs_<hp>.png`` scatter plots over the trials; return artifact paths.

        ``trials`` defaults to :meth:`trials` (finished or not; trials lacking a value are skipped).
        The plots are artifacts of the study run: the MLflow UI shows them on its Artifacts tab.
        """
        from tracking import plots

        trials = self.trials() if trials is None else trials
        logged = []
        for hp in hyperparameters:
            name = f"plots/{metric}_vs_{hp}.png"
            self.log_figure(plots.plot_study_scatter(trials, x=hp, y=metric), name)
            logged.append(name)
        return logged


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a metric, ordered by step (then time), for plots and checks."""
    hist = client.get_metric_history(run_id, key)
    return [
        (int(m.step), float(m.value)) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))
    ]
