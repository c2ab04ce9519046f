"""The one definition of a study's best trial, shared by the summary, ``status``, ``masks pull``
and the study run's ``s2ap.best_trial_id`` tag.

A candidate is a trial that ran to its end (a trial stopped early by ASHA or one that failed is
not a result) and reported the first objective. Candidates are ranked on the objectives in
order (``max`` or ``min`` each); a tie on every objective goes to the smallest trial id, which
every reader knows the same way (end times differ between Ray's records and MLflow's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

__all__ = ["Candidate", "Objective", "best_candidate", "rank_key"]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A metric and whether larger (``max``) or smaller (``min``) is better."""

    metric: str
    mode: Literal["max", "min"] = "max"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A finished trial: its id and the last value of each metric it reported."""

    trial_id: str
    metrics: Mapping[str, float | None]


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def rank_key(candidate: Candidate, objectives: Sequence[Objective]) -> tuple[float | str, ...]:
    """Sort key: smaller is better (objectives in order, then the trial id)."""
    values: list[float | str] = []
    for o in objectives:
        v = _finite(candidate.metrics.get(o.metric))
        values.append(math.inf if v is None else (-v if o.mode == "max" else v))
    return (*values, candidate.trial_id)


def best_candidate(
    candidates: Iterable[Candidate], objectives: Sequence[Objective]
) -> Candidate | None:
    """The best candidate on ``objectives`` (see the module docstring), or ``None``.

    Candidates without a finite value of the first objective are not ranked.
    """
    if not objectives:
        raise ValueError("best_candidate needs at least one objective")
    first = objectives[0].metric
    scored = [c for c in candidates if _finite(c.metrics.get(first)) is not None]
    if not scored:
        return None
    return min(scored, key=lambda c: rank_key(c, objectives))
