"""The Trainable checkpoints and restores exactly (Ray's validate_save_restore and bit-exact)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from ray.tune.utils import validate_save_restore

from tests.tune.conftest import trial_config
from tune.trial.checkpoint import load_trial_checkpoint
from tune.trial.context import CONTEXT_KEY, TrialConfigError
from tune.trial.trainable import S2APTrainable


@pytest.mark.ray
def test_validate_save_restore(tmp_path: Path, ray_local: object) -> None:
    assert validate_save_restore(S2APTrainable, config=trial_config(tmp_path))


def test_restore_is_exact(tmp_path: Path) -> None:
    config = trial_config(tmp_path, **{"prune.perturbation": "score"})
    straight = S2APTrainable(config=dict(config))
    results = [straight.train() for _ in range(5)]
    assert results[-1]["done"] is True
    assert [r["phase"] for r in results] == ["prune"] * 3 + ["finetune"] * 2
    for key in ("val_robust_acc", "val_clean_acc", "sparsity", "epoch_time_s", "images_per_s"):
        assert key in results[-1]
    assert "mask_hamming" in results[0] and "sharpness" in results[0]
    # Prune-phase metrics are carried into finetune results (objectives may use them).
    assert results[-1]["sharpness"] == results[2]["sharpness"]

    first = S2APTrainable(config=dict(config))
    for _ in range(2):
        first.train()
    with tempfile.TemporaryDirectory() as ckpt:
        first.save_checkpoint(ckpt)
        second = S2APTrainable(config=dict(config))
        second.load_checkpoint(ckpt)
        resumed = [second.train() for _ in range(3)]
        pipelines = load_trial_checkpoint(ckpt)
        assert pipelines[0].global_epoch == 2
    for a, b in zip(results[2:], resumed):
        assert a["val_robust_acc"] == b["val_robust_acc"]
        assert a["train_robust_loss"] == b["train_robust_loss"]
    ma, mb = straight.pipelines[0].masks(), second.pipelines[0].masks()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # A finished trial restored from its final checkpoint runs nothing more.
    with tempfile.TemporaryDirectory() as ckpt:
        straight.save_checkpoint(ckpt)
        again = S2APTrainable(config=dict(config))
        again.load_checkpoint(ckpt)
        assert again.step().get("__duplicate__") is True


def test_several_seeds_report_mean_and_spread(tmp_path: Path) -> None:
    config = trial_config(tmp_path)
    config[CONTEXT_KEY]["seeds"] = [0, 1]
    trainable = S2APTrainable(config=config)
    r = trainable.train()
    assert len(trainable.pipelines) == 2
    assert {"val_robust_acc_std", "mask_hamming_seeds"} <= set(r)
    assert 0.0 <= r["mask_hamming_seeds"] <= 1.0


def test_a_searched_seed_seeds_the_trial(tmp_path: Path) -> None:
    trainable = S2APTrainable(config=trial_config(tmp_path, seed=3))
    assert [p.cfg.seed for p in trainable.pipelines] == [3]


def test_invalid_sampled_config_names_the_field(tmp_path: Path) -> None:
    config = trial_config(tmp_path, **{"prune.ascent_steps": 0})
    with pytest.raises(TrialConfigError, match=r"prune\.ascent_steps"):
        S2APTrainable(config=config)


def test_a_finished_trial_restored_from_its_final_checkpoint_stays_finished(tmp_path: Path) -> None:
    """After a killed driver, Tune may restore a trial that had already finished: it must run
    nothing, and its MLflow run (reopened by trial id) must end FINISHED again."""
    from mlflow.tracking import MlflowClient

    from tracking.runs import StudyTracker

    config = trial_config(tmp_path)
    tracker = StudyTracker(None, "restore-final", study_config={}, storage_root=tmp_path / "store")
    tracker.start()
    config[CONTEXT_KEY]["tracking"] = tracker.trial_context()
    first = S2APTrainable(config=dict(config))
    while not first.train()["done"]:
        pass
    client = MlflowClient(tracker.tracking_uri)
    (run,) = client.search_runs([tracker.experiment_id], "tags.`s2ap.role` = 'trial'")
    assert run.info.status == "FINISHED"
    with tempfile.TemporaryDirectory() as ckpt:
        first.save_checkpoint(ckpt)
        # Ray may build an actor for a trial and drop it unused (a reused actor took the
        # trial): it must leave the run alone.
        dropped = S2APTrainable(config=dict(config))
        dropped.cleanup()
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
        again = S2APTrainable(config=dict(config))
        assert client.get_run(run.info.run_id).info.status == "FINISHED"  # opened at 1st step
        again.load_checkpoint(ckpt)
        assert again.step().get("__duplicate__") is True
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    again.cleanup()  # the actor ends (or is reused): the run stays FINISHED
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([tracker.experiment_id], "tags.`s2ap.role` = 'trial'")) == 1
