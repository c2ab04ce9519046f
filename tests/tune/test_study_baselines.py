"""A real study (local Ray, Optuna, ASHA, MLflow) with a branching space and a HYDRA baseline:
the baseline runs first and once, is never stopped early, every trial answers a distinct
question, and a HYDRA run carries no rho."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.tune.conftest import run_cli, short_tmp, write_study
from tune.study.baselines import EffectiveKey
from tune.study.file import load_study

pytestmark = pytest.mark.ray

#: Four distinct effective configurations (S2AP x 2 ascent steps, random x 2 radii).
SPACE = {
    "prune.perturbation": {
        "type": "choice",
        "branches": {
            "score": {"prune.ascent_steps": {"type": "int", "low": 1, "high": 2}},
            "random": {"prune.rho": {"type": "choice", "values": [0.05, 0.2]}},
        },
    }
}


def test_branches_baseline_and_no_duplicate_work(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        {
            "search_space": SPACE,
            # more trials than distinct configurations: the searcher must stop at 1 + 4
            "study.num_samples": 8,
            "study.baselines": {"hydra": {"prune.perturbation": "none"}},
            "study.searcher": {"kind": "random", "seed": 1},
            # grace 1, halving: a baseline that loses a rung would be stopped if not exempt
            "study.scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 4},
            "study.test_eval": {"enabled": False},
            "prune.epochs": 3,
            "finetune.epochs": 1,
        },
    )
    study = load_study(path)
    temp = short_tmp()
    try:
        res = run_cli("tune", str(path), "--ray-temp-dir", temp, "--num-cpus", "2", timeout=600)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    summary = json.loads(study.summary_json.read_text())
    rows = summary["trials"]
    baselines = [r for r in rows if r["baseline"]]
    assert [r["config"] for r in baselines] == [{"prune.perturbation": "none"}]
    assert baselines[0]["completed"], "ASHA stopped the baseline"
    searched = [r for r in rows if not r["baseline"]]
    key = EffectiveKey(study.base_dict())
    keys = [key(r["config"]) for r in rows]
    assert len(set(keys)) == len(rows) <= 5, "a configuration was trained twice"
    for r in searched:
        assert study.space.contains(r["config"]), r["config"]
        if r["config"]["prune.perturbation"] == "random":
            assert "prune.ascent_steps" not in r["config"]
    assert summary["search"]["distinct_configs"] == len(rows)
    skipped = study.duplicates_log.read_text().splitlines() if study.duplicates_log.exists() else []
    assert summary["search"]["duplicate_draws_skipped"] == len(skipped) > 0

    # The comparison: HYDRA's value, the best S2AP trial, the margin between them.
    (comparison,) = summary["baselines"]
    assert comparison["baseline"] == "hydra"
    assert comparison["value"] == baselines[0]["metrics"]["val_robust_acc"]
    s2ap = [r for r in searched if r["completed"] and r["config"]["prune.perturbation"] == "score"]
    if s2ap:
        # the best on the objective; a tie goes to the smaller trial id
        best = min(s2ap, key=lambda r: (-r["metrics"]["val_robust_acc"], r["trial_id"]))
        assert comparison["best_trial"] == best["trial_id"]
        assert comparison["margin"] == pytest.approx(
            best["metrics"]["val_robust_acc"] - comparison["value"]
        )
        assert "hydra:" in res.stdout and "margin" in res.stdout

    status = run_cli("status", str(path), timeout=120)
    assert status.returncode == 0 and "hydra:" in status.stdout, status.stderr

    # MLflow: the HYDRA run shows what it used, and no rho / ascent steps.
    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
    by_id = {r.data.tags["s2ap.trial_id"]: r for r in runs}
    hydra = by_id[baselines[0]["trial_id"]]
    assert hydra.data.tags["s2ap.baseline"] == "hydra"
    assert hydra.data.params["prune.perturbation"] == "none"
    assert "prune.rho" not in hydra.data.params
    assert "prune.ascent_steps" not in hydra.data.params
    for r in searched:
        params = by_id[r["trial_id"]].data.params
        if r["config"]["prune.perturbation"] == "random":
            assert "prune.ascent_steps" not in params and "prune.rho" in params
    parent = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'study'")[0]
    assert "baseline/hydra/value" in parent.data.metrics
