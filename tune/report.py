"""A results page that tests the paper's claims with the runs of finished studies (``s2ap report``).

The page is built from MLflow alone: the finished trial runs (``s2ap.role=trial``) of the named
studies, their flattened params (``prune.perturbation``, ``prune.sparsity``, ``seed``, ...), their
latest metrics (``test_*`` from the end-of-trial test evaluation, ``hessian_top_eig`` from the last
prune epoch) and their per-epoch histories (``mask_hamming``, ``sharpness``, ``epoch_time_s``).
Nothing is recomputed from checkpoints, so every number on the page is traceable to a run id (the
appendix lists the runs behind every cell).

Two kinds of study are recognised from their content, not their names:

* an **arm comparison**: a study whose trials use more than one ``prune.perturbation`` (HYDRA =
  ``none``, S2AP = ``score``, the random-direction control = ``random``), with any mix of
  sparsities, finetuning (plain adversarial training ``AT`` or ``AWP``) and seeds;
* a **radius sweep**: a study whose S2AP trials use more than one (``prune.rho``,
  ``prune.ascent_steps``) combination.

A *cell* is one configuration without its seed; its numbers are mean ± sample standard deviation
(ddof 1) over the seeds. A claim is judged per cell with one rule (:func:`judge`): the difference
of the two means counts only when it is larger than the larger of the two seed standard
deviations; otherwise the verdict is "cannot tell". Several cells give an overall verdict
(:func:`overall`): all cells agree -> that verdict, otherwise "mixed" with the counts.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ARMS",
    "Cell",
    "ClaimResult",
    "MeanStd",
    "ReportError",
    "TrialRun",
    "Verdict",
    "build_report",
    "judge",
    "load_trial_runs",
    "mean_std",
    "overall",
    "write_report",
]

#: prune.perturbation -> the arm's name on the page, in display order.
ARMS: dict[str, str] = {"none": "HYDRA", "score": "S2AP", "random": "random"}
ARM_ORDER = list(ARMS.values())
ARM_COLORS = {"HYDRA": "tab:blue", "S2AP": "tab:red", "random": "tab:gray"}
STEP_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown")
#: Per-epoch series the page needs from each run.
HISTORY_KEYS = ("mask_hamming", "sharpness", "epoch_time_s")
#: Test metrics (what the end-of-trial evaluation logs), as shown on the page.
TEST_METRICS = {
    "test_clean_acc": "clean",
    "test_pgd_acc": "PGD",
    "test_autoattack_acc": "AutoAttack",
}
#: The paper's prune-time overhead of S2AP over HYDRA, and the tolerance used to judge it.
#: "About 15%" is read as 15% +- 10 points; the measured mean +- its standard error must lie
#: inside that band to support the claim, and outside it to refute it.
CLAIMED_OVERHEAD = 0.15
OVERHEAD_TOLERANCE = 0.10

SUPPORTS, REFUTES, CANNOT_TELL, MIXED = "supports", "refutes", "cannot tell", "mixed"


class ReportError(LookupError):
    """The studies cannot be reported (missing, no finished trial, no test metrics)."""


# --------------------------------------------------------------------------------------------
# Statistics and verdicts


@dataclasses.dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean ± sample standard deviation of the finite ``values``."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return MeanStd(float("nan"), float("nan"), 0)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return MeanStd(statistics.fmean(vals), std, len(vals))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison: ``a`` against ``b`` on the claimed direction."""

    verdict: str  # supports | refutes | cannot tell
    diff: float  # mean(a) - mean(b)
    noise: float  # max(std(a), std(b)): the seed spread the difference must exceed
    a: MeanStd
    b: MeanStd


def judge(a: Sequence[float], b: Sequence[float], claim: str = "greater") -> Verdict:
    """Does ``a`` beat ``b`` in the claimed direction (``greater``/``less``) beyond seed noise?

    ``supports`` when ``|mean(a) - mean(b)| > max(std(a), std(b))`` and the sign is the claimed
    one, ``refutes`` when it is larger than that spread with the other sign, ``cannot tell``
    otherwise (also with fewer than two values on a side: no spread to compare with).
    """
    if claim not in ("greater", "less"):
        raise ValueError(f"claim={claim!r}: use 'greater' or 'less'")
    ma, mb = mean_std(a), mean_std(b)
    if ma.n == 0 or mb.n == 0:
        return Verdict(CANNOT_TELL, float("nan"), float("nan"), ma, mb)
    diff = ma.mean - mb.mean
    noise = max(ma.std, mb.std)
    if ma.n < 2 or mb.n < 2 or abs(diff) <= noise:
        return Verdict(CANNOT_TELL, diff, noise, ma, mb)
    better = diff > 0 if claim == "greater" else diff < 0
    return Verdict(SUPPORTS if better else REFUTES, diff, noise, ma, mb)


def overall(verdicts: Iterable[str]) -> str:
    """One verdict from several cells: unanimous -> that one; none decided -> cannot tell;
    otherwise ``mixed (k supports, m refute, r cannot tell)``."""
    vs = list(verdicts)
    if not vs:
        return CANNOT_TELL
    if len(set(vs)) == 1:
        return vs[0]
    s, r, c = vs.count(SUPPORTS), vs.count(REFUTES), vs.count(CANNOT_TELL)
    return f"{MIXED} ({s} support, {r} refute, {c} cannot tell)"


# --------------------------------------------------------------------------------------------
# Runs


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


def _client(tracking_uri: str) -> Any:
    from tracking.runs import make_client

    return make_client(tracking_uri)


def load_trial_runs(
    tracking_uri: str, studies: Sequence[str], *, history_keys: Sequence[str] = HISTORY_KEYS
) -> tuple[list[TrialRun], list[str]]:
    """The finished trial runs of ``studies`` with their metric histories, and notes.

    Runs are searched by tags (``s2ap.role=trial``); a trial with several runs (a restored
    trial) counts once (its latest finished run). Runs that did not finish are left out and
    counted in the notes, so the page says what is missing.
    """
    from mlflow.entities import ViewType

    from tracking.runs import ROLE_TRIAL, TAG_ROLE, TAG_TRIAL_ID

    client = _client(tracking_uri)
    runs_out: list[TrialRun] = []
    notes: list[str] = []
    for name in studies:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            names = sorted(e.name for e in client.search_experiments(max_results=100))
            raise ReportError(
                f"no study {name!r} at {tracking_uri}; studies there: "
                f"{', '.join(names) or '(none)'}"
            )
        found = []
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        by_trial: dict[str, Any] = {}
        other = defaultdict(int)
        for r in found:
            tid = r.data.tags.get(TAG_TRIAL_ID, r.info.run_id)
            if r.info.status != "FINISHED":
                other[r.info.status] += 1
                continue
            old = by_trial.get(tid)
            if old is None or (r.info.end_time or 0) > (old.info.end_time or 0):
                by_trial[tid] = r
        if other:
            shown = ", ".join(f"{n} {s}" for s, n in sorted(other.items()))
            notes.append(f"study {name}: left out {shown} trial run(s) (not finished)")
        for tid, r in sorted(by_trial.items()):
            history = {}
            for key in history_keys:
                hist = client.get_metric_history(r.info.run_id, key)
                history[key] = [
                    (m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))
                ]
            runs_out.append(
                TrialRun(
                    study=name,
                    run_id=r.info.run_id,
                    trial_id=tid,
                    params=dict(r.data.params),
                    metrics=dict(r.data.metrics),
                    history=history,
                    tags=dict(r.data.tags),
                )
            )
        missing = [
            tid for tid, r in by_trial.items() if "test_autoattack_acc" not in r.data.metrics
        ]
        if missing:
            notes.append(
                f"study {name}: {len(missing)} finished trial(s) have no AutoAttack test number "
                "(study.test_eval.every_trial off, or evaluate.autoattack false)"
            )
        if not by_trial:
            notes.append(f"study {name}: no finished trial")
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


def _values(runs: Sequence[TrialRun], fn: Callable[[TrialRun], float]) -> list[float]:
    return [fn(r) for r in runs]


def _metric(key: str) -> Callable[[TrialRun], float]:
    return lambda r: r.metrics.get(key, float("nan"))


def _by_seed(runs: Sequence[TrialRun], fn: Callable[[TrialRun], float]) -> dict[int, float]:
    return {r.seed: fn(r) for r in runs}


# --------------------------------------------------------------------------------------------
# Claims


@dataclasses.dataclass
class ClaimResult:
    """One claim of the paper (or one reviewer question) and what these runs say about it."""

    claim: str
    verdict: str
    detail: list[str]
    cells: list[tuple[str, Verdict]] = dataclasses.field(default_factory=list)


def _comparisons(
    cells: Mapping[Cell, list[TrialRun]], arm_a: str, arm_b: str, *, prune_only: bool = False
) -> list[tuple[str, list[TrialRun], list[TrialRun]]]:
    """Pairs of cells (arm_a vs arm_b) at the same finetuning and sparsity.

    ``arm_b`` cells are matched on rho/steps when both arms have them (S2AP vs random), else on
    finetuning and sparsity only (vs HYDRA). ``prune_only``: the prune phase does not depend on
    the finetuning, so only the AT trials are used (the AWP ones repeat the same prune run).
    """
    out = []
    for ca, ra in cells.items():
        if ca.arm != arm_a or (prune_only and ca.finetune != "AT"):
            continue
        for cb, rb in cells.items():
            if cb.arm != arm_b or cb.finetune != ca.finetune or cb.sparsity != ca.sparsity:
                continue
            if cb.rho is not None and (cb.rho, cb.ascent_steps) != (ca.rho, ca.ascent_steps):
                continue
            radius = "" if ca.rho is None else f", rho {ca.rho:g}/{ca.ascent_steps} step(s)"
            label = (
                f"sparsity {ca.sparsity:g}{radius}"
                if prune_only
                else f"{ca.finetune}, sparsity {ca.sparsity:g}{radius}"
            )
            out.append((label, ra, rb))
    return out


def _pct(v: float) -> str:
    return f"{v * 100:+.1f}" if math.isfinite(v) else "–"


def _claim_compare(
    claim: str,
    pairs: list[tuple[str, list[TrialRun], list[TrialRun]]],
    fn: Callable[[TrialRun], float],
    direction: str,
    fmt: Callable[[float], str],
    unit: str,
) -> ClaimResult:
    cells = [(label, judge(_values(a, fn), _values(b, fn), direction)) for label, a, b in pairs]
    detail = [
        f"{label}: difference {fmt(v.diff)}{unit} (seed spread {fmt(v.noise).lstrip('+')}{unit}) "
        f"-> {v.verdict}"
        for label, v in cells
    ]
    if not cells:
        detail = ["no pair of cells to compare in these studies"]
    return ClaimResult(claim, overall(v.verdict for _, v in cells), detail, cells)


def _accuracy_claims(cells: Mapping[Cell, list[TrialRun]]) -> list[ClaimResult]:
    aa = _metric("test_autoattack_acc")
    claims = []
    res = _claim_compare(
        "S2AP has higher AutoAttack accuracy than HYDRA (paper: +1–2 points)",
        _comparisons(cells, "S2AP", "HYDRA"),
        aa,
        "greater",
        _pct,
        " points",
    )
    in_range = [
        label for label, v in res.cells if v.verdict == SUPPORTS and 0.01 <= v.diff <= 0.02 + 1e-12
    ]
    if res.cells:
        res.detail.append(
            f"cells where the gain is beyond the seed spread and inside the claimed 1–2 points: "
            f"{len(in_range)} of {len(res.cells)}"
        )
    claims.append(res)
    for fin in ("AT", "AWP"):
        pairs = [p for p in _comparisons(cells, "S2AP", "HYDRA") if p[0].startswith(fin + ",")]
        if pairs:
            claims.append(
                _claim_compare(
                    f"… with identical finetuning for both arms ({fin} for all)",
                    pairs,
                    aa,
                    "greater",
                    _pct,
                    " points",
                )
            )
    claims.append(
        _claim_compare(
            "The gain comes from the sharpness-aware direction: S2AP has higher AutoAttack "
            "accuracy than a random perturbation of the same norm (reviewer control)",
            _comparisons(cells, "S2AP", "random"),
            aa,
            "greater",
            _pct,
            " points",
        )
    )
    claims.append(
        _claim_compare(
            "S2AP has higher PGD accuracy than HYDRA (the search-time attack)",
            _comparisons(cells, "S2AP", "HYDRA"),
            _metric("test_pgd_acc"),
            "greater",
            _pct,
            " points",
        )
    )
    claims.append(_clean_claim(cells))
    return claims


def _clean_claim(cells: Mapping[Cell, list[TrialRun]]) -> ClaimResult:
    """Clean accuracy beside robust accuracy (asked for by the reviewers; not a paper claim).

    A non-inferiority statement: it holds unless S2AP's clean accuracy is lower than HYDRA's by
    more than the seed spread.
    """
    fn = _metric("test_clean_acc")
    cells_out = []
    detail = []
    for label, a, b in _comparisons(cells, "S2AP", "HYDRA"):
        v = judge(_values(a, fn), _values(b, fn), "greater")
        lower = v.verdict == REFUTES
        cells_out.append((label, dataclasses.replace(v, verdict=REFUTES if lower else SUPPORTS)))
        detail.append(
            f"{label}: difference {_pct(v.diff)} points (seed spread "
            f"{_pct(v.noise).lstrip('+')} points) -> "
            + ("lower beyond the spread" if lower else "not lower beyond the spread")
        )
    return ClaimResult(
        "S2AP keeps clean accuracy: not lower than HYDRA beyond the seed spread (reported at "
        "the reviewers' request, not a claim of the paper)",
        overall(v.verdict for _, v in cells_out) if cells_out else CANNOT_TELL,
        detail or ["no pair of cells to compare in these studies"],
        cells_out,
    )


def _fmt_g(v: float) -> str:
    return f"{v:+.3g}" if math.isfinite(v) else "–"


def _landscape_claims(cells: Mapping[Cell, list[TrialRun]]) -> list[ClaimResult]:
    pairs = _comparisons(cells, "S2AP", "HYDRA", prune_only=True)
    return [
        _claim_compare(
            "S2AP masks are more stable: lower Hamming distance between consecutive-epoch masks "
            "(mean over the prune epochs after warm-up)",
            pairs,
            lambda r: r.mean_post_warmup("mask_hamming") * 100,
            "less",
            _fmt_g,
            " % of the masked weights",
        ),
        _claim_compare(
            "… and at the last prune epoch (how settled the final mask is)",
            pairs,
            lambda r: r.last_prune("mask_hamming") * 100,
            "less",
            _fmt_g,
            " % of the masked weights",
        ),
        _claim_compare(
            "S2AP finds flatter score landscapes: smaller score-space sharpness L(s+z*) − L(s) at "
            "the end of pruning (same radius for every arm)",
            pairs,
            lambda r: r.last_prune("sharpness"),
            "less",
            _fmt_g,
            "",
        ),
        _claim_compare(
            "S2AP finds flatter score landscapes: smaller top Hessian eigenvalue w.r.t. the "
            "scores at the end of pruning",
            pairs,
            _metric("hessian_top_eig"),
            "less",
            _fmt_g,
            "",
        ),
    ]


def prune_overhead(
    cells: Mapping[Cell, list[TrialRun]],
) -> tuple[MeanStd, list[tuple[str, MeanStd]]]:
    """S2AP / HYDRA prune-epoch time − 1 (post-warm-up epochs), paired by seed, finetuning and
    sparsity: the pooled mean ± std and the per-sparsity ones."""
    ratios_all: list[float] = []
    per: dict[float, list[float]] = defaultdict(list)
    for _label, a, b in _comparisons(cells, "S2AP", "HYDRA"):
        ta = _by_seed(a, TrialRun.prune_seconds)
        tb = _by_seed(b, TrialRun.prune_seconds)
        sparsity = a[0].sparsity
        for seed in sorted(set(ta) & set(tb)):
            if tb[seed] > 0 and math.isfinite(ta[seed]) and math.isfinite(tb[seed]):
                ratio = ta[seed] / tb[seed] - 1.0
                ratios_all.append(ratio)
                per[sparsity].append(ratio)
    return mean_std(ratios_all), [(f"sparsity {s:g}", mean_std(v)) for s, v in sorted(per.items())]


def _time_claim(cells: Mapping[Cell, list[TrialRun]]) -> ClaimResult:
    pooled, per = prune_overhead(cells)
    claim = (
        f"S2AP costs about {CLAIMED_OVERHEAD:.0%} more pruning time than HYDRA "
        "(per prune epoch after warm-up)"
    )
    if pooled.n == 0:
        return ClaimResult(claim, CANNOT_TELL, ["no S2AP/HYDRA pair with prune-epoch times"])
    se = pooled.std / math.sqrt(pooled.n) if pooled.n > 1 else float("inf")
    lo, hi = pooled.mean - se, pooled.mean + se
    band = (CLAIMED_OVERHEAD - OVERHEAD_TOLERANCE, CLAIMED_OVERHEAD + OVERHEAD_TOLERANCE)
    if band[0] <= lo and hi <= band[1]:
        verdict = SUPPORTS
    elif hi < band[0] or lo > band[1]:
        verdict = REFUTES
    else:
        verdict = CANNOT_TELL
    how = ""
    if verdict == REFUTES:
        how = (
            " (S2AP is slower than claimed)" if lo > band[1] else " (S2AP costs less than claimed)"
        )
    detail = [
        f"measured overhead {pooled.mean:+.1%} ± {pooled.std:.1%} (std over {pooled.n} "
        f"seed-paired runs; standard error {se:.1%}); 'about {CLAIMED_OVERHEAD:.0%}' is read as "
        f"{band[0]:.0%}–{band[1]:.0%}: supported when mean ± standard error lies inside, refuted "
        f"when it lies outside{how}",
        *[f"{label}: {m.mean:+.1%} ± {m.std:.1%} (n={m.n})" for label, m in per],
        "timings come from trials sharing 2 CPU cores with each other and with other jobs; "
        "treat them as rough",
    ]
    return ClaimResult(claim, verdict, detail)


def _sweep_claims(
    sweep: Mapping[Cell, list[TrialRun]], arms: Mapping[Cell, list[TrialRun]]
) -> list[ClaimResult]:
    if not sweep:
        return []
    aa = _metric("test_autoattack_acc")
    out = []
    # Each (rho, steps) setting against HYDRA at the same finetuning and sparsity.
    verdicts = []
    detail = []
    for c, rs in sweep.items():
        hydra = [
            r
            for hc, hr in arms.items()
            if hc.arm == "HYDRA" and hc.finetune == c.finetune and hc.sparsity == c.sparsity
            for r in hr
        ]
        if not hydra:
            continue
        v = judge(_values(rs, aa), _values(hydra, aa), "greater")
        verdicts.append(v.verdict)
        detail.append(
            f"rho {c.rho:g}, {c.ascent_steps} step(s): {_pct(v.diff)} points vs HYDRA "
            f"(spread {_pct(v.noise).lstrip('+')}) -> {v.verdict}"
        )
    if verdicts:
        out.append(
            ClaimResult(
                "S2AP beats HYDRA over a range of radii and ascent steps (AutoAttack; each "
                "setting against HYDRA at the same sparsity and finetuning)",
                overall(verdicts),
                detail,
            )
        )
    # Does the radius matter beyond the seed spread? Best vs worst rho at each ascent step count.
    detail = []
    verdicts = []
    by_steps: dict[int | None, list[tuple[Cell, list[TrialRun]]]] = defaultdict(list)
    for c, rs in sweep.items():
        by_steps[c.ascent_steps].append((c, rs))
    for steps, items in sorted(by_steps.items(), key=lambda kv: kv[0] or 0):
        if len(items) < 2:
            continue
        means = [(mean_std(_values(rs, aa)).mean, c, rs) for c, rs in items]
        means.sort(key=lambda t: t[0])
        lo, hi = means[0], means[-1]
        v = judge(_values(hi[2], aa), _values(lo[2], aa), "greater")
        verdicts.append(v.verdict)
        detail.append(
            f"{steps} step(s): best rho {hi[1].rho:g} vs worst rho {lo[1].rho:g}: "
            f"{_pct(v.diff)} points (spread {_pct(v.noise).lstrip('+')}) -> "
            + ("the radius matters" if v.verdict == SUPPORTS else "within the seed spread")
        )
    if verdicts:
        out.append(
            ClaimResult(
                "The radius rho changes AutoAttack accuracy by more than the seed spread "
                "(sensitivity asked for by the reviewers; 'supports' = it matters)",
                overall(verdicts),
                detail,
            )
        )
    # More ascent steps: steps k > 1 against 1 step at the same rho.
    detail = []
    verdicts = []
    ones = {(c.finetune, c.sparsity, c.rho): rs for c, rs in sweep.items() if c.ascent_steps == 1}
    for c, rs in sweep.items():
        if c.ascent_steps == 1 or (c.finetune, c.sparsity, c.rho) not in ones:
            continue
        v = judge(_values(rs, aa), _values(ones[(c.finetune, c.sparsity, c.rho)], aa), "greater")
        verdicts.append(v.verdict)
        detail.append(
            f"rho {c.rho:g}: {c.ascent_steps} steps vs 1 step: {_pct(v.diff)} points "
            f"(spread {_pct(v.noise).lstrip('+')}) -> {v.verdict}"
        )
    if verdicts:
        out.append(
            ClaimResult(
                "More ascent steps (2–3) give higher AutoAttack accuracy than one step",
                overall(verdicts),
                detail,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Tables


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def accuracy_table(cells: Mapping[Cell, list[TrialRun]]) -> list[list[str]]:
    """Rows: finetune, sparsity, arm (+radius), seeds, clean, PGD, AutoAttack (percent)."""
    rows = []
    for c, rs in cells.items():
        rows.append(
            [
                c.finetune,
                f"{c.sparsity:g}",
                c.arm if c.rho is None else f"{c.arm} (rho {c.rho:g}, {c.ascent_steps} step)",
                str(len(rs)),
                *[mean_std(_values(rs, _metric(k))).fmt(100) for k in TEST_METRICS],
            ]
        )
    return rows


def _fmt_small(m: MeanStd) -> str:
    if m.n == 0 or not math.isfinite(m.mean):
        return "–"
    if m.n == 1:
        return f"{m.mean:#.3g}"
    return f"{m.mean:#.3g} ± {m.std:#.2g}"


def hamming_table(cells: Mapping[Cell, list[TrialRun]]) -> tuple[list[str], list[list[str]]]:
    """Mean (over seeds) Hamming distance in percent of the masked weights, per prune epoch."""
    prune_cells = {c: rs for c, rs in cells.items() if c.finetune == "AT"} or dict(cells)
    n_epochs = max(
        (len(r.prune_series("mask_hamming")) for rs in prune_cells.values() for r in rs), default=0
    )
    header = ["sparsity", "arm", *[f"ep {i + 1}" for i in range(n_epochs)]]
    rows = []
    for c, rs in prune_cells.items():
        series = [r.prune_series("mask_hamming") for r in rs]
        row = [f"{c.sparsity:g}", c.arm if c.rho is None else f"{c.arm} (rho {c.rho:g})"]
        for i in range(n_epochs):
            m = mean_std(s[i] for s in series if len(s) > i)
            row.append(f"{m.mean * 100:.3g}" if m.n else "–")
        rows.append(row)
    return header, rows


def landscape_table(cells: Mapping[Cell, list[TrialRun]]) -> list[list[str]]:
    """Rows: sparsity, arm, mean Hamming after warm-up, sharpness and Hessian at prune end."""
    prune_cells = {c: rs for c, rs in cells.items() if c.finetune == "AT"} or dict(cells)
    rows = []
    for c, rs in prune_cells.items():
        rows.append(
            [
                f"{c.sparsity:g}",
                c.arm if c.rho is None else f"{c.arm} (rho {c.rho:g})",
                str(len(rs)),
                _fmt_small(mean_std(r.mean_post_warmup("mask_hamming") * 100 for r in rs)),
                _fmt_small(mean_std(r.last_prune("mask_hamming") * 100 for r in rs)),
                _fmt_small(mean_std(r.last_prune("sharpness") for r in rs)),
                _fmt_small(mean_std(_values(rs, _metric("hessian_top_eig")))),
            ]
        )
    return rows


def time_table(cells: Mapping[Cell, list[TrialRun]]) -> list[list[str]]:
    """Rows: sparsity, arm, prune-epoch seconds (all epochs / after warm-up), ratio to HYDRA."""
    rows = []
    by_sp: dict[float, dict[str, list[TrialRun]]] = defaultdict(lambda: defaultdict(list))
    for c, rs in cells.items():
        by_sp[c.sparsity][c.arm].extend(rs)
    for sp, arms in sorted(by_sp.items()):
        hydra = mean_std(r.prune_seconds() for r in arms.get("HYDRA", []))
        for arm in sorted(arms, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99):
            rs = arms[arm]
            post = mean_std(r.prune_seconds() for r in rs)
            every = mean_std(
                statistics.fmean(r.prune_series("epoch_time_s"))
                for r in rs
                if r.prune_series("epoch_time_s")
            )
            ratio = (
                f"{post.mean / hydra.mean:.2f}"
                if hydra.n and math.isfinite(hydra.mean) and hydra.mean > 0
                else "–"
            )
            rows.append(
                [f"{sp:g}", arm, str(post.n), every.fmt(digits=2), post.fmt(digits=2), ratio]
            )
    return rows


def sweep_table(sweep: Mapping[Cell, list[TrialRun]]) -> list[list[str]]:
    rows = []
    for c, rs in sorted(sweep.items(), key=lambda kv: (kv[0].ascent_steps or 0, kv[0].rho or 0)):
        rows.append(
            [
                f"{c.rho:g}",
                str(c.ascent_steps),
                str(len(rs)),
                *[mean_std(_values(rs, _metric(k))).fmt(100) for k in TEST_METRICS],
                _fmt_small(mean_std(r.mean_post_warmup("mask_hamming") * 100 for r in rs)),
                _fmt_small(mean_std(r.last_prune("sharpness") for r in rs)),
                _fmt_small(mean_std(_values(rs, _metric("hessian_top_eig")))),
            ]
        )
    return rows


# --------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_robust_vs_sparsity(cells: Mapping[Cell, list[TrialRun]]) -> Any:
    """AutoAttack accuracy vs sparsity per arm, one panel per finetuning; bars = seed std."""
    fins = sorted({c.finetune for c in cells})
    fig = _figure(3.4 * max(len(fins), 1), 3.2)
    axes = fig.subplots(1, max(len(fins), 1), squeeze=False, sharey=True)[0]
    sparsities = sorted({c.sparsity for c in cells})
    pos = {s: i for i, s in enumerate(sparsities)}
    for ax, fin in zip(axes, fins):
        for k, arm in enumerate(ARM_ORDER):
            pts = [(c, rs) for c, rs in cells.items() if c.arm == arm and c.finetune == fin]
            if not pts:
                continue
            xs, ys, es = [], [], []
            for c, rs in sorted(pts, key=lambda p: p[0].sparsity):
                m = mean_std(_values(rs, _metric("test_autoattack_acc")))
                xs.append(pos[c.sparsity] + (k - 1) * 0.08)
                ys.append(m.mean * 100)
                es.append(m.std * 100)
            ax.errorbar(
                xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=arm, color=ARM_COLORS.get(arm)
            )
        ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_title(f"finetune: {fin}", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AutoAttack accuracy (%)")
    axes[0].legend(fontsize="small")
    return fig


def figure_hamming(cells: Mapping[Cell, list[TrialRun]]) -> Any:
    """Mask Hamming distance per prune epoch per arm (mean, band = seed std), per sparsity."""
    prune_cells = {c: rs for c, rs in cells.items() if c.finetune == "AT"} or dict(cells)
    sparsities = sorted({c.sparsity for c in prune_cells})
    fig = _figure(3.2 * max(len(sparsities), 1), 3.0)
    axes = fig.subplots(1, max(len(sparsities), 1), squeeze=False)[0]
    for ax, sp in zip(axes, sparsities):
        warm = None
        for c, rs in prune_cells.items():
            if c.sparsity != sp:
                continue
            series = [r.prune_series("mask_hamming") for r in rs]
            n = max(len(s) for s in series)
            xs = list(range(1, n + 1))
            ms = [mean_std(s[i] for s in series if len(s) > i) for i in range(n)]
            mean = [m.mean * 100 for m in ms]
            lo = [(m.mean - m.std) * 100 for m in ms]
            hi = [(m.mean + m.std) * 100 for m in ms]
            color = ARM_COLORS.get(c.arm)
            ax.plot(xs, mean, marker="o", ms=3, label=c.arm, color=color)
            ax.fill_between(xs, lo, hi, alpha=0.2, color=color)
            warm = rs[0].warmup
        if warm:
            ax.axvline(warm + 0.5, color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("prune epoch")
        ax.set_title(f"sparsity {sp:g}", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mask change vs previous epoch (%)")
    axes[0].legend(fontsize="small")
    return fig


def figure_rho(sweep: Mapping[Cell, list[TrialRun]], arms: Mapping[Cell, list[TrialRun]]) -> Any:
    """AutoAttack accuracy vs rho per ascent-step count (error bars: seed std; dots: seeds),
    with HYDRA at the same sparsity/finetuning as a band."""
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    aa = _metric("test_autoattack_acc")
    steps = sorted({c.ascent_steps or 1 for c in sweep})
    for k, st in enumerate(steps):
        pts = sorted(
            ((c, rs) for c, rs in sweep.items() if c.ascent_steps == st),
            key=lambda p: p[0].rho or 0,
        )
        shift = 1.0 + (k - (len(steps) - 1) / 2) * 0.04
        xs = [(c.rho or 0) * shift for c, _ in pts]
        ms = [mean_std(_values(rs, aa)) for _, rs in pts]
        color = STEP_COLORS[k % len(STEP_COLORS)]
        ax.errorbar(
            xs,
            [m.mean * 100 for m in ms],
            yerr=[m.std * 100 for m in ms],
            marker="o",
            ms=4,
            capsize=3,
            label=f"S2AP, {st} ascent step(s)",
            color=color,
        )
        for x, (_, rs) in zip(xs, pts):
            ax.scatter(
                [x] * len(rs),
                [v * 100 for v in _values(rs, aa)],
                s=6,
                alpha=0.5,
                color=color,
            )
    ref = {(c.finetune, c.sparsity) for c in sweep}
    hydra = [
        r
        for c, rs in arms.items()
        if c.arm == "HYDRA" and (c.finetune, c.sparsity) in ref
        for r in rs
    ]
    if hydra:
        m = mean_std(_values(hydra, aa))
        ax.axhspan(
            (m.mean - m.std) * 100, (m.mean + m.std) * 100, color=ARM_COLORS["HYDRA"], alpha=0.15
        )
        ax.axhline(m.mean * 100, color=ARM_COLORS["HYDRA"], lw=1, label="HYDRA (mean ± std)")
    ax.set_xscale("log")
    rhos = sorted({c.rho for c in sweep if c.rho})
    ax.set_xticks(rhos, [f"{r:g}" for r in rhos])
    ax.minorticks_off()
    ax.set_xlabel("rho (relative radius)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# --------------------------------------------------------------------------------------------
# The page


@dataclasses.dataclass
class Report:
    """Everything the page shows, computed (what the tests check)."""

    runs: list[TrialRun]
    arm_cells: dict[Cell, list[TrialRun]]
    sweep_cells: dict[Cell, list[TrialRun]]
    claims: list[ClaimResult]
    notes: list[str]


def build_report(runs: Sequence[TrialRun], notes: Sequence[str] = ()) -> Report:
    """Group the runs into cells and judge every claim (no I/O)."""
    arm_runs, sweep_runs = split_studies(runs)
    arm_cells = group_cells(arm_runs)
    sweep_cells = group_cells(sweep_runs)
    claims: list[ClaimResult] = []
    if arm_cells:
        claims += _accuracy_claims(arm_cells)
        claims += _landscape_claims(arm_cells)
        claims.append(_time_claim(arm_cells))
    claims += _sweep_claims(sweep_cells, arm_cells)
    return Report(list(runs), arm_cells, sweep_cells, claims, [*notes, *repeat_check(runs)])


def repeat_check(runs: Sequence[TrialRun]) -> list[str]:
    """Notes on configurations (cell and seed) that ran in more than one study: same dense
    model, same seed, so their test numbers should agree; say how far apart they are."""
    groups: dict[tuple[Cell, int], list[TrialRun]] = defaultdict(list)
    for r in runs:
        groups[(r.cell, r.seed)].append(r)
    repeats = [rs for rs in groups.values() if len({r.study for r in rs}) > 1]
    if not repeats:
        return []
    gaps = []
    for rs in repeats:
        for key in TEST_METRICS:
            vals = [r.metrics.get(key, float("nan")) for r in rs]
            if all(math.isfinite(v) for v in vals):
                gaps.append(max(vals) - min(vals))
    studies = sorted({r.study for rs in repeats for r in rs})
    worst = max(gaps) if gaps else float("nan")
    return [
        f"repeat check: {len(repeats)} configuration(s) ran in several studies "
        f"({', '.join(studies)}) with the same seed; the largest difference of a test accuracy "
        f"between the repeats is {worst * 100:.2f} points"
        + (" (bit-identical runs)" if worst == 0 else " (runs are not bit-identical)")
    ]


def _setup_lines(runs: Sequence[TrialRun]) -> list[str]:
    if not runs:
        return []
    p = runs[0].params
    keys = {
        "data": "data.source",
        "model": "model.arch",
        "eps": "threat.eps",
        "PGD steps (training)": "threat.steps",
        "pretrain epochs": "pretrain.epochs",
        "prune epochs": "prune.epochs",
        "warm-up epochs": "prune.warmup_epochs",
        "finetune epochs": "finetune.epochs",
        "AWP gamma": "finetune.awp.gamma",
        "test examples (clean, PGD)": "evaluate.n_examples",
        "PGD steps (test)": "evaluate.pgd_steps",
        "AutoAttack examples": "evaluate.autoattack_examples",
        "sharpness radius": "validation.sharpness_rho",
        "Hessian power iterations": "validation.hessian_iters",
    }
    parts = []
    for label, key in keys.items():
        vals = sorted({r.params.get(key, "?") for r in runs})
        parts.append(f"{label} {'/'.join(vals)}")
    dense = sorted({r.tags.get("s2ap.dense_hash", "") for r in runs} - {""})
    commits = sorted({r.tags.get("s2ap.git_commit", "")[:10] for r in runs} - {""})
    lines = ["Setup (from the runs' params): " + "; ".join(parts) + "."]
    if p:
        lines.append(
            f"Dense model(s) every trial started from (content hash): {', '.join(dense) or '?'}; "
            f"code commit(s): {', '.join(commits) or '?'}."
        )
    return lines


_VERDICT_MARK = {SUPPORTS: "**supports**", REFUTES: "**refutes**", CANNOT_TELL: "cannot tell"}


def render_markdown(
    report: Report,
    *,
    studies: Sequence[str],
    tracking_uris: Sequence[str],
    figures: Mapping[str, str],
    command: str | None = None,
    title: str = "Results: do the paper's claims hold here?",
) -> str:
    """The page as Markdown; ``figures`` maps a figure key to its path relative to the page."""
    lines = [f"# {title}", ""]
    lines.append(
        f"Generated by `{command or 's2ap report'}` on {_dt.date.today().isoformat()} from the "
        f"MLflow runs of the studies {', '.join(f'`{s}`' for s in studies)} "
        f"({len(report.runs)} finished trials). Every number is the mean ± sample standard "
        "deviation over the seeds of a cell; the run ids behind every cell are listed in the "
        "[appendix](#appendix-run-ids). Accuracies are in percent on the test split."
    )
    lines.append("")
    lines += _setup_lines(report.runs)
    lines.append("")
    for note in report.notes:
        lines.append(f"> note: {note}")
    if report.notes:
        lines.append("")

    lines += ["## Claims and verdicts", ""]
    lines.append(
        "Rule: a difference between two cells counts only when it is larger than the larger of "
        "their two seed standard deviations; then the claim is **supported** (right direction) "
        "or **refuted** (wrong direction), otherwise this page *cannot tell*. Several cells "
        "give one verdict when they all agree, otherwise *mixed* with the counts."
    )
    lines.append("")
    lines += _md_table(
        ["claim", "verdict"],
        [[c.claim, _VERDICT_MARK.get(c.verdict, c.verdict)] for c in report.claims],
    )
    lines.append("")
    for c in report.claims:
        lines.append(f"- **{c.claim}** — {_VERDICT_MARK.get(c.verdict, c.verdict)}")
        lines += [f"  - {d}" for d in c.detail]
    lines.append("")

    if report.arm_cells:
        lines += ["## Accuracy per arm, finetuning and sparsity", ""]
        lines += _md_table(
            ["finetune", "sparsity", "arm", "seeds", "clean", "PGD", "AutoAttack"],
            accuracy_table(report.arm_cells),
        )
        lines.append("")
        if "robust_vs_sparsity" in figures:
            lines += [f"![AutoAttack accuracy vs sparsity]({figures['robust_vs_sparsity']})", ""]

        lines += ["## Mask stability: Hamming distance between consecutive-epoch masks", ""]
        lines.append(
            "Percent of the masked weights whose keep/prune decision changed since the previous "
            "prune epoch (mean over seeds; AT trials only: the prune phase does not depend on "
            "the finetuning). The dotted line in the figure marks the end of the warm-up, before "
            "which every arm runs plain HYDRA updates."
        )
        lines.append("")
        header, rows = hamming_table(report.arm_cells)
        lines += _md_table(header, rows)
        lines.append("")
        if "hamming" in figures:
            lines += [f"![Hamming distance per prune epoch]({figures['hamming']})", ""]

        lines += ["## Score-space flatness at the end of pruning", ""]
        lines.append(
            "Hamming: mean over the prune epochs after warm-up, and at the last prune epoch "
            "(percent of the masked weights). Sharpness: "
            "L(s+z*) − L(s) at the same radius for every arm (validation.sharpness_rho) on a "
            "fixed validation batch. Hessian: top eigenvalue of the loss Hessian w.r.t. the "
            "scores (power iteration), last prune epoch."
        )
        lines.append("")
        lines += _md_table(
            [
                "sparsity",
                "arm",
                "seeds",
                "Hamming after warm-up (%)",
                "Hamming, last epoch (%)",
                "sharpness",
                "Hessian top eig",
            ],
            landscape_table(report.arm_cells),
        )
        lines.append("")

        lines += ["## Pruning time", ""]
        lines.append(
            "Training seconds per prune epoch (validation excluded): the mean over all prune "
            "epochs, and the median over the epochs after warm-up (where S2AP adds its ascent "
            "pass; the median because single epochs on a shared machine can be several times "
            "slower); ratio = arm / HYDRA after warm-up. Per run, then mean ± std over runs; AT "
            "and AWP trials both count (each ran its own prune phase). Two trials ran at a time "
            "on 2 shared CPU cores: read these as rough."
        )
        lines.append("")
        lines += _md_table(
            [
                "sparsity",
                "arm",
                "runs",
                "s/epoch, all (mean)",
                "s/epoch, after warm-up (median)",
                "ratio to HYDRA",
            ],
            time_table(report.arm_cells),
        )
        lines.append("")

    if report.sweep_cells:
        lines += ["## Radius and ascent steps (S2AP)", ""]
        cfg = next(iter(report.sweep_cells))
        lines.append(
            f"S2AP at sparsity {cfg.sparsity:g}, finetuning {cfg.finetune}, over rho and ascent "
            "steps; seeds per setting as listed."
        )
        lines.append("")
        lines += _md_table(
            [
                "rho",
                "ascent steps",
                "seeds",
                "clean",
                "PGD",
                "AutoAttack",
                "Hamming after warm-up (%)",
                "sharpness",
                "Hessian top eig",
            ],
            sweep_table(report.sweep_cells),
        )
        lines.append("")
        if "rho" in figures:
            lines += [f"![AutoAttack accuracy vs rho]({figures['rho']})", ""]

    lines += ["## Appendix: run ids", ""]
    lines.append(
        "Every cell's runs (MLflow run id, Ray trial id) by seed. Open one with "
        "`mlflow.get_run(run_id)` against "
        + ", ".join(f"`{u}`" for u in tracking_uris)
        + " or in `s2ap ui STUDY.yaml`."
    )
    lines.append("")
    rows = []
    seen: set[str] = set()
    for cells in (report.arm_cells, report.sweep_cells):
        for c, rs in cells.items():
            for r in rs:
                if r.run_id in seen:
                    continue
                seen.add(r.run_id)
                rows.append([r.study, c.label(), str(r.seed), f"`{r.run_id}`", r.trial_id])
    lines += _md_table(["study", "cell", "seed", "run id", "trial"], rows)
    lines.append("")
    return "\n".join(lines)


def write_report(
    targets: Sequence[tuple[str, str]],
    out: str | os.PathLike[str],
    *,
    figures_dir: str | os.PathLike[str] | None = None,
    dpi: int = 90,
    command: str | None = None,
) -> Report:
    """Read the runs of ``targets`` (``(study name, tracking URI)`` pairs), write the page at
    ``out`` and its PNG figures under ``figures_dir`` (default: ``<out folder>/figures``)."""
    by_uri: dict[str, list[str]] = defaultdict(list)
    for name, uri in targets:
        by_uri[uri].append(name)
    runs: list[TrialRun] = []
    notes: list[str] = []
    for uri, names in by_uri.items():
        r, n = load_trial_runs(uri, names)
        runs += r
        notes += n
    if not runs:
        raise ReportError(
            f"no finished trial run in {', '.join(n for n, _ in targets)}; run the studies first"
        )
    report = build_report(runs, notes)
    out_path = Path(out).absolute()
    fig_dir = Path(figures_dir).absolute() if figures_dir else out_path.parent / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    made: list[tuple[str, Any]] = []
    if report.arm_cells:
        made.append(("robust_vs_sparsity", figure_robust_vs_sparsity(report.arm_cells)))
        made.append(("hamming", figure_hamming(report.arm_cells)))
    if report.sweep_cells:
        made.append(("rho", figure_rho(report.sweep_cells, report.arm_cells)))
    for key, fig in made:
        path = fig_dir / f"{key}.png"
        fig.savefig(path, format="png", dpi=dpi)
        figures[key] = os.path.relpath(path, out_path.parent)
    text = render_markdown(
        report,
        studies=[n for n, _ in targets],
        tracking_uris=list(by_uri),
        figures=figures,
        command=command,
    )
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_path)
    return report
