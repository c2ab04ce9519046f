"""The end of a study: ``summary.json``, the printout, and what the MLflow study run records.

``summary.json`` (in the experiment folder) holds the counts, the best trial (validation
numbers, configuration, checkpoint), its test numbers, its registered model (``model``:
``models:/<study>@best`` and the version; :mod:`tune.driver.best_model`), the Pareto front of
a multi-objective study and every trial's row; ``s2ap tune`` on a complete study prints it again.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import IO, Any

from tune.common.console import best_effort
from tune.common.files import write_json
from tune.results.trials import TrialRow, count_text, pareto_front
from tune.study.file import Study

__all__ = [
    "TABLE_ROWS",
    "build_summary",
    "format_trials_table",
    "plot_study",
    "print_summary",
    "record_summary",
    "update_timings",
    "write_summary",
]


#: Rows of the trials table at the end of ``s2ap tune``: a large study shows its best ones.
TABLE_ROWS = 25


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _top_rows(study: Study, rows: list[TrialRow], limit: int) -> list[TrialRow]:
    """The ``limit`` rows to show of a large study: completed trials first, best first on the
    first objective, then the others (stopped, failed) by their last value."""
    obj = study.objective
    sign = -1.0 if obj.mode == "max" else 1.0

    def key(r: TrialRow) -> tuple[bool, bool, float]:
        v = r["metrics"].get(obj.metric)
        return (not r["completed"], v is None, sign * v if v is not None else 0.0)

    return sorted(rows, key=key)[:limit]


def format_trials_table(study: Study, rows: list[TrialRow], *, limit: int | None = None) -> str:
    """A plain-text table of the trials (for ``s2ap status`` and the end of ``s2ap tune``).

    With ``limit`` and more rows than that, the best ``limit`` trials (:func:`_top_rows`) and a
    last line that says how many more there are and where to see them all."""
    keys = study.space.keys
    objectives = [o.metric for o in study.settings.objectives]
    metric_cols = list(dict.fromkeys([*objectives, "best_val_robust_acc", "sparsity"]))
    table = [["trial", "state", "epochs", "retries", "baseline", *keys, *metric_cols]]
    more = 0
    if limit is not None and len(rows) > limit:
        more = len(rows) - limit
        rows = _top_rows(study, rows, limit)
    for r in rows:
        stopped = r["state"] == "TERMINATED" and not r["completed"]
        table.append(
            [
                r["trial_id"],
                r["state"] + (" (stopped)" if stopped else ""),
                str(r["epochs"]),
                str(r.get("retries", 0)),
                r.get("baseline") or "-",
                *[_fmt(r["config"].get(k)) for k in keys],
                *[_fmt(r["metrics"].get(c)) for c in metric_cols],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
    if more:
        text += (
            f"\n... {more} more trials (the {limit} best are shown); all of them: "
            f"s2ap status {study.shell_arg}"
        )
    return text


def build_summary(
    study: Study,
    *,
    tracking_uri: str,
    rows: list[TrialRow],
    fit_wall_s: float,
    best: TrialRow | None,
    test: dict[str, Any] | None,
) -> dict[str, Any]:
    """The content of ``summary.json`` (see the module docstring)."""
    from tune.results.comparison import compare_with_baselines, search_counts

    objectives = study.settings.objectives
    return {
        "study": study.name,
        "study_file": str(study.path) if study.path else None,
        "experiment_dir": str(study.experiment_dir),
        "tracking_uri": tracking_uri,
        "optuna_storage": str(study.optuna_path),
        "objectives": [o.model_dump() for o in objectives],
        "counts": count_text(rows),
        "fit_wall_s": fit_wall_s,
        "best": best,
        "test": test,
        "pareto": pareto_front(study, rows) if len(objectives) > 1 else None,
        "baselines": compare_with_baselines(study, rows),
        "search": search_counts(study, rows),
        "trials": rows,
    }


def write_summary(study: Study, summary: dict[str, Any]) -> None:
    write_json(study.summary_json, summary)


def update_timings(study: Study, summary: dict[str, Any], steps: Mapping[str, float]) -> None:
    """Add the steps that ran after ``summary.json`` was written (the study run's records,
    Ray's shutdown) to ``summary``'s ``timings`` section and write it again. (The copy logged
    to the study run is the one written first, without them.)"""
    summary["timings"] = {
        **summary.get("timings", {}),
        **{k: round(v, 4) for k, v in steps.items()},
    }
    write_summary(study, summary)


def record_summary(tracker: Any, study: Study, summary: dict[str, Any]) -> None:
    """The study run gets the best trial (its id as ``TAG_BEST_TRIAL_ID``, ``best/*`` metrics,
    ``s2ap.best.*`` tags) and ``summary.json`` (the plots: :func:`plot_study`)."""
    from tracking.client import TAG_BEST_TRIAL_ID
    from tune.results.comparison import comparison_record, comparison_tags

    best, test = summary["best"], summary["test"]
    comparisons = summary.get("baselines") or []
    if comparisons:
        tracker.log_metrics(comparison_record(comparisons), step=0)
        tracker.set_tags(comparison_tags(comparisons))
    if best is not None:
        tracker.set_tags({TAG_BEST_TRIAL_ID: best["trial_id"]})
        numbers = {f"best/{k}": v for k, v in best["metrics"].items() if v is not None}
        if test:
            numbers.update({f"best/{k}": v for k, v in test.items() if isinstance(v, float)})
        tracker.log_metrics(numbers, step=0)
        # Tags, not params: a resumed study may pick another best trial.
        tracker.set_tags({f"s2ap.best.{k}": v for k, v in best["config"].items()})
    tracker.log_artifact(study.summary_json)


def plot_study(tracker: Any, study: Study, trial_runs: list[dict[str, Any]] | None) -> None:
    """The study run's scatter plots of the objective against each searched parameter (over
    ``trial_runs``; ``None``: read them from MLflow); a failure is logged, never raised."""
    with best_effort("plotting the study"):
        tracker.log_study_plots(
            trial_runs, hyperparameters=tuple(k.split(".")[-1] for k in study.space.keys)
        )


def _print_best(
    study: Study, best: dict[str, Any], test: dict[str, Any] | None, out: IO[str]
) -> None:
    obj = study.objective
    print(f"best trial: {best['trial_id']} ({obj.metric} {obj.mode})", file=out)
    for k, v in best["config"].items():
        print(f"  {k} = {v!r}", file=out)
    m = best["metrics"]
    print(
        f"  validation (last epoch): robust {_fmt(m.get('val_robust_acc'))}, clean "
        f"{_fmt(m.get('val_clean_acc'))}; selected epoch: robust "
        f"{_fmt(m.get('best_val_robust_acc'))}; sparsity {_fmt(m.get('sparsity'))}",
        file=out,
    )
    if test:
        aa = test.get("test_autoattack_acc")
        steps = study.settings.test_eval.pgd_steps or study.run_config.evaluate.pgd_steps
        print(
            f"  test ({int(test.get('test_examples', 0))} examples): clean "
            f"{_fmt(test.get('test_clean_acc'))}, PGD-{steps} {_fmt(test.get('test_pgd_acc'))}"
            + (f", AutoAttack {_fmt(aa)}" if aa is not None else ""),
            file=out,
        )


def _print_where(
    study: Study, tracking_uri: str, out: IO[str], model: dict[str, Any] | None = None
) -> None:
    here = pull_from = study.shell_arg
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        # A Ray job (s2ap submit): the study file lives in the job's package on the head, a
        # path the user cannot use: the user's copy with this storage root, or the study's
        # name with its store.
        here = f"STUDY.yaml --storage-root {shlex.quote(str(study.storage_root))}"
        pull_from = f"{study.name} --tracking-uri {shlex.quote(tracking_uri)}"
    print("", file=out)
    print("results:", file=out)
    print(f"  trials, checkpoints:  {study.experiment_dir}", file=out)
    print(f"  summary:              {study.summary_json}", file=out)
    print(f"  MLflow:               {tracking_uri}  (open: s2ap ui {here})", file=out)
    print(f"  best mask:            s2ap masks pull {pull_from} --out ./best-mask", file=out)
    if model:  # tune.driver.best_model: the best trial in the MLflow Model Registry
        print(
            f"  best model:           {model['uri']} (version {model['version']}; "
            "mlflow.pyfunc.load_model, mlflow models serve)",
            file=out,
        )
    print(f"  Optuna study:         optuna-dashboard {study.optuna_path}", file=out)
    print(f"  table again:          s2ap status {here}", file=out)


def print_summary(study: Study, summary: dict[str, Any], out: IO[str]) -> None:
    """The counts, the best trial with its numbers, the Pareto front, where everything is."""
    print("", file=out)
    print(f"study {study.name}: {summary['counts']}", file=out)
    if summary.get("best"):
        _print_best(study, summary["best"], summary.get("test"), out)
    else:
        print("no trial completed, so there is no best trial", file=out)
    from tune.results.comparison import format_comparisons

    for line in format_comparisons(summary.get("baselines") or []):
        print(line, file=out)
    search = summary.get("search")
    if search:
        print(
            f"trial budget: {search['baseline_trials']} baseline + {search['searched_trials']} "
            f"searched trials, {search['distinct_configs']} distinct configurations; "
            f"{search['duplicate_draws_skipped']} repeated draws skipped (not trained)",
            file=out,
        )
    objectives = study.settings.objectives
    if len(objectives) > 1 and summary.get("pareto"):
        print(
            f"Pareto front ({', '.join(o.metric for o in objectives)}): "
            f"{', '.join(summary['pareto'])}",
            file=out,
        )
    _print_where(study, summary["tracking_uri"], out, summary.get("model"))
