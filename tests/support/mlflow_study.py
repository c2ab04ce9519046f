"""Checks of a finished study as MLflow holds it, shared by the tests that run one for real
against a tracking server (sqlite or PostgreSQL backend store behind ``mlflow server``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.tune.conftest import run_cli, write_study
from tracking.artifacts import load_masks

__all__ = ["assert_study_runs", "pull_final_mask", "run_two_trial_study"]

#: The params every trial run records: the two searched and one fixed by the study file.
TRIAL_PARAMS = ("prune.rho", "prune.ascent_steps", "prune.sparsity")
#: The mask artifacts every finished trial logs.
TRIAL_MASKS = {"masks/prune-end.s2mask", "masks/final.s2mask"}


def run_two_trial_study(folder: Path, tracking_uri: str) -> Path:
    """``s2ap tune`` on TINY_STUDY with two trials, no early stopping (every trial runs its 4
    epochs: prune 3 + finetune 1), logging to ``tracking_uri``; return the study file."""
    path = write_study(
        folder, {"study.num_samples": 2, "study.scheduler": {"kind": "none"}, "finetune.epochs": 1}
    )
    res = run_cli("tune", str(path), "--tracking-uri", tracking_uri, "-q", timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return path


def assert_study_runs(
    client: MlflowClient, study: str, *, trials: int, epoch_steps: Sequence[int]
) -> tuple[Run, list[Run]]:
    """Assert one parent study run with ``trials`` nested trial runs, each with the study's
    params, a ``val_robust_acc`` point at every epoch step and its masks; return the runs."""
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no MLflow experiment named {study!r}"
    ids = [experiment.experiment_id]
    parents = client.search_runs(ids, "tags.`s2ap.role` = 'study'")
    children = client.search_runs(ids, "tags.`s2ap.role` = 'trial'")
    assert len(parents) == 1 and len(children) == trials, (len(parents), len(children))
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert set(TRIAL_PARAMS) <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_robust_acc")
        assert sorted(m.step for m in history) == list(epoch_steps)
        names = {a.path for a in client.list_artifacts(run.info.run_id, "masks")}
        assert names == TRIAL_MASKS
    return parents[0], children


def pull_final_mask(
    client: MlflowClient, study: str, out: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``s2ap masks pull`` through the server; assert the pulled mask's payload hash is the one
    the chosen trial logged; return the masks and header."""
    res = run_cli(
        "masks", "pull", study, "--tracking-uri", client.tracking_uri, "--out", str(out),
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "pulled.json").read_text())
    logged = client.get_run(info["run_id"]).data.tags["s2ap.masks.final.sha256"]
    masks, header = load_masks(out / "final.s2mask")
    assert header["payload_sha256"] == logged
    return masks, header
