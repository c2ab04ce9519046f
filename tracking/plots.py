"""Plots for trials and studies, from plain lists and dicts (not MLflow objects).

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot), so
plotting works in Ray workers without a display and without pyplot's global figure registry.

Series inputs accept either a list of values (index = epoch) or a list of ``(step, value)`` pairs
(what :func:`tracking.runs.metric_history` returns).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Series = Sequence[float] | Sequence[tuple[int, float]]


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


def _xy(series: Series) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for i, item in enumerate(series):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
        else:
            x, y = i, item
        xs.append(float(x))
        ys.append(float(y))
    return xs, ys


def save_png(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> str:
    """Write ``figure`` as a PNG (creating folders); return the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return os.fspath(path)


def plot_mask_stability(
    hamming: Series | Mapping[str, Series], *, title: str = "Mask stability"
) -> Figure:
    """Normalised Hamming distance between consecutive epochs' masks, per epoch.

    ``hamming`` is one series (global) or a dict name -> series (e.g. ``"global"`` and per layer);
    a lower curve means a more stable mask.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    curves = hamming if isinstance(hamming, Mapping) else {"global": hamming}
    for name, series in curves.items():
        xs, ys = _xy(series)
        width = 2.0 if name == "global" else 1.0
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=width, label=str(name))
    ax.set_xlabel("epoch")
    ax.set_ylabel("normalised Hamming distance")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    if len(curves) > 1:
        ax.legend(fontsize="small", ncols=2 if len(curves) > 8 else 1)
    ax.grid(alpha=0.3)
    return fig


def plot_training_curves(
    history: Mapping[str, Series],
    *,
    accuracy_keys: Iterable[str] = ("val_robust_acc", "val_clean_acc"),
    sharpness_keys: Iterable[str] = ("sharpness",),
    title: str = "Validation accuracy and score-space sharpness",
) -> Figure:
    """Validation robust/clean accuracy (top) and sharpness (bottom) per epoch.

    ``history`` maps metric name -> series; missing keys are skipped, and the sharpness panel is
    drawn only if a sharpness series is present. Any other keys ending in ``sharpness`` are drawn
    there too.
    """
    acc = [k for k in accuracy_keys if k in history]
    sharp = list(
        dict.fromkeys(
            [k for k in sharpness_keys if k in history]
            + [k for k in history if k.endswith("sharpness")]
        )
    )
    fig = new_figure(6.4, 6.0 if sharp else 4.0)
    axes = fig.subplots(2 if sharp else 1, 1, sharex=True, squeeze=False)[:, 0]
    for key in acc:
        xs, ys = _xy(history[key])
        axes[0].plot(xs, ys, marker="o", markersize=3, label=key)
    axes[0].set_ylabel("accuracy")
    axes[0].set_title(title)
    axes[0].grid(alpha=0.3)
    if acc:
        axes[0].legend(fontsize="small")
    if sharp:
        for key in sharp:
            xs, ys = _xy(history[key])
            axes[1].plot(xs, ys, marker="s", markersize=3, label=key)
        axes[1].set_ylabel("L(s+z*) - L(s)")
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize="small")
    axes[-1].set_xlabel("epoch")
    return fig


def layer_sparsity(masks: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of pruned weights per layer for a mask dict (layer -> bool tensor)."""
    out = {}
    for name, mask in masks.items():
        numel = int(mask.numel())
        out[name] = 1.0 - int(mask.sum()) / numel if numel else 0.0
    return out


def plot_layer_sparsity(
    sparsity: Mapping[str, float], *, title: str = "Sparsity per layer"
) -> Figure:
    """Horizontal bar chart of each layer's sparsity (fraction pruned), in the given layer order."""
    names = list(sparsity)
    fig = new_figure(6.4, max(2.5, 0.28 * len(names) + 1.2))
    ax = fig.add_subplot()
    positions = range(len(names))
    ax.barh(list(positions), [float(sparsity[n]) for n in names], color="tab:blue")
    ax.set_yticks(list(positions), labels=names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _lookup(trial: Mapping[str, Any], key: str) -> Any:
    """Find ``key`` in a trial dict: top level, then metrics/params/config, also as a dotted
    suffix (``rho`` matches ``s2ap.rho``)."""
    if key in trial and not isinstance(trial[key], Mapping):
        return trial[key]
    for section in ("metrics", "params", "config"):
        sub = trial.get(section)
        if not isinstance(sub, Mapping):
            continue
        flat = _flatten(sub)
        if key in flat:
            return flat[key]
        suffix = [v for k, v in flat.items() if k.endswith("." + key)]
        if len(suffix) == 1:
            return suffix[0]
    return None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, name))
        else:
            out[name] = v
    return out


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
