"""A real study logging to a real ``mlflow server`` on 127.0.0.1 (sqlite store, proxied
artifacts), then ``masks pull`` through the server and ``masks apply`` on a dense checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from s2ap.masking import ScoreMasking
from s2ap.models import create_model
from tests.tune.conftest import run_cli, write_study
from tracking.artifacts import load_masks
from tracking.server import MlflowServer

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]


def plain_mlp() -> torch.nn.Module:
    return create_model(
        "mlp", num_classes=4, in_channels=1, image_size=8, mean=[0.5], std=[0.25]
    ).eval()


def test_study_through_an_mlflow_server_then_pull_and_apply(tmp_path: Path) -> None:
    with MlflowServer(
        backend_store_uri=f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
        artifacts_destination=str(tmp_path / "server" / "artifacts"),
        log_dir=tmp_path / "server",
    ) as server:
        path = write_study(
            tmp_path / "study",
            {"study.num_samples": 2, "study.scheduler": {"kind": "none"}, "finetune.epochs": 1},
        )
        res = run_cli("tune", str(path), "--tracking-uri", server.url, "-q", timeout=400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert not (tmp_path / "study" / "studies" / "mlflow.db").exists()  # all went to the server

        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("tiny")
        parents = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'study'")
        trials = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
        assert len(parents) == 1 and len(trials) == 2
        for run in trials:
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert {"prune.rho", "prune.ascent_steps", "prune.sparsity"} <= set(run.data.params)
            history = client.get_metric_history(run.info.run_id, "val_robust_acc")
            assert sorted(m.step for m in history) == [1, 2, 3, 4]  # prune 3 + finetune 1
            names = {a.path for a in client.list_artifacts(run.info.run_id, "masks")}
            assert names == {"masks/prune-end.s2mask", "masks/final.s2mask"}

        # masks pull through the server: the bytes hash to what the trial logged.
        pulled = tmp_path / "pulled"
        res = run_cli(
            "masks", "pull", "tiny", "--tracking-uri", server.url, "--out", str(pulled), timeout=120
        )
        assert res.returncode == 0, res.stderr
        info = json.loads((pulled / "pulled.json").read_text())
        logged = client.get_run(info["run_id"]).data.tags["s2ap.masks.final.sha256"]
        masks, header = load_masks(pulled / "final.s2mask")
        assert header["payload_sha256"] == logged

    # masks apply: zeros where the mask is off, and the same outputs as the masked model.
    torch.manual_seed(0)
    dense = plain_mlp()
    dense_path = tmp_path / "dense.pt"
    torch.save(dense.state_dict(), dense_path)
    out = tmp_path / "pruned.pt"
    res = run_cli(
        "masks", "apply", str(pulled / "final.s2mask"), "--checkpoint", str(dense_path),
        "--out", str(out), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    pruned_state = torch.load(out, weights_only=True)
    for layer, mask in masks.items():
        assert torch.all(pruned_state[f"{layer}.weight"][~mask] == 0)
    pruned = plain_mlp()
    pruned.load_state_dict(pruned_state)
    masked = plain_mlp()
    masked.load_state_dict(dense.state_dict())
    ScoreMasking(masked, sparsity=0.8).load_masks(masks)
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x))
        assert torch.equal(pruned(x).argmax(1), masked(x).argmax(1))  # same accuracy on any batch
