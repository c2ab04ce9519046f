"""The page's figures (matplotlib, Agg canvas, no pyplot): accuracy vs sparsity, mask stability
per prune epoch, accuracy vs the radius rho (validation accuracy for a sweep without test
numbers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracking.plots import new_figure
from tracking.report.claims import sweep_metric
from tracking.report.stats import mean_std
from tracking.report.trials import (
    ARM_ORDER,
    Cells,
    TrialRun,
    control_label,
    metric,
    per_prune_epoch,
    prune_cells,
    values,
)

__all__ = ["ARM_COLORS", "figure_hamming", "figure_rho", "figure_robust_vs_sparsity"]

#: One colour per method, stable across figures and pages: each host's plain update, S2AP
#: arm and control get their own (HYDRA blue, S2AP red, random grey, HARP green, HARP+S2AP
#: purple, HARP+random olive); methods beyond the palette get matplotlib's cycle.
_PALETTE = ("tab:blue", "tab:red", "tab:gray", "tab:green", "tab:purple", "tab:olive")
ARM_COLORS = dict(zip(ARM_ORDER, _PALETTE))
STEP_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown")


def _arm_errorbars(ax: Any, cells: Cells, fin: str, pos: dict[float, int]) -> None:
    """One AutoAttack-vs-sparsity line per arm, slightly shifted so the error bars do not hide."""
    present = [a for a in ARM_ORDER if any(c.arm == a and c.finetune == fin for c in cells)]
    for k, arm in enumerate(present):
        pts = [(c, rs) for c, rs in cells.items() if c.arm == arm and c.finetune == fin]
        xs, ys, es = [], [], []
        for c, rs in sorted(pts, key=lambda p: p[0].sparsity):
            m = mean_std(values(rs, metric("test_autoattack_acc")))
            xs.append(pos[c.sparsity] + (k - (len(present) - 1) / 2) * 0.08)
            ys.append(m.mean * 100)
            es.append(m.std * 100)
        ax.errorbar(
            xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=arm, color=ARM_COLORS.get(arm)
        )


def figure_robust_vs_sparsity(cells: Cells) -> Any:
    """AutoAttack accuracy vs sparsity per arm, one panel per finetuning; bars = seed std."""
    fins = sorted({c.finetune for c in cells})
    fig = new_figure(3.4 * max(len(fins), 1), 3.2)
    axes = fig.subplots(1, max(len(fins), 1), squeeze=False, sharey=True)[0]
    sparsities = sorted({c.sparsity for c in cells})
    pos = {s: i for i, s in enumerate(sparsities)}
    for ax, fin in zip(axes, fins):
        _arm_errorbars(ax, cells, fin, pos)
        ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_title(f"finetune: {fin}", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AutoAttack accuracy (%)")
    axes[0].legend(fontsize="small")
    return fig


def _hamming_band(ax: Any, arm: str, rs: list[TrialRun]) -> None:
    """Mean Hamming distance per prune epoch over the seeds, with a ±std band."""
    ms = per_prune_epoch(rs, "mask_hamming")
    xs = list(range(1, len(ms) + 1))
    color = ARM_COLORS.get(arm)
    ax.plot(xs, [m.mean * 100 for m in ms], marker="o", ms=3, label=arm, color=color)
    lo = [(m.mean - m.std) * 100 for m in ms]
    hi = [(m.mean + m.std) * 100 for m in ms]
    ax.fill_between(xs, lo, hi, alpha=0.2, color=color)


def figure_hamming(cells: Cells) -> Any:
    """Mask Hamming distance per prune epoch per arm (mean, band = seed std), per sparsity."""
    by_cell = prune_cells(cells)
    sparsities = sorted({c.sparsity for c in by_cell})
    fig = new_figure(3.2 * max(len(sparsities), 1), 3.0)
    axes = fig.subplots(1, max(len(sparsities), 1), squeeze=False)[0]
    for ax, sp in zip(axes, sparsities):
        warm = None
        for c, rs in by_cell.items():
            if c.sparsity == sp:
                _hamming_band(ax, c.arm, rs)
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


def _rho_line(
    ax: Any, sweep: Cells, arm: str, steps: int, k: int, n_lines: int, fn: Callable[..., float]
) -> None:
    """One arm at one ascent-step count: mean ± std per rho, and each seed as a dot."""
    pts = sorted(
        ((c, rs) for c, rs in sweep.items() if c.arm == arm and c.ascent_steps == steps),
        key=lambda p: p[0].rho or 0,
    )
    shift = 1.0 + (k - (n_lines - 1) / 2) * 0.04
    xs = [(c.rho or 0) * shift for c, _ in pts]
    ms = [mean_std(values(rs, fn)) for _, rs in pts]
    color = STEP_COLORS[k % len(STEP_COLORS)]
    ax.errorbar(
        xs,
        [m.mean * 100 for m in ms],
        yerr=[m.std * 100 for m in ms],
        marker="o",
        ms=4,
        capsize=3,
        label=f"{arm}, {steps} ascent step(s)",
        color=color,
    )
    for x, (_, rs) in zip(xs, pts):
        ax.scatter([x] * len(rs), [v * 100 for v in values(rs, fn)], s=6, alpha=0.5, color=color)


def _host_band(ax: Any, sweep: Cells, arms: Cells, plain: str, fn: Callable[..., float]) -> None:
    """The plain host update at the sweep's sparsity/finetuning, as a mean line and a ±std
    band."""
    ref = {(c.finetune, c.sparsity) for c in sweep}
    runs = [
        r
        for c, rs in arms.items()
        if c.arm == plain and (c.finetune, c.sparsity) in ref
        for r in rs
    ]
    if not runs:
        return
    m = mean_std(values(runs, fn))
    color = ARM_COLORS.get(plain)
    ax.axhspan((m.mean - m.std) * 100, (m.mean + m.std) * 100, color=color, alpha=0.15)
    ax.axhline(m.mean * 100, color=color, lw=1, label=f"{plain} (mean ± std)")


def figure_rho(sweep: Cells, arms: Cells) -> Any:
    """AutoAttack accuracy (or, for a sweep without test numbers, the validation robust
    accuracy at the last prune epoch) vs rho per arm and ascent-step count (error bars: seed
    std; dots: seeds), with each arm's plain host update at the same sparsity/finetuning as a
    band."""
    fn, name = sweep_metric(sweep)
    fig = new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    lines = sorted({(c.arm, c.ascent_steps or 1) for c in sweep})
    for k, (arm, st) in enumerate(lines):
        _rho_line(ax, sweep, arm, st, k, len(lines), fn)
    for plain in sorted({control_label(c.arm) for c in sweep}):
        _host_band(ax, sweep, arms, plain, fn)
    ax.set_xscale("log")
    rhos = sorted({c.rho for c in sweep if c.rho})
    ax.set_xticks(rhos, [f"{r:g}" for r in rhos])
    ax.minorticks_off()
    ax.set_xlabel("rho (relative radius)")
    ax.set_ylabel(
        "AutoAttack accuracy (%)"
        if name.startswith("AutoAttack")
        else "val robust acc (%)\nlast prune epoch"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
