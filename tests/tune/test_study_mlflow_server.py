"""A real study logging to a real ``mlflow server`` on 127.0.0.1 (sqlite store, proxied
artifacts), then ``masks pull`` through the server and ``masks apply`` on a dense checkpoint."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from s2ap.masking import ScoreMasking
from s2ap.models import create_model
from tests.support.mlflow_study import assert_study_runs, pull_final_mask, run_two_trial_study
from tests.tune.conftest import run_cli
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
        run_two_trial_study(tmp_path / "study", server.url)
        assert not (tmp_path / "study" / "studies" / "mlflow.db").exists()  # all went to the server
        client = MlflowClient(server.url)
        assert_study_runs(client, "tiny", trials=2, epoch_steps=[1, 2, 3, 4])
        pulled = tmp_path / "pulled"
        masks, header = pull_final_mask(client, "tiny", pulled)
        # The best trial's model is in the server's registry, its files behind the proxy.
        version = client.get_model_version_by_alias("tiny", "best")
        assert version.source.startswith("mlflow-artifacts:"), version.source
        by_model = tmp_path / "pulled-by-model"
        res = run_cli("masks", "pull", "models:/tiny@best", "--tracking-uri", server.url,
                      "--out", str(by_model), timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert (by_model / "final.s2mask").read_bytes() == (pulled / "final.s2mask").read_bytes()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_TRACKING_URI", server.url)
            served = mlflow.pyfunc.load_model("models:/tiny@best").predict(
                torch.rand(3, 1, 8, 8).numpy()
            )
        assert served["logits"].shape == (3, 4) and served["class"].shape == (3,)

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
