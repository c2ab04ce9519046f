"""Kill the driver of a running study (SIGKILL of its process group), then `s2ap tune --resume`:
finished trials are kept as they were, the rest finish, and neither Optuna nor MLflow has
duplicated trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from tests.tune.conftest import S2AP, run_cli, short_tmp, write_study
from tune.study import load_study

pytestmark = pytest.mark.ray


def _finished_trials(experiment_dir: Path) -> dict[str, bytes]:
    """Trial id -> result.json bytes, for trials whose last result says done."""
    out = {}
    for result in experiment_dir.glob("trial_*/result.json"):
        data = result.read_bytes()
        lines = [ln for ln in data.splitlines() if ln.strip()]
        if lines:
            try:
                last = json.loads(lines[-1])
            except json.JSONDecodeError:
                continue  # being written
            if last.get("done"):
                out[result.parent.name.removeprefix("trial_")] = data
    return out


def _kill_session_leftovers(temp_dir: str, timeout: float = 30.0) -> None:
    """Wait for the Ray processes of the killed driver's session to exit; SIGKILL stragglers.

    Only processes whose command line names this test's own Ray temp dir are touched.
    """
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if temp_dir in " ".join(p.info["cmdline"] or []):
                    mine.append(p)
            except (psutil.Error, TypeError):
                continue
        if not mine:
            return
        if time.monotonic() > deadline:
            for p in mine:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            return
        time.sleep(0.5)


def test_kill_and_resume(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        {
            "study.num_samples": 4,
            "study.scheduler": {"kind": "none"},
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
    try:
        deadline = time.monotonic() + 240
        finished: dict[str, bytes] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            finished = _finished_trials(study.experiment_dir)
            if len(finished) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the study ended before it could be interrupted"
        assert len(finished) >= 2, "no trial finished in time"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        _kill_session_leftovers(temp1)
        shutil.rmtree(temp1, ignore_errors=True)
    # Re-read after the kill: a trial may have finished between the poll and the kill.
    finished = _finished_trials(study.experiment_dir)
    assert len(finished) < 4, "every trial finished before the kill"

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
        _kill_session_leftovers(temp2, timeout=10)
        shutil.rmtree(temp2, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming study" in res.stdout

    trials = tune.ExperimentAnalysis(str(study.experiment_dir)).trials
    ids = [t.trial_id for t in trials]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert all(t.status == "TERMINATED" for t in trials)
    assert all(t.last_result["training_iteration"] == 5 for t in trials)
    # Finished trials were kept, not rerun: same ids, result rows unchanged.
    after = _finished_trials(study.experiment_dir)
    for trial_id, data in finished.items():
        assert after[trial_id] == data, f"trial {trial_id} was rerun"

    # Optuna: one finished trial per Tune trial, none left running, no duplicates.
    ostudy = optuna.load_study(study_name=study.name, storage=study.optuna_url)
    states = [t.state for t in ostudy.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    tune_configs = sorted(
        tuple(sorted((k, v) for k, v in t.config.items() if k in study.space.params))
        for t in trials
    )
    optuna_configs = sorted(tuple(sorted(t.params.items())) for t in done)
    assert tune_configs == optuna_configs

    # MLflow: exactly one run per trial id (found again by its tag after the restore).
    summary = json.loads(study.summary_json.read_text())
    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
    run_ids = [r.data.tags["s2ap.trial_id"] for r in runs]
    assert sorted(run_ids) == sorted(ids)
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'study'")
    assert len(parents) == 1
