"""Fixtures for the tracking tests: fake masks and studies, an embedded store, a real server.

Everything MLflow writes lives under pytest's tmp dirs; the server is stopped by PID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tracking.artifacts import save_masks
from tracking.runs import StudyTracker, TrialTracker
from tracking.server import MlflowServer

# A small conv net's prunable layers, with sizes that are not multiples of 8.
SMALL_SHAPES = {
    "features.0": (6, 1, 3, 3),  # 54
    "features.3": (10, 6, 3, 3),  # 540
    "classifier.0": (13, 90),  # 1170
    "classifier.2": (10, 13),  # 130
}


def fake_masks(seed: int, sparsity: float = 0.7, shapes=SMALL_SHAPES) -> dict[str, torch.Tensor]:
    """Random bool masks keeping about ``1 - sparsity`` of each layer."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=gen) >= sparsity for n, s in shapes.items()}


@dataclasses.dataclass
class FakeStudy:
    """What a fake study logged, to compare with what MLflow returns."""

    tracker: StudyTracker
    parent_run_id: str
    runs: dict[str, str]  # trial_id -> run_id
    params: dict[str, dict]
    metrics: dict[str, dict[str, list[tuple[int, float]]]]
    mask_sha: dict[str, str]
    masks: dict[str, dict[str, torch.Tensor]]
    mask_bytes: dict[str, bytes]  # the exact file each trial logged


STUDY_CONFIG = {
    "model": {"arch": "small_cnn", "dataset": "digits"},
    "search": {"rho": {"loguniform": [0.01, 1.0]}, "ascent_steps": [1, 2, 3]},
    "num_samples": 3,
}
STUDY_TEXT = "name: {name}\nmodel:\n  arch: small_cnn\nnum_samples: 3\n"


def trial_params(i: int) -> dict:
    return {
        "model": {"arch": "small_cnn", "dataset": "digits"},
        "s2ap": {"rho": [0.02, 0.1, 0.5][i % 3], "ascent_steps": 1 + i % 3, "radius": "relative"},
        "prune": {"sparsity": 0.9, "epochs": 3},
        "seed": i,
    }


def run_fake_study(
    tracking_uri: str | None,
    storage_root: Path,
    name: str,
    *,
    n_trials: int = 3,
    epochs: int = 3,
    fail_trial: int | None = None,
) -> FakeStudy:
    """Log a study like the tune layer does: parent run, then one nested run per trial."""
    study = StudyTracker(
        tracking_uri,
        name,
        study_config=STUDY_CONFIG,
        storage_root=storage_root,
        study_text=STUDY_TEXT.format(name=name),
        tags={"s2ap.ray_version": "test"},
    )
    parent = study.start()
    out = FakeStudy(study, parent, {}, {}, {}, {}, {}, {})
    for i in range(n_trials):
        tid = f"trial_{i:04d}"
        params = trial_params(i)
        trial = TrialTracker.open(
            **study.trial_context(), trial_id=tid, params=params, tags={"s2ap.device": "cpu"}
        )
        history: dict[str, list[tuple[int, float]]] = {"val_robust_acc": [], "val_clean_acc": []}
        for epoch in range(epochs):
            robust = 0.2 + 0.1 * i + 0.01 * epoch
            clean = robust + 0.3
            trial.log_metrics(
                {"val_robust_acc": robust, "val_clean_acc": clean, "phase": "prune"}, step=epoch
            )
            history["val_robust_acc"].append((epoch, robust))
            history["val_clean_acc"].append((epoch, clean))
        masks = fake_masks(i)
        header = {"architecture": "small_cnn", "method": "s2ap"}
        out.mask_sha[tid] = trial.log_masks(masks, header)
        # The same masks and header written locally: the bytes the artifact must have.
        local = storage_root / "expected" / f"{tid}.s2mask"
        save_masks(local, masks, {**header, "study": name, "trial_id": tid})
        out.mask_bytes[tid] = local.read_bytes()
        trial.log_state_dict({"w": torch.full((3,), float(i))})
        trial.set_phase("done")
        trial.finish("FAILED" if i == fail_trial else "FINISHED")
        out.runs[tid] = trial.run_id
        out.params[tid] = params
        out.metrics[tid] = history
        out.masks[tid] = masks
    return out


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite + proxied artifacts under a tmp dir)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(
        backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifacts_destination=root / "artifacts",
        log_dir=root / "logs",
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
