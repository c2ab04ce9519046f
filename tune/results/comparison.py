"""The searched trials beside the baselines: what the study found, in the baselines' terms.

For each baseline (``study.baselines``) the comparison gives its objective value (the mean over
its seeds), the best comparable S2AP trial's value (:func:`tune.results.trials.best_trial` over the
searched trials of the ``score`` arm that agree with the baseline on every other field it sets:
HARP + S2AP against the HARP baseline, HYDRA + S2AP against HYDRA), the margin (positive: S2AP is
better, whatever the objective's mode) and, with several seeds, each side's seed spread (the
standard deviation over seeds: the trial's own ``<metric>_std`` with ``study.seeds`` replicates,
else over the trials that differ only in ``seed``). The summary, ``s2ap status`` and the MLflow
study run all show it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import Any, TypedDict

from s2ap.config import ConfigError, flatten
from tune.results.trials import TrialRow, best_trial
from tune.study.file import Study
from tune.study.space import build_trial_config

__all__ = [
    "BaselineComparison",
    "compare_with_baselines",
    "comparison_record",
    "comparison_tags",
    "format_comparisons",
    "search_counts",
]


class BaselineComparison(TypedDict):
    baseline: str
    metric: str
    mode: str
    value: float | None
    """The baseline's objective, mean over its completed seeds."""
    seeds: int
    spread: float | None
    best_trial: str | None
    """The best comparable S2AP trial (``prune.perturbation: score``, the baseline's other
    settings) among the searched ones."""
    best_value: float | None
    best_seeds: int
    best_spread: float | None
    margin: float | None
    """best_value - value for ``max`` objectives, value - best_value for ``min``."""


def _flat_config(base: dict[str, Any], row: TrialRow) -> dict[str, Any] | None:
    """The trial's whole run config, flattened (``None`` if it does not build)."""
    try:
        return flatten(build_trial_config(base, row["config"]).model_dump(mode="json"))
    except ConfigError:
        return None


def _searched_s2ap(study: Study, rows: Sequence[TrialRow]) -> list[tuple[TrialRow, dict[str, Any]]]:
    """The searched trials of the ``score`` arm, each with its flattened run config."""
    base = study.base_dict()
    out = []
    for r in rows:
        cfg = _flat_config(base, r) if r["baseline"] is None else None
        if cfg and cfg["prune.perturbation"] == "score":
            out.append((r, cfg))
    return out


def _comparable_s2ap(
    study: Study, searched: Sequence[tuple[TrialRow, dict[str, Any]]], baseline: str
) -> list[TrialRow]:
    """Searched S2AP trials that share the baseline's settings other than its arm."""
    fixed = {
        k: v for k, v in study.settings.baselines[baseline].items() if k != "prune.perturbation"
    }
    return [r for r, cfg in searched if all(cfg.get(k) == v for k, v in fixed.items())]


def _seed_group(rows: Sequence[TrialRow], row: TrialRow) -> list[TrialRow]:
    """The completed trials that differ from ``row`` only in ``seed`` (``row`` included)."""
    key = {k: v for k, v in row["config"].items() if k != "seed"}
    return [
        r
        for r in rows
        if r["completed"]
        and r["baseline"] == row["baseline"]
        and {k: v for k, v in r["config"].items() if k != "seed"} == key
    ]


def _mean_spread(group: Sequence[TrialRow], metric: str) -> tuple[float | None, int, float | None]:
    """(mean, number of seeds, std over seeds) of ``metric`` over a seed group."""
    found = [r["metrics"].get(metric) for r in group]
    values = [v for v in found if v is not None]
    if not values:
        return None, 0, None
    if len(values) > 1:
        return statistics.fmean(values), len(values), statistics.pstdev(values)
    replicate_std = group[0]["metrics"].get(f"{metric}_std")
    return values[0], 1, replicate_std


def compare_with_baselines(study: Study, rows: Sequence[TrialRow]) -> list[BaselineComparison]:
    """One comparison per baseline of the study (empty without baselines)."""
    metric, mode = study.objective.metric, study.objective.mode
    searched = _searched_s2ap(study, rows) if study.settings.baselines else []
    out = []
    for name in study.settings.baselines:
        best = best_trial(study, _comparable_s2ap(study, searched, name))
        best_value, best_seeds, best_spread = (
            _mean_spread(_seed_group(rows, best), metric) if best else (None, 0, None)
        )
        group = [r for r in rows if r["baseline"] == name and r["completed"]]
        value, seeds, spread = _mean_spread(group, metric)
        margin = None
        if value is not None and best_value is not None:
            margin = best_value - value if mode == "max" else value - best_value
        out.append(
            BaselineComparison(
                baseline=name,
                metric=metric,
                mode=mode,
                value=value,
                seeds=seeds,
                spread=spread,
                best_trial=best["trial_id"] if best else None,
                best_value=best_value,
                best_seeds=best_seeds,
                best_spread=best_spread,
                margin=margin,
            )
        )
    return out


def search_counts(study: Study, rows: Sequence[TrialRow]) -> dict[str, int]:
    """How the trial budget was spent: baseline trials, searched trials, distinct effective
    configurations among all trials, and draws skipped as duplicates (never trained)."""
    from tune.study.baselines import EffectiveKey

    key = EffectiveKey(study.base_dict())
    log = study.duplicates_log
    skipped = len(log.read_text().splitlines()) if log.is_file() else 0
    return {
        "baseline_trials": sum(r["baseline"] is not None for r in rows),
        "searched_trials": sum(r["baseline"] is None for r in rows),
        "distinct_configs": len({key(r["config"]) for r in rows}),
        "duplicate_draws_skipped": skipped,
    }


def _num(v: float | None, seeds: int, spread: float | None) -> str:
    if v is None:
        return "-"
    text = f"{v:.4f}"
    if spread is not None:
        text += f" ± {spread:.4f}"
    if seeds > 1:
        text += f" ({seeds} seeds)"
    return text


def format_comparisons(comparisons: Sequence[BaselineComparison]) -> list[str]:
    """Printed lines: each baseline beside the best S2AP trial, with the margin."""
    if not comparisons:
        return []
    c0 = comparisons[0]
    lines = [f"each baseline beside the best comparable S2AP trial ({c0['metric']} {c0['mode']}):"]
    for c in comparisons:
        best = (
            f"S2AP {c['best_trial']} {_num(c['best_value'], c['best_seeds'], c['best_spread'])}"
            if c["best_trial"]
            else "no comparable S2AP trial completed"
        )
        margin = "" if c["margin"] is None else f"  margin {c['margin']:+.4f}"
        lines.append(
            f"  {c['baseline']}: {_num(c['value'], c['seeds'], c['spread'])}  |  {best}{margin}"
        )
    return lines


def comparison_record(comparisons: Sequence[BaselineComparison]) -> dict[str, Any]:
    """``{metric name: value}`` for the MLflow study run (``baseline/<name>/...``)."""
    out: dict[str, Any] = {}
    for c in comparisons:
        prefix = f"baseline/{c['baseline']}"
        for key in ("value", "spread", "best_value", "best_spread", "margin"):
            if c[key] is not None:
                out[f"{prefix}/{key}"] = c[key]
    return out


def comparison_tags(comparisons: Sequence[BaselineComparison]) -> dict[str, str]:
    return {"s2ap.baselines": json.dumps(list(comparisons), sort_keys=True, default=str)[:4000]}
