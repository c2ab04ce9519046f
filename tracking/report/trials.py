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

A *cell* is one configuration without its seed; a seed that ran in several studies counts once
in its cell (the first study named; :func:`group_cells`). A run logs only the params its arm
reads (a HYDRA run has no ``prune.warmup_epochs``): :func:`share_warmups` gives it the warm-up of
the runs it is compared with, so that every arm is measured over the same prune epochs.

Runs of different settings (data, model: :attr:`TrialRun.setting`) are never compared: the page
has one section per setting (:mod:`tracking.report.page`). Each study's own run
(:class:`StudyInfo`) adds what the trial runs do not say: its description, its concurrency, its
wall time.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from s2ap.arms import ARMS, DEFAULT_HOST, HOSTS, method_label
from tracking.client import make_client
from tracking.pull import StudyNotFoundError, finished_trial_runs, study_experiment, study_run
from tracking.report.stats import MeanStd, mean_std

__all__ = [
    "ARM_ORDER",
    "CLAIMED_ARM",
    "HISTORY_KEYS",
    "PLAIN_ARM",
    "TEST_METRICS",
    "WARMUP_PARAM",
    "Cell",
    "Cells",
    "ReportError",
    "StudyInfo",
    "TrialRun",
    "control_label",
    "group_cells",
    "host_pairs",
    "load_studies",
    "load_trial_runs",
    "method_of",
    "per_prune_epoch",
    "prune_cells",
    "share_warmups",
    "split_studies",
]

#: The methods' names on the page (:func:`s2ap.arms.method_label`), in display order: each host's
#: plain update, then its arms (HYDRA, S2AP, random, HARP, HARP+S2AP, HARP+random).
ARM_ORDER = [method_label(host, arm) for host in HOSTS.in_order() for arm in ARMS.in_order()]
#: Page label -> (host, arm), the inverse of :func:`s2ap.arms.method_label`.
_METHODS = {
    method_label(host, arm): (host, arm) for host in HOSTS.in_order() for arm in ARMS.in_order()
}
#: The arm the paper claims for (S2AP's ascent) and the plain host update it is compared with;
#: every other arm with a direction is a control of the same norm (random).
CLAIMED_ARM, PLAIN_ARM = "score", "none"
#: The flattened param of the prune warm-up (epochs before S2AP starts perturbing).
WARMUP_PARAM = "prune.warmup_epochs"
#: Per-epoch series the page needs from each run (``images_per_s`` x ``epoch_time_s`` = the
#: images trained per epoch).
HISTORY_KEYS = ("mask_hamming", "sharpness", "epoch_time_s", "val_robust_acc", "images_per_s")
#: Test metrics (what the end-of-trial evaluation logs), as shown on the page.
TEST_METRICS = {
    "test_clean_acc": "clean",
    "test_pgd_acc": "PGD",
    "test_autoattack_acc": "AutoAttack",
}


class ReportError(LookupError):
    """The studies cannot be reported (missing, no finished trial, no test metrics)."""


def method_of(label: str) -> tuple[str, str] | None:
    """(host, arm) of a page label (``HARP+S2AP`` -> ``("harp", "score")``); ``None`` for a
    label this version does not know."""
    return _METHODS.get(label)


def host_pairs() -> list[tuple[str, str, list[str]]]:
    """Per host, in display order: (its claimed arm's label, its plain update's label, the labels
    of its controls): ``("S2AP", "HYDRA", ["random"])``, ``("HARP+S2AP", "HARP",
    ["HARP+random"])``. Every claim of S2AP vs HYDRA is judged for each host from this."""
    out = []
    for host in HOSTS.in_order():
        controls = [
            method_label(host, arm)
            for arm in ARMS.in_order()
            if arm not in (CLAIMED_ARM, PLAIN_ARM) and ARMS.get(arm).direction is not None
        ]
        out.append((method_label(host, CLAIMED_ARM), method_label(host, PLAIN_ARM), controls))
    return out


def control_label(label: str) -> str:
    """The plain host update a method is compared with (``HARP+S2AP`` -> ``HARP``)."""
    method = method_of(label)
    return method_label(method[0], PLAIN_ARM) if method else label


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
    #: The warm-up of a run that logs none (set by :func:`share_warmups`).
    shared_warmup: int = 0

    @property
    def arm(self) -> str:
        """The run's method on the page (``HYDRA``, ``S2AP``, ``HARP+S2AP``, ...); a run of an
        arm or host this version does not know shows its raw names."""
        host = self.params.get("prune.host", DEFAULT_HOST)
        arm = self.params.get("prune.perturbation", "score")
        try:
            return method_label(host, arm)
        except ValueError:
            return f"{host}+{arm}"

    def _reads(self, setting: str) -> bool:
        """Whether the run's arm reads ``prune.<setting>`` (:attr:`s2ap.arms.Arm.reads`)."""
        arm = self.params.get("prune.perturbation", "score")
        if arm in ARMS.names():
            return setting in ARMS.get(arm).reads
        return f"prune.{setting}" in self.params

    @property
    def setting(self) -> tuple[str, str, str]:
        """(data source, data folder name, model): runs of different settings are never
        compared (one page section each)."""
        root = self.params.get("data.root", "")
        name = "" if root in ("", "None") else Path(root).name
        return (self.params.get("data.source", "?"), name, self.params.get("model.arch", "?"))

    @property
    def prune_only(self) -> bool:
        """A trial of a prune-only study (``study.trainable: prune``): no finetuning, no test."""
        return self.params.get("study.trainable") == "prune"

    @property
    def finetune(self) -> str:
        return "AWP" if self.params.get("finetune.awp.enabled") == "True" else "AT"

    @property
    def sparsity(self) -> float:
        return _num(self.params.get("prune.sparsity"))

    @property
    def rho(self) -> float | None:
        return _num(self.params.get("prune.rho")) if self._reads("rho") else None

    @property
    def ascent_steps(self) -> int | None:
        steps = _num(self.params.get("prune.ascent_steps"), 1)
        return int(steps) if self._reads("ascent_steps") else None

    @property
    def seed(self) -> int:
        return int(_num(self.params.get("seed"), 0))

    @property
    def logged_warmup(self) -> int | None:
        """``prune.warmup_epochs`` as the run logged it; ``None`` for an arm that never reads it
        (HYDRA: a run logs only the params its arm uses)."""
        value = _num(self.params.get(WARMUP_PARAM))
        return int(value) if math.isfinite(value) else None

    @property
    def warmup(self) -> int:
        """The prune epochs before the after-warm-up window: the logged warm-up, else the one
        shared by the runs it is compared with (:func:`share_warmups`)."""
        logged = self.logged_warmup
        return self.shared_warmup if logged is None else logged

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

    def images_per_epoch(self) -> int | None:
        """Training images per epoch (after ``drop_last``): ``images_per_s`` x ``epoch_time_s``
        of one epoch, both logged from the same count."""
        rates = dict(self.history.get("images_per_s", []))
        for step, seconds in self.history.get("epoch_time_s", []):
            if step in rates and math.isfinite(rates[step] * seconds):
                return round(rates[step] * seconds)
        return None


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
            parts.append(self.radius())
        return ", ".join(parts)

    def radius(self) -> str:
        """``rho 0.1, 1 step(s)``; ``rho 0.03`` for an arm without ascent steps (random)."""
        steps = "" if self.ascent_steps is None else f", {self.ascent_steps} step(s)"
        return f"rho {self.rho:g}{steps}" if self.rho is not None else ""

    def method(self) -> str:
        """The arm with its radius, for tables: ``S2AP (rho 0.1, 1 step)``, ``random (rho
        0.03)`` (an arm without ascent steps shows none), ``HYDRA``."""
        if self.rho is None:
            return self.arm
        if self.ascent_steps is None:
            return f"{self.arm} (rho {self.rho:g})"
        steps = f"{self.ascent_steps} step{'' if self.ascent_steps == 1 else 's'}"
        return f"{self.arm} (rho {self.rho:g}, {steps})"


# --------------------------------------------------------------------------------------------
# Loading


def _study_experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    try:
        return study_experiment(client, tracking_uri, name).experiment_id
    except StudyNotFoundError as exc:
        raise ReportError(str(exc)) from None


def _history(
    client: MlflowClient, run_id: str, keys: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    from tracking.runs import metric_history  # the run writers' module: the page only reads

    return {key: metric_history(client, run_id, key) for key in keys}


def _study_notes(name: str, by_trial: dict[str, Any], other: Mapping[str, int]) -> list[str]:
    notes = []
    if other:
        shown = ", ".join(f"{n} {s}" for s, n in sorted(other.items()))
        notes.append(f"study {name}: left out {shown} trial run(s) (not completed)")
    # A prune-only trial (study.trainable: prune) never finetunes nor evaluates on test: no
    # AutoAttack number is expected of it.
    missing = [
        tid
        for tid, r in by_trial.items()
        if "test_autoattack_acc" not in r.data.metrics
        and r.data.params.get("study.trainable") != "prune"
    ]
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
    trial) counts once (its latest completed run). Runs that did not complete (failed, killed,
    stopped early by the scheduler) are left out and counted in the notes, so the page says
    what is missing.
    """
    client = make_client(tracking_uri, read_only=True)
    runs_out: list[TrialRun] = []
    notes: list[str] = []
    for name in studies:
        exp_id = _study_experiment_id(client, tracking_uri, name)
        by_trial, other = finished_trial_runs(client, exp_id)
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


@dataclasses.dataclass
class StudyInfo:
    """A study's own run (``s2ap.role=study``): what the trial runs do not say."""

    name: str
    run_id: str = ""
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    status: str = ""

    @property
    def description(self) -> str:
        """``study.description`` of the study file (logged with the study's settings)."""
        text = self.params.get("study.description", "")
        return "" if text == "None" else text

    @property
    def wall_s(self) -> float | None:
        """Seconds from the study run's start to its end (a resumed study: first start to
        last end, pauses included); ``None`` while it runs."""
        if self.start_ms is None or self.end_ms is None:
            return None
        return (self.end_ms - self.start_ms) / 1000.0


def load_studies(tracking_uri: str, studies: Sequence[str]) -> dict[str, StudyInfo]:
    """The study run of each of ``studies`` (an empty :class:`StudyInfo` when there is none)."""
    client = make_client(tracking_uri, read_only=True)
    out = {}
    for name in studies:
        run = study_run(client, _study_experiment_id(client, tracking_uri, name))
        if run is None:
            out[name] = StudyInfo(name)
            continue
        out[name] = StudyInfo(
            name,
            run.info.run_id,
            dict(run.data.params),
            dict(run.data.tags),
            run.info.start_time,
            run.info.end_time,
            run.info.status,
        )
    return out


# --------------------------------------------------------------------------------------------
# Grouping


#: The runs of each cell: what the claims, tables and figures take.
Cells = Mapping[Cell, list[TrialRun]]


def group_cells(runs: Iterable[TrialRun]) -> dict[Cell, list[TrialRun]]:
    """Runs by cell (configuration without seed), each list sorted by seed. A seed that ran
    in several studies (the same configuration repeated, e.g. the HYDRA baseline of two
    studies) counts once, from the first of ``runs``: a repeat is not a new seed (the page's
    repeat check says how far the repeats are apart)."""
    cells: dict[Cell, dict[int, TrialRun]] = defaultdict(dict)
    for r in runs:
        cells[r.cell].setdefault(r.seed, r)
    return {
        c: [by_seed[s] for s in sorted(by_seed)]
        for c, by_seed in sorted(cells.items(), key=_cell_key)
    }


def _cell_key(item: tuple[Cell, Any]) -> tuple[Any, ...]:
    c = item[0]
    return (
        c.finetune,
        c.sparsity,
        ARM_ORDER.index(c.arm) if c.arm in ARM_ORDER else 99,
        c.rho if c.rho is not None else -1.0,
        c.ascent_steps or 0,
    )


def _warmup_groups(r: TrialRun) -> tuple[tuple[Any, ...], ...]:
    """Where a run's warm-up is looked up, nearest first: its (study, finetuning, sparsity),
    its study, every run."""
    return ((r.study, r.finetune, r.sparsity), (r.study,), ())


def share_warmups(runs: Sequence[TrialRun]) -> list[TrialRun]:
    """The runs, each one that logs no warm-up (HYDRA) given the warm-up its nearest group
    logs (:func:`_warmup_groups`; the most common value if it logs several).

    Without this a HYDRA run's after-warm-up window would start at prune epoch 1 while the
    S2AP runs it is compared with skip their warm-up: the Hamming and prune-time claims would
    measure different epochs for the two arms.
    """
    logged: dict[tuple[Any, ...], Counter[int]] = defaultdict(Counter)
    for r in runs:
        if r.logged_warmup is not None:
            for group in _warmup_groups(r):
                logged[group][r.logged_warmup] += 1
    out = []
    for r in runs:
        groups = [logged[g] for g in _warmup_groups(r) if g in logged]
        if r.logged_warmup is None and groups:
            r = dataclasses.replace(r, shared_warmup=groups[0].most_common(1)[0][0])
        out.append(r)
    return out


def _claimed(r: TrialRun) -> bool:
    """A run of the claimed arm (S2AP) on any host."""
    return r.params.get("prune.perturbation", CLAIMED_ARM) == CLAIMED_ARM


def split_studies(runs: Sequence[TrialRun]) -> tuple[list[TrialRun], list[TrialRun]]:
    """(runs of arm-comparison studies, claimed-arm runs of radius-sweep studies); see the
    module doc. A sweep is S2AP (on any host) over more than one (rho, steps) combination."""
    arms: dict[str, set[str]] = defaultdict(set)
    radii: dict[tuple[str, str], set[tuple[float | None, int | None]]] = defaultdict(set)
    for r in runs:
        arms[r.study].add(r.arm)
        if _claimed(r):
            radii[(r.study, r.arm)].add((r.rho, r.ascent_steps))
    arm_runs = [r for r in runs if len(arms[r.study]) > 1]
    sweep_runs = [r for r in runs if _claimed(r) and len(radii[(r.study, r.arm)]) > 1]
    return arm_runs, sweep_runs


def prune_cells(cells: Mapping[Cell, list[TrialRun]]) -> dict[Cell, list[TrialRun]]:
    """The AT cells: the prune phase does not depend on the finetuning (all cells if no AT)."""
    return {c: rs for c, rs in cells.items() if c.finetune == "AT"} or dict(cells)


def per_prune_epoch(
    runs: Sequence[TrialRun], key: str, n_epochs: int | None = None
) -> list[MeanStd]:
    """Mean ± std over the runs (seeds) of ``key`` at each prune epoch (index 0 = epoch 1), for
    ``n_epochs`` epochs (default: the longest run's); a run that lacks an epoch is left out of
    that epoch's numbers."""
    series = [r.prune_series(key) for r in runs]
    n = max((len(s) for s in series), default=0) if n_epochs is None else n_epochs
    return [mean_std(s[i] for s in series if len(s) > i) for i in range(n)]


def values(runs: Sequence[TrialRun], fn: Callable[[TrialRun], float]) -> list[float]:
    """``fn`` of each run, in order."""
    return [fn(r) for r in runs]


def metric(key: str) -> Callable[[TrialRun], float]:
    """A run's latest value of ``key`` (NaN if it has none)."""
    return lambda r: r.metrics.get(key, float("nan"))


def by_seed(runs: Sequence[TrialRun], fn: Callable[[TrialRun], float]) -> dict[int, float]:
    """``fn`` of each run, keyed by the run's seed."""
    return {r.seed: fn(r) for r in runs}
