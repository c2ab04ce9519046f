"""Kill the driver of a running study (SIGKILL of its process group), then `s2ap tune --resume`:
finished trials are kept as they were, the rest finish, the baseline is not rerun, and neither
Optuna nor MLflow has duplicated trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from tests.support.processes import descendants, kill_leftovers
from tests.tune.conftest import S2AP, run_cli, short_tmp, write_study
from tune.study.file import load_study

pytestmark = pytest.mark.ray


#: Epochs of every trial of the study below (prune 3 + finetune 2).
EPOCHS = 5


def _finished_trials(experiment_dir: Path) -> dict[str, bytes]:
    """Trial id -> its last checkpoint's trial.json, for trials that checkpointed their last
    epoch. Checkpoints reach the storage root when they are taken (result.json files only when
    Ray syncs), so they show a finished trial at once."""
    out = {}
    for info in experiment_dir.glob(f"trial_*/checkpoint_{EPOCHS - 1:06d}/trial.json"):
        try:
            data = info.read_bytes()
            json.loads(data)
        except (OSError, json.JSONDecodeError):
            continue  # being written
        out[info.parent.parent.name.removeprefix("trial_")] = data
    return out


def _baseline_trials(finished: dict[str, bytes]) -> list[str]:
    """The finished trials that ran the HYDRA baseline (their run config says so)."""
    return [
        trial_id
        for trial_id, data in finished.items()
        if json.loads(data)["run_config"]["prune"]["perturbation"] == "none"
    ]


def test_kill_and_resume(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        {
            "study.num_samples": 5,  # the HYDRA baseline + 4 searched
            "study.baselines": {"hydra": {"prune.perturbation": "none"}},
            "study.scheduler": {"kind": "none"},
            # Ray deletes a trial's older checkpoint when it registers a new one and names the
            # new one in the experiment snapshot a moment later; a SIGKILL between the two
            # leaves a snapshot naming a deleted checkpoint (a Ray race, widened by a loaded
            # machine). Keeping every checkpoint takes the race out of this test.
            "study.checkpoint": {"frequency": 1, "num_to_keep": 10},
            "study.test_eval": {"enabled": False},
            "pretrain.epochs": 0,
            "prune.epochs": 3,
            "finetune.epochs": 2,
        },
    )
    study = load_study(path)
    temp1 = short_tmp()
    proc = subprocess.Popen(
        [S2AP, "tune", str(path), "--ray-temp-dir", temp1, "--num-cpus", "2", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill below reaches only it
    )
    started: list = []
    try:
        deadline = time.monotonic() + 240
        finished: dict[str, bytes] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            finished = _finished_trials(study.experiment_dir)
            if len(finished) >= 2 and _baseline_trials(finished):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the study ended before it could be interrupted"
        assert len(finished) >= 2, "no trial finished in time"
        started = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_leftovers(started, temp1)
        shutil.rmtree(temp1, ignore_errors=True)
    # Re-read after the kill: a trial may have finished between the poll and the kill.
    finished = _finished_trials(study.experiment_dir)
    assert len(finished) < 5, "every trial finished before the kill"
    baseline_before = _baseline_trials(finished)
    assert len(baseline_before) == 1, "the baseline had not finished before the kill"

    # An interrupted study is not started again by mistake: it needs --resume.
    res = run_cli("tune", str(path), timeout=120)
    assert res.returncode == 2 and "--resume" in res.stderr, res.stderr

    temp2 = short_tmp()
    try:
        res = run_cli(
            "tune",
            "--resume",
            str(path),
            "--ray-temp-dir",
            temp2,
            "--num-cpus",
            "2",
            "-q",
            timeout=420,
        )
    finally:
        kill_leftovers([], temp2, timeout=10)
        shutil.rmtree(temp2, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming study" in res.stdout

    trials = tune.ExperimentAnalysis(str(study.experiment_dir)).trials
    ids = [t.trial_id for t in trials]
    assert len(ids) == 5 and len(set(ids)) == 5
    # The baseline ran once, before the kill, and was not run again.
    assert [t.trial_id for t in trials if t.config.get("baseline")] == baseline_before
    assert all(t.status == "TERMINATED" for t in trials)
    assert all(t.last_result["training_iteration"] == 5 for t in trials)
    # Finished trials were kept, not rerun: same ids, last checkpoints unchanged.
    after = _finished_trials(study.experiment_dir)
    for trial_id, data in finished.items():
        assert after[trial_id] == data, f"trial {trial_id} was rerun"

    # MLflow: exactly one run per trial id (found again by its tag after the restore).
    summary = json.loads(study.summary_json.read_text())
    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
    run_ids = [r.data.tags["s2ap.trial_id"] for r in runs]
    assert len(run_ids) == len(set(run_ids)), "a trial got a second run after the restore"
    kept = [r for r in runs if r.data.tags.get("s2ap.outcome") != "orphaned"]
    assert sorted(r.data.tags["s2ap.trial_id"] for r in kept) == sorted(ids)
    assert all(r.info.status == "FINISHED" for r in kept)
    # A trial the killed driver started after its last snapshot is unknown to the restored
    # experiment (Tune samples a replacement): its run is closed as an orphan, not a result.
    orphans = [r for r in runs if r.data.tags.get("s2ap.outcome") == "orphaned"]
    assert all(r.info.status == "KILLED" for r in orphans)
    # Optuna: one finished trial per Tune trial, none left running. The one exception is an
    # orphan that *finished* in the killed driver after its last snapshot: a real measurement,
    # so Optuna keeps it; it is the only kind of extra finished trial allowed.
    ostudy = optuna.load_study(study_name=study.name, storage=study.optuna_storage())
    states = [t.state for t in ostudy.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    tune_configs = Counter(
        tuple(sorted((k, v) for k, v in t.config.items() if k in study.space.params))
        for t in trials
        if not t.config.get("baseline")  # baselines never reach Optuna
    )
    optuna_configs = Counter(tuple(sorted(t.params.items())) for t in done)
    assert not tune_configs - optuna_configs, "a Tune trial has no finished Optuna trial"
    extra = len(done) - 4
    finished_orphans = [r for r in orphans if r.data.tags["s2ap.trial_id"] in finished]
    assert 0 <= extra <= len(finished_orphans), (extra, [t.params for t in done])

    parents = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'study'")
    assert len(parents) == 1
