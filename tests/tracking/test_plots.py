"""Plots render to non-empty PNGs from plain lists and dicts."""

from __future__ import annotations

from pathlib import Path

from tests.tracking.conftest import fake_masks
from tracking.plots import (
    layer_sparsity,
    plot_layer_sparsity,
    plot_mask_stability,
    plot_study_scatter,
    plot_training_curves,
    save_png,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _check_png(path: str) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG and len(data) > 2000


def test_trial_plots(tmp_path: Path) -> None:
    stability = {"global": [0.2, 0.05, 0.01, 0.0], "features.0": [(1, 0.3), (2, 0.1), (3, 0.02)]}
    _check_png(save_png(plot_mask_stability(stability), tmp_path / "a" / "stability.png"))
    _check_png(save_png(plot_mask_stability([0.1, 0.05]), tmp_path / "stability1.png"))
    history = {
        "val_robust_acc": [(0, 0.3), (1, 0.35), (2, 0.4)],
        "val_clean_acc": [0.6, 0.65, 0.7],
        "sharpness": [0.5, 0.3, 0.2],
    }
    _check_png(save_png(plot_training_curves(history), tmp_path / "curves.png"))
    _check_png(save_png(plot_training_curves({"val_robust_acc": [0.1]}), tmp_path / "c1.png"))
    sparsity = layer_sparsity(fake_masks(0, sparsity=0.8))
    assert all(0.6 < s < 0.95 for s in sparsity.values())
    _check_png(save_png(plot_layer_sparsity(sparsity), tmp_path / "sparsity.png"))


def test_study_scatter(tmp_path: Path) -> None:
    trials = [
        {
            "params": {"s2ap.rho": "0.01", "s2ap.ascent_steps": "1"},
            "metrics": {"val_robust_acc": 0.4},
        },
        {"config": {"s2ap": {"rho": 0.5, "ascent_steps": 2}}, "metrics": {"val_robust_acc": 0.45}},
        {"rho": 2.0, "ascent_steps": 3, "val_robust_acc": 0.41},
        {"params": {"s2ap.rho": "0.1"}, "metrics": {}},  # unfinished: skipped
    ]
    for hp in ("rho", "ascent_steps"):
        _check_png(save_png(plot_study_scatter(trials, x=hp), tmp_path / f"{hp}.png"))
    _check_png(save_png(plot_study_scatter([], x="rho"), tmp_path / "empty.png"))
