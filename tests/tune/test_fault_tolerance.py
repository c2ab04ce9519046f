"""A lost worker costs at most one epoch, with the default settings.

A one-trial study whose file says nothing about failures (``study.max_failures`` defaults to 2,
``study.checkpoint.frequency`` to 1) runs through ``s2ap tune``; once the trial has reported
an epoch, its worker process (the PID Ray records in each result) is SIGKILLed. Ray restarts
the trial from its last checkpoint: it redoes at most one epoch, its MLflow run holds every
step exactly once, and ``s2ap status`` shows the retry.

Whether the kill lands before or after the epoch's checkpoint is up to timing, so the redone
epoch's logging is also tested deterministically, without Ray: a trial restarted from the
checkpoint before its last logged epoch logs each epoch once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.support.processes import kill_leftovers
from tests.tune.conftest import S2AP, run_cli, short_tmp, trial_config, write_study
from tune.study.file import Study, load_study
from tune.trial.context import CONTEXT_KEY
from tune.trial.trainable import S2APTrainable

pytestmark = pytest.mark.ray

PRUNE_EPOCHS, FINETUNE_EPOCHS = 4, 3
EPOCHS = PRUNE_EPOCHS + FINETUNE_EPOCHS
KILL_AFTER = 2  # epochs reported before the worker is killed


def _results(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every result line Ray wrote for the study's one trial (complete lines only)."""
    out = []
    for path in experiment_dir.glob("trial_*/result.json"):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the line being written
    return out


def _kill_worker_after(proc: subprocess.Popen[bytes], study: Study, epochs: int) -> int:
    """SIGKILL the trial's worker (its run's ``s2ap.pid`` tag) as soon as the trial has logged
    ``epochs`` epochs to MLflow; return the PID. (MLflow is written during the epoch; Ray's
    result files reach the storage root only when Ray syncs them, seconds later.)"""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        # study.json is written once the MLflow store is set up (a client opening it earlier
        # would race the study's own schema migration).
        if study.study_json.is_file():
            client = MlflowClient(f"sqlite:///{study.storage_root / 'mlflow.db'}")
            ids = [e.experiment_id for e in client.search_experiments()]
            for run in client.search_runs(ids, "tags.`s2ap.role` = 'trial'") if ids else []:
                history = client.get_metric_history(run.info.run_id, "epoch")
                if max((m.step for m in history), default=0) >= epochs:
                    pid = int(run.data.tags["s2ap.pid"])
                    os.kill(pid, signal.SIGKILL)
                    return pid
        time.sleep(0.1)
    raise AssertionError(f"the trial never logged {epochs} epochs (exit {proc.poll()})")


def test_an_epoch_redone_after_a_restore_is_logged_once(tmp_path: Path) -> None:
    from tracking.runs import StudyTracker

    config = trial_config(tmp_path)  # prune 3 + finetune 2 epochs
    tracker = StudyTracker(None, "redo", study_config={}, storage_root=tmp_path / "store")
    tracker.start()
    config[CONTEXT_KEY]["tracking"] = tracker.trial_context()
    lost = S2APTrainable(config=dict(config))
    lost.train()
    lost.train()
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    lost.save_checkpoint(str(checkpoint))
    lost.train()  # epoch 3 is logged, then the worker dies before its checkpoint
    restarted = S2APTrainable(config=dict(config))
    restarted.load_checkpoint(str(checkpoint))
    while not restarted.train()["done"]:  # epochs 3 (again), 4, 5
        pass
    client = MlflowClient(tracker.tracking_uri)
    (run,) = client.search_runs([tracker.experiment_id], "tags.`s2ap.role` = 'trial'")
    for key in ("epoch", "val_robust_acc", "train_robust_loss"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5], (key, steps)
    assert run.info.status == "FINISHED"


def test_a_killed_worker_costs_at_most_one_epoch(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        {
            "study.num_samples": 1,
            "study.scheduler": {"kind": "none"},
            "study.test_eval": {"enabled": False},
            "pretrain.epochs": 0,
            "prune.epochs": PRUNE_EPOCHS,
            "finetune.epochs": FINETUNE_EPOCHS,
            # Epochs long enough (~0.5 s) that the kill lands while the trial still runs.
            "data.options.n_train": 2000,
        },
    )
    assert "max_failures" not in path.read_text()  # the default is what is tested
    study = load_study(path)
    temp = short_tmp()
    proc = subprocess.Popen(
        [S2AP, "tune", str(path), "--ray-temp-dir", temp, "--num-cpus", "2", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        killed = _kill_worker_after(proc, study, KILL_AFTER)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_leftovers([], temp, timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, output.decode()[-3000:]

    # Ray: the trial went on in a new worker from its last checkpoint, redoing <= 1 epoch.
    results = _results(study.experiment_dir)  # complete now: Ray synced them at the end
    iterations = [r["training_iteration"] for r in results]
    redone = len(iterations) - len(set(iterations))
    assert sorted(set(iterations)) == list(range(1, EPOCHS + 1)), iterations
    assert redone <= 1, f"{redone} epochs redone: {iterations}"
    assert results[-1]["pid"] != killed, "the last epochs did not run in a new worker"

    # MLflow: one run for the trial, every step exactly once, no gaps.
    client = MlflowClient(f"sqlite:///{study.storage_root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`s2ap.role` = 'trial'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert int(runs[0].data.tags["s2ap.pid"]) == results[-1]["pid"] != killed
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_robust_acc")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps

    # s2ap status: the retry is on record.
    status = run_cli("status", str(path), "--json", timeout=120)
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["trials"]
    assert row["retries"] == 1 and row["state"] == "TERMINATED" and row["completed"]
    shown = run_cli("status", str(path), timeout=120)
    assert f"retries (restarts from the last checkpoint): {row['trial_id']} 1" in shown.stdout
    print(
        f"\nfault figures: killed worker {killed} after epoch {KILL_AFTER}; result rows "
        f"{iterations}; epochs redone {redone}; MLflow val_robust_acc steps {sorted(steps)}; "
        f"retries shown {row['retries']}"
    )
