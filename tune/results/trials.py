"""A study's results, read from Ray Tune's record: one row per trial, the best trial, the Pareto
front, and the counts.

Rows come from Ray Tune's record in the experiment folder, read as plain JSON
(:mod:`tune.results.ray_record`: id, status, last result, config, failures, checkpoint, error file;
never unpickled, unlike ``ray.tune.ExperimentAnalysis``), both after ``Tuner.fit()`` (at
``ResultGrid.experiment_path``) and for ``s2ap status``: the two read the same record, so they
always agree. (A ``ResultGrid``'s ``Result`` has no trial status: a trial stopped by ASHA and
one cut off by an interrupt look alike there.)

The best trial is :func:`tracking.selection.best_candidate` over the completed trials: the
summary, ``s2ap status``, the study run's best-trial tag and ``s2ap masks pull`` use that one
definition (ties go to the smallest trial id).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from tune.results.ray_record import TrialRecord, has_trial_records, read_trial_records
from tune.study.baselines import trial_values
from tune.study.file import Study, StudyError
from tune.trial.context import baseline_name

if TYPE_CHECKING:
    from tracking.selection import Objective

__all__ = [
    "TrialRow",
    "best_trial",
    "count_text",
    "error_text",
    "pareto_front",
    "read_trial_rows",
    "study_objectives",
    "trial_row",
    "unfinished",
]

#: Metrics every row carries (beside the study's objectives).
ROW_METRICS = (
    "val_robust_acc",
    "val_clean_acc",
    "best_val_robust_acc",
    "sparsity",
    "mask_hamming",
    "sharpness",
)


class TrialRow(TypedDict):
    """One trial as the service reports it (``summary.json``, ``s2ap status --json``)."""

    trial_id: str
    state: str
    """Ray's trial status: TERMINATED, ERROR, or PENDING/RUNNING/PAUSED (unfinished)."""
    epochs: int
    completed: bool
    """Ran every epoch and terminated: a result (ASHA-stopped or failed trials are not)."""
    config: dict[str, Any]
    """The trial's values (dotted run-config paths): what was sampled on its branch of the
    space, or a baseline's fixed values (and its seed)."""
    baseline: str | None
    """The baseline this trial runs (``study.baselines``), or ``None`` for a searched trial."""
    metrics: dict[str, float | None]
    """Last reported value of each metric (``None``: not reported or not finite)."""
    checkpoint: str | None
    finished_at: float | None
    error: str | None
    """The error file of a failed trial."""
    retries: NotRequired[int]
    """How often the trial failed and was restarted from its last checkpoint (its worker died,
    say); at most ``study.max_failures`` before the trial gives up."""


def _value(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def trial_row(study: Study, trial: TrialRecord) -> TrialRow:
    """The row of one trial as Ray recorded it."""
    last = trial.last_result or {}
    epochs = int(last.get("training_iteration", 0) or 0)
    objectives = [o.metric for o in study.settings.objectives]
    # <objective>_std: the seed spread of a trial with study.seeds replicates
    keys = dict.fromkeys([*ROW_METRICS, *objectives, f"{objectives[0]}_std"])
    config = trial.config or {}
    return TrialRow(
        trial_id=trial.trial_id,
        state=trial.status,
        epochs=epochs,
        completed=epochs >= study.epochs_per_trial and trial.status == "TERMINATED",
        config=trial_values(config),
        baseline=baseline_name(config),
        metrics={k: _value(last, k) for k in keys},
        checkpoint=trial.checkpoint,
        finished_at=_value(last, "result_time"),
        error=trial.error_file if trial.status == "ERROR" else None,
        retries=trial.num_failures,
    )


def read_trial_rows(study: Study, experiment_path: str | Path | None = None) -> list[TrialRow]:
    """The rows of every trial in the study's experiment folder (or ``experiment_path``, e.g.
    a ``ResultGrid.experiment_path``), read without starting Ray or any trial, and without
    unpickling anything."""
    path = Path(experiment_path or study.experiment_dir)
    if not has_trial_records(path):
        raise StudyError(
            f"no results for study {study.name!r} in {study.storage_root} yet; start it with "
            f"`s2ap tune {study.shell_arg}`"
        )
    return [trial_row(study, t) for t in read_trial_records(path)]


def study_objectives(study: Study) -> list[Objective]:
    """The study's objectives, in order, as :mod:`tracking.selection` ranks them."""
    from tracking.selection import Objective

    return [Objective(o.metric, o.mode) for o in study.settings.objectives]


def best_trial(study: Study, rows: Iterable[TrialRow]) -> TrialRow | None:
    """The best completed trial on the study's objectives (see the module docstring)."""
    from tracking.selection import Candidate, best_candidate

    completed = {r["trial_id"]: r for r in rows if r["completed"]}
    candidates = [Candidate(tid, r["metrics"]) for tid, r in completed.items()]
    best = best_candidate(candidates, study_objectives(study))
    return completed[best.trial_id] if best is not None else None


def pareto_front(study: Study, rows: Iterable[TrialRow]) -> list[str]:
    """Trial ids on the Pareto front of the objectives (completed trials)."""
    objs = study.settings.objectives
    points = []
    for r in rows:
        values = [r["metrics"].get(o.metric) for o in objs]
        known = [v for v in values if v is not None]
        if r["completed"] and len(known) == len(values):
            signed = [v if o.mode == "max" else -v for v, o in zip(known, objs)]
            points.append((r["trial_id"], signed))

    def dominated(a: list[float], b: list[float]) -> bool:
        return all(y >= x for x, y in zip(a, b)) and any(y > x for x, y in zip(a, b))

    return [tid for tid, a in points if not any(dominated(a, b) for _, b in points)]


def unfinished(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """Trials neither terminated nor failed: the study was interrupted (``--resume``)."""
    return [r for r in rows if r["state"] not in ("TERMINATED", "ERROR")]


def count_text(rows: list[TrialRow]) -> str:
    """``N trials: a completed, b stopped early, c failed[, d unfinished]``."""
    completed = sum(r["completed"] for r in rows)
    stopped = sum(r["state"] == "TERMINATED" and not r["completed"] for r in rows)
    failed = sum(r["state"] == "ERROR" for r in rows)
    left = len(unfinished(rows))
    return (
        f"{len(rows)} trials: {completed} completed, {stopped} stopped early, {failed} failed"
        + (f", {left} unfinished" if left else "")
    )


def error_text(error_file: str | None) -> str:
    """The root cause of a failed trial (the last error line of Ray's error file) and where
    the full traceback is."""
    if not error_file:
        return "(no error file)"
    try:
        text = Path(error_file).read_text(errors="replace").strip()
    except OSError:
        return f"(see {error_file})"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # The last lines of a Ray error hold the root cause.
    tail = [ln for ln in lines if "Error" in ln or "error" in ln][-1:] or lines[-1:]
    return f"{tail[0].strip()} (full traceback: {error_file})"
