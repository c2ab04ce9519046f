"""Seed statistics and the one verdict rule of the results page.

A *cell*'s numbers are mean ± sample standard deviation (ddof 1) over its seeds. A claim is judged
per cell with :func:`judge`: the difference of the two means counts only when it is larger than
the larger of the two seed standard deviations; otherwise the verdict is "cannot tell". Several
cells give an overall verdict (:func:`overall`): all cells agree -> that verdict, otherwise
"mixed" with the counts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence

__all__ = [
    "CANNOT_TELL",
    "MIXED",
    "REFUTES",
    "SUPPORTS",
    "MeanStd",
    "Verdict",
    "judge",
    "mean_std",
    "overall",
]

SUPPORTS, REFUTES, CANNOT_TELL, MIXED = "supports", "refutes", "cannot tell", "mixed"


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
