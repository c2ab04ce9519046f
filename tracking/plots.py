"""Plots of a study, from plain lists and dicts (not MLflow objects): the study run's scatter
of the objective against each searched hyperparameter, and the figure helpers the results page
(:mod:`tracking.report.figures`) draws with.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot), so
plotting works without a display and without pyplot's global figure registry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2ap.config import flatten

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float = 6.4, height: float = 4.0) -> Figure:
    """An empty figure on its own Agg canvas (no pyplot), with constrained layout.

    matplotlib is imported here, on first use: importing the module (or the results page that
    uses it) does not pay matplotlib's import.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> str:
    """Write ``figure`` as a PNG (creating folders); return the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return os.fspath(path)


def _lookup(trial: Mapping[str, Any], key: str) -> Any:
    """Find ``key`` in a trial dict: top level, then metrics/params/config, also as a dotted
    suffix (``rho`` matches ``s2ap.rho``)."""
    if key in trial and not isinstance(trial[key], Mapping):
        return trial[key]
    for section in ("metrics", "params", "config"):
        sub = trial.get(section)
        if not isinstance(sub, Mapping):
            continue
        flat = flatten(sub)
        if key in flat:
            return flat[key]
        suffix = [v for k, v in flat.items() if k.endswith("." + key)]
        if len(suffix) == 1:
            return suffix[0]
    return None


def _as_float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def plot_study_scatter(
    trials: Sequence[Mapping[str, Any]],
    *,
    x: str = "rho",
    y: str = "val_robust_acc",
    title: str | None = None,
) -> Figure:
    """Scatter of metric ``y`` against hyperparameter ``x`` over a study's trials.

    Each trial is a dict with the values at top level or under ``metrics``/``params``/``config``
    (as :meth:`tracking.runs.StudyTracker.trials` returns). Trials lacking either value are
    skipped; the x axis is logarithmic when positive values span more than two decades.
    """
    points = []
    for trial in trials:
        xv, yv = _as_float(_lookup(trial, x)), _as_float(_lookup(trial, y))
        if xv is not None and yv is not None:
            points.append((xv, yv))
    fig = new_figure()
    ax = fig.add_subplot()
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=30, alpha=0.8)
        best = max(range(len(ys)), key=ys.__getitem__)
        ax.scatter(
            [xs[best]],
            [ys[best]],
            s=90,
            facecolors="none",
            edgecolors="tab:red",
            label=f"best {y}={ys[best]:.4g}",
        )
        ax.legend(fontsize="small")
        if min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
    else:
        ax.text(
            0.5,
            0.5,
            f"no trial has both {x} and {y}",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x} ({len(points)} trials)")
    ax.grid(alpha=0.3)
    return fig
