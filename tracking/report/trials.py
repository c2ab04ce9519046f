"""The trial runs the page is built from, and how they group into cells.

The page reads MLflow alone: the finished trial runs (``s2ap.role=trial``) of the named studies,
their flattened params (``prune.perturbation``, ``prune.sparsity``, ``seed``, ...), their latest
metrics (``test_*`` from the end-of-trial test evaluation, ``hessian_top_eig`` from the last prune
epoch) and their per-epoch histories (``mask_hamming``, ``sharpness``, ``epoch_time_s``). Nothing
is recomputed from checkpoints, so every number on the page is traceable to a run id.

Two kinds of study are recognised from their content, not their names:

* an **arm comparison**: a study whose trials use more than one ``prune.perturbation`` (HYDRA =
  ``none``, S2AP = ``score``, the random-direction control = ``random``), with any mix of
  sparsities, finetuning (plain adversarial training ``AT`` or ``AWP``) and seeds;
* a **radius sweep**: a study whose S2AP trials use more than one (``prune.rho``,
  ``prune.ascent_steps``) combination.

A *cell* is one configuration without its seed.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mlflow.tracking import MlflowClient

from tracking.client import ROLE_TRIAL, TAG_ROLE, TAG_TRIAL_ID, make_client, search_all_runs
from tracking.pull import StudyNotFoundError, study_experiment

__all__ = [
    "ARMS",
    "ARM_ORDER",
    "HISTORY_KEYS",
    "TEST_METRICS",
    "Cell",
    "ReportError",
    "TrialRun",
    "group_cells",
    "load_trial_runs",
    "split_studies",
]

#: prune.perturbation -> the arm's name on the page, in display order.
ARMS: dict[str, str] = {"none": "HYDRA", "score": "S2AP", "random": "random"}
ARM_ORDER = list(ARMS.values())
#: Per-epoch series the page needs from each run.
HISTORY_KEYS = ("mask_hamming", "sharpness", "epoch_time_s")
#: Test metrics (what the end-of-trial evaluation logs), as shown on the page.
TEST_METRICS = {
    "test_clean_acc": "clean",
    "test_pgd_acc": "PGD",
    "test_autoattack_acc": "AutoAttack",
}


class ReportError(LookupError):
    """The studies cannot be reported (missing, no finished trial, no test metrics)."""


def _num(text: str | None, default: float = float("nan")) -> float:
    try:
        return float(text) if text not in (None, "", "None") else default
    except ValueError:
        return default


@dataclasses.dataclass
class TrialRun:
    """One finished trial run: its params, latest metrics and the per-epoch series we need."""

    study: str
    run_id: str
    trial_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def arm(self) -> str:
        p = self.params.get("prune.perturbation", "score")
        return ARMS.get(p, p)

    @property
    def finetune(self) -> str:
        return "AWP" if self.params.get("finetune.awp.enabled") == "True" else "AT"

    @property
    def sparsity(self) -> float:
        return _num(self.params.get("prune.sparsity"))

    @property
    def rho(self) -> float | None:
        return None if self.arm == "HYDRA" else _num(self.params.get("prune.rho"))

    @property
    def ascent_steps(self) -> int | None:
        return None if self.arm == "HYDRA" else int(_num(self.params.get("prune.ascent_steps"), 1))

    @property
    def seed(self) -> int:
        return int(_num(self.params.get("seed"), 0))

    @property
    def warmup(self) -> int:
        return int(_num(self.params.get("prune.warmup_epochs"), 0))

    @property
    def cell(self) -> Cell:
        return Cell(self.arm, self.finetune, self.sparsity, self.rho, self.ascent_steps)

    # -- per-run derived numbers ---------------------------------------------------------
    def prune_steps(self) -> list[int]:
        """The steps (global epochs) of the prune phase: those that logged ``mask_hamming``."""
        return [s for s, _ in self.history.get("mask_hamming", [])]

    def prune_series(self, key: str) -> list[float]:
        """``key`` at each prune epoch (index 0 = prune epoch 1)."""
        steps = set(self.prune_steps())
        return [v for s, v in self.history.get(key, []) if s in steps]

    def post_warmup(self, key: str) -> list[float]:
        """``key`` at the prune epochs after the warm-up (where S2AP perturbs)."""
        return self.prune_series(key)[self.warmup :]

    def mean_post_warmup(self, key: str) -> float:
        vals = self.post_warmup(key)
        return statistics.fmean(vals) if vals else float("nan")

    def prune_seconds(self) -> float:
        """Median training seconds of the prune epochs after warm-up: the median, because on a
        shared machine single epochs can be several times slower than the others."""
        vals = self.post_warmup("epoch_time_s")
        return statistics.median(vals) if vals else float("nan")

    def last_prune(self, key: str) -> float:
        vals = self.prune_series(key)
        return vals[-1] if vals else float("nan")


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One configuration without its seed (rho/ascent steps are ``None`` for HYDRA)."""

    arm: str
    finetune: str
    sparsity: float
    rho: float | None = None
    ascent_steps: int | None = None

    def label(self, *, with_radius: bool = True) -> str:
        parts = [self.arm, self.finetune, f"sparsity {self.sparsity:g}"]
        if with_radius and self.rho is not None:
            parts.append(f"rho {self.rho:g}, {self.ascent_steps} step(s)")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Loading


def _study_experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    try:
        return study_experiment(client, tracking_uri, name).experiment_id
    except StudyNotFoundError as exc:
        raise ReportError(str(exc)) from None


def _finished_by_trial(runs: Iterable[Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """trial id -> its latest finished run (a restored trial may have several); and how many
    runs of each other status were left out."""
    by_trial: dict[str, Any] = {}
    other: dict[str, int] = defaultdict(int)
    for r in runs:
        tid = r.data.tags.get(TAG_TRIAL_ID, r.info.run_id)
        if r.info.status != "FINISHED":
            other[r.info.status] += 1
            continue
        old = by_trial.get(tid)
        if old is None or (r.info.end_time or 0) > (old.info.end_time or 0):
            by_trial[tid] = r
    return by_trial, other


def _history(
    client: MlflowClient, run_id: str, keys: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    history = {}
    for key in keys:
        hist = client.get_metric_history(run_id, key)
        history[key] = [
            (m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))
        ]
    return history


def _study_notes(name: str, by_trial: dict[str, Any], other: dict[str, int]) -> list[str]:
    notes = []
    if other:
        shown = ", ".join(f"{n} {s}" for s, n in sorted(other.items()))
        notes.append(f"study {name}: left out {shown} trial run(s) (not finished)")
    missing = [tid for tid, r in by_trial.items() if "test_autoattack_acc" not in r.data.metrics]
    if missing:
        notes.append(
            f"study {name}: {len(missing)} finished trial(s) have no AutoAttack test number "
            "(study.test_eval.every_trial off, or evaluate.autoattack false)"
        )
    if not by_trial:
        notes.append(f"study {name}: no finished trial")
    return notes


def load_trial_runs(
    tracking_uri: str, studies: Sequence[str], *, history_keys: Sequence[str] = HISTORY_KEYS
) -> tuple[list[TrialRun], list[str]]:
    """The finished trial runs of ``studies`` with their metric histories, and notes.

    Runs are searched by tags (``s2ap.role=trial``); a trial with several runs (a restored
    trial) counts once (its latest finished run). Runs that did not finish are left out and
    counted in the notes, so the page says what is missing.
    """
    client = make_client(tracking_uri, read_only=True)
    runs_out: list[TrialRun] = []
    notes: list[str] = []
    for name in studies:
        exp_id = _study_experiment_id(client, tracking_uri, name)
        found = search_all_runs(client, [exp_id], f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'")
        by_trial, other = _finished_by_trial(found)
        for tid, r in sorted(by_trial.items()):
            runs_out.append(
                TrialRun(
                    study=name,
                    run_id=r.info.run_id,
                    trial_id=tid,
                    params=dict(r.data.params),
                    metrics=dict(r.data.metrics),
                    history=_history(client, r.info.run_id, history_keys),
                    tags=dict(r.data.tags),
                )
            )
        notes += _study_notes(name, by_trial, other)
    return runs_out, notes


# --------------------------------------------------------------------------------------------
# Grouping


def group_cells(runs: Iterable[TrialRun]) -> dict[Cell, list[TrialRun]]:
    """Runs by cell (configuration without seed), each list sorted by seed."""
    cells: dict[Cell, list[TrialRun]] = defaultdict(list)
    for r in runs:
        cells[r.cell].append(r)
    return {c: sorted(rs, key=lambda r: r.seed) for c, rs in sorted(cells.items(), key=_cell_key)}


def _cell_key(item: tuple[Cell, Any]) -> tuple[Any, ...]:
    c = item[0]
    return (
        c.finetune,
        c.sparsity,
        ARM_ORDER.index(c.arm) if c.arm in ARM_ORDER else 99,
        c.rho if c.rho is not None else -1.0,
        c.ascent_steps or 0,
    )


def split_studies(runs: Sequence[TrialRun]) -> tuple[list[TrialRun], list[TrialRun]]:
    """(runs of arm-comparison studies, S2AP runs of radius-sweep studies); see module doc."""
    arms: dict[str, set[str]] = defaultdict(set)
    radii: dict[str, set[tuple[float | None, int | None]]] = defaultdict(set)
    for r in runs:
        arms[r.study].add(r.arm)
        if r.arm == "S2AP":
            radii[r.study].add((r.rho, r.ascent_steps))
    arm_runs = [r for r in runs if len(arms[r.study]) > 1]
    sweep_runs = [r for r in runs if r.arm == "S2AP" and len(radii[r.study]) > 1]
    return arm_runs, sweep_runs


def values(runs: Sequence[TrialRun], fn: Callable[[TrialRun], float]) -> list[float]:
    """``fn`` of each run, in order."""
    return [fn(r) for r in runs]


def metric(key: str) -> Callable[[TrialRun], float]:
    """A run's latest value of ``key`` (NaN if it has none)."""
    return lambda r: r.metrics.get(key, float("nan"))


def by_seed(runs: Sequence[TrialRun], fn: Callable[[TrialRun], float]) -> dict[int, float]:
    """``fn`` of each run, keyed by the run's seed."""
    return {r.seed: fn(r) for r in runs}
