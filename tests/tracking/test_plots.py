"""The study scatter plot renders to a non-empty PNG from plain lists and dicts."""

from __future__ import annotations

from pathlib import Path

from tracking.plots import plot_study_scatter, save_png

PNG = b"\x89PNG\r\n\x1a\n"


def _check_png(path: str) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG and len(data) > 2000


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
