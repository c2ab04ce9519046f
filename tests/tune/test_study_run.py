"""A quickstart-sized study end to end on a local Ray runtime: Optuna proposes, ASHA stops,
MLflow records, the best checkpoint loads; then the CLI reads it back (status, masks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.tune.conftest import S2AP, write_study
from tune.cli import main
from tune.driver.launch import LaunchOptions, run_study
from tune.study.file import load_study
from tune.trial.checkpoint import load_trial_checkpoint


@pytest.mark.ray
def test_tiny_study_end_to_end(
    tmp_path: Path,
    ray_local: object,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rho = {"type": "loguniform", "low": 0.01, "high": 0.5}
    steps = {"type": "int", "low": 1, "high": 2}
    arms = {"score": {"prune.rho": rho, "prune.ascent_steps": steps}, "random": {"prune.rho": rho}}
    path = write_study(
        tmp_path,
        {
            "study.num_samples": 6,
            # The arm is searched; ascent steps only where the arm has them (S2AP).
            "search_space": {"prune.perturbation": {"type": "choice", "branches": arms}},
            "evaluate.autoattack": True,
            "evaluate.autoattack_examples": 24,
            "evaluate.n_examples": 100,  # more than the 60 test examples there are
        },
    )
    study = load_study(path)
    outcome = run_study(study, LaunchOptions(verbose=0))
    assert outcome.exit_code == 0
    summary = outcome.summary
    # The printout gives the number of test examples evaluated, not the number asked for.
    printed = capsys.readouterr().out
    assert summary["test"]["test_examples"] == 60
    assert "test (60 examples)" in printed and "100 examples" not in printed
    rows = summary["trials"]

    # Every trial ran, none failed.
    assert len(rows) == 6
    assert all(r["state"] == "TERMINATED" for r in rows), rows
    # Optuna proposed distinct configurations inside the space.
    configs = [tuple(sorted(r["config"].items())) for r in rows]
    assert len(set(configs)) == 6
    assert all(study.space.contains(r["config"]) for r in rows)
    # ASHA stopped at least one trial before its last epoch (grace 1, factor 2, 4 epochs).
    stopped = [r for r in rows if not r["completed"]]
    assert stopped, "ASHA stopped no trial"
    assert all(r["epochs"] < study.epochs_per_trial for r in stopped)

    # The best (completed) trial's checkpoint loads into a model with the reported sparsity.
    best = summary["best"]
    assert best is not None and best["completed"]
    assert best["metrics"]["val_robust_acc"] == max(
        r["metrics"]["val_robust_acc"] for r in rows if r["completed"]
    )
    (pipeline,) = load_trial_checkpoint(best["checkpoint"])
    sparsity, _ = pipeline.masking.sparsity_report()
    assert sparsity == pytest.approx(best["metrics"]["sparsity"], abs=1e-6)
    assert sparsity == pytest.approx(0.8, abs=0.01)
    model = pipeline.selected_model().eval()
    x, _ = next(iter(pipeline.data.val.batches(8)))
    assert model(x).shape == (8, 4)
    # Test numbers of the selected model, beside the validation ones.
    test = summary["test"]
    assert {"test_clean_acc", "test_pgd_acc", "test_autoattack_acc"} <= set(test)
    assert Path(study.summary_json).is_file()

    # MLflow: one nested run per trial (found by its trial-id tag), the best has test metrics.
    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
    ids = [r.data.tags["s2ap.trial_id"] for r in runs]
    assert sorted(ids) == sorted(r["trial_id"] for r in rows)
    by_id = {r.data.tags["s2ap.trial_id"]: r for r in runs}
    best_run = by_id[best["trial_id"]]
    assert best_run.info.status == "FINISHED"
    assert "test_autoattack_acc" in best_run.data.metrics
    assert best_run.data.params["prune.rho"] == str(best["config"]["prune.rho"])
    for tag in ("s2ap.ray_version", "s2ap.device", "s2ap.study", "s2ap.phase"):
        assert tag in best_run.data.tags
    # The dense model was pretrained once for the study and every trial started from it.
    (dense_file,) = sorted(study.dense_dir.glob("*.pt"))
    assert dense_file.with_suffix(".json").is_file()
    assert all(r.data.params["dense.checkpoint"] == str(dense_file) for r in runs)
    history = client.get_metric_history(best_run.info.run_id, "val_robust_acc")
    assert sorted(m.step for m in history) == list(range(1, study.epochs_per_trial + 1))
    # ASHA's stopped trials end FINISHED, as Ray Tune's own MLflow callback ends them; their
    # outcome tag says how. Nothing was killed, so no run is KILLED.
    for r in rows:
        run = by_id[r["trial_id"]]
        outcome = "completed" if r["completed"] else "stopped_early"
        assert (run.info.status, run.data.tags["s2ap.outcome"]) == ("FINISHED", outcome)

    # The best trial's model is registered: models:/tiny@best, tagged with its trial.
    version = client.get_model_version_by_alias(study.name, "best")
    assert summary["model"]["uri"] == "models:/tiny@best" and summary["model"]["version"] == "1"
    assert version.run_id == best_run.info.run_id
    tags = version.tags
    assert tags["s2ap.trial_id"] == best["trial_id"]
    assert tags["s2ap.mask_sha256"] == best_run.data.tags["s2ap.masks.final.sha256"]
    # Numbers as tags, to 6 significant digits (the run holds the exact values).
    assert float(tags["val_robust_acc"]) == pytest.approx(best["metrics"]["val_robust_acc"], 1e-5)
    assert float(tags["test_autoattack_acc"]) == pytest.approx(test["test_autoattack_acc"], 1e-5)
    with monkeypatch.context() as env:  # MLflow's own way to the store
        env.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
        served = mlflow.pyfunc.load_model("models:/tiny@best").predict(x.numpy())
    with torch.no_grad():
        logits = model(x).numpy()
    assert served["logits"] == pytest.approx(logits, abs=1e-5)
    artifacts = {a.path for a in client.list_artifacts(best_run.info.run_id, "masks")}
    assert artifacts == {"masks/prune-end.s2mask", "masks/final.s2mask"}

    # Optuna's study is persisted: one finished Optuna trial per Tune trial.
    ostudy = optuna.load_study(study_name=study.name, storage=study.optuna_storage())
    assert len(ostudy.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ostudy.trials)

    # `s2ap status` reads the experiment folder without running anything.
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert best["trial_id"] in out and "prune.rho" in out and "(stopped)" in out
    assert main(["status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["best"]["trial_id"] == best["trial_id"]

    # `s2ap evaluate` re-evaluates a trial's checkpoint on the test set (default: the best).
    assert main(["evaluate", str(path), "--no-autoattack", "--n-examples", "16"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["trial_id"] == best["trial_id"] and evaluated["test_examples"] == 16
    assert main(["evaluate", str(path), "--trial", "nope"]) == 2
    assert "no such trial" in capsys.readouterr().err

    # Launching a complete study again shows its results and runs nothing (no Ray start).
    mtime = study.summary_json.stat().st_mtime_ns
    assert main(["tune", str(path)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert study.summary_json.stat().st_mtime_ns == mtime
    # ... unless the study file changed: then it must be a new study (or --overwrite).
    assert main(["tune", str(path), "--set", "prune.lr=0.05"]) == 2
    assert "already exists" in capsys.readouterr().err

    # masks pull / apply / diff.
    pulled = tmp_path / "pulled"
    assert main(["masks", "pull", str(path), "--out", str(pulled), "--with-weights"]) == 0
    mask = pulled / "final.s2mask"
    assert mask.is_file() and list(pulled.glob("final.safetensors"))
    assert main(["masks", "pull", str(path), "--out", str(pulled)]) == 2  # exists, no --force
    by_model = tmp_path / "pulled-by-model"
    uri = summary["tracking_uri"]
    args = ["masks", "pull", "models:/tiny@best", "--tracking-uri", uri, "--out", str(by_model)]
    assert main(args) == 0
    assert (by_model / "final.s2mask").read_bytes() == (pulled / "final.s2mask").read_bytes()
    dense = tmp_path / "dense.pt"
    torch.save(pipeline.masking.to_dense().state_dict(), dense)
    out_pt = tmp_path / "pruned.pt"
    assert (
        main(["masks", "apply", str(mask), "--checkpoint", str(dense), "--out", str(out_pt)]) == 0
    )
    pruned = torch.load(out_pt, weights_only=True)
    assert (
        main(["masks", "apply", str(mask), "--checkpoint", str(dense), "--out", str(out_pt)]) == 2
    )
    from tracking.artifacts import load_masks

    masks, _ = load_masks(mask)
    for layer, m in masks.items():
        assert torch.all(pruned[f"{layer}.weight"][~m] == 0)
    capsys.readouterr()
    ckpt_mask = Path(best["checkpoint"]) / "mask.s2mask"
    assert main(["masks", "diff", str(mask), str(ckpt_mask), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert 0.0 <= diff["overall"] <= 1.0 and set(diff["per_layer"]) == set(masks)

    # `s2ap ui` serves the study's store on 127.0.0.1 until interrupted.
    ui = subprocess.Popen(
        [S2AP, "ui", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line = ui.stdout.readline()
        assert "MLflow UI for study tiny: http://127.0.0.1:" in line, line
        url = line.split(": ", 1)[1].split()[0]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
            assert resp.status == 200
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=30) == 0
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
        except OSError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the MLflow server outlived `s2ap ui`")
