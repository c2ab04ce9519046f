"""GPU requests: fractional GPUs are shared, a trial without usable CUDA fails loudly, and a GPU
request no node can satisfy fails before any trial starts."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from tests.tune.conftest import run_cli, short_tmp, write_study
from tune.driver.launch import LaunchOptions, run_study
from tune.study.file import load_study

#: Trials that take a few seconds each, so that concurrent ones overlap.
GPU_STUDY = {
    "pretrain.epochs": 0,
    "prune.epochs": 6,
    "prune.warmup_epochs": 1,
    "finetune.epochs": 0,
    "study.num_samples": 8,
    "study.max_concurrent_trials": 8,
    "study.scheduler": {"kind": "none"},
    "study.resources": {"cpu": 1, "gpu": 0.5},
    "study.test_eval": {"enabled": False},
}


@pytest.fixture
def ray_with_gpus() -> Iterator[Any]:
    """A local runtime announcing 2 logical GPUs (torch has no CUDA here) and 4 logical CPUs."""
    import ray

    temp = short_tmp()
    ray.init(
        address="local",
        _temp_dir=temp,
        num_cpus=4,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


@pytest.mark.ray
def test_fractional_gpus_share_and_fail_loudly(tmp_path: Path, ray_with_gpus: Any) -> None:
    study = load_study(
        write_study(tmp_path / "ok", {**GPU_STUDY, "study.allow_cpu_fallback": True})
    )
    outcome = run_study(study, LaunchOptions(verbose=0))
    assert outcome.exit_code == 0
    trials = tune.ExperimentAnalysis(str(study.experiment_dir)).trials
    assert len(trials) == 8 and all(t.status == "TERMINATED" for t in trials)
    last = [t.last_result for t in trials]
    # Each trial saw the GPU Ray assigned to it (Ray sets CUDA_VISIBLE_DEVICES per trial).
    for r in last:
        assert r["gpu_ids"] in ("0", "1"), r["gpu_ids"]
        assert r["cuda_visible_devices"] == r["gpu_ids"]
        assert r["device"] == "cpu"  # torch sees no CUDA here: allow_cpu_fallback
    assert {r["gpu_ids"] for r in last} == {"0", "1"}
    # Two trials per GPU at 0.5 each: more than 2 at once (whole GPUs), never more than 4.
    overlap = _max_overlap([(r["trial_start_time"], r["result_time"]) for r in last])
    assert 2 < overlap <= 4, overlap

    # The same study without the fallback: every trial fails with the reason, exit code 1.
    study = load_study(write_study(tmp_path / "strict", {**GPU_STUDY, "study.num_samples": 2}))
    err = io.StringIO()
    outcome = run_study(study, LaunchOptions(verbose=0), out=io.StringIO(), err=err)
    assert outcome.exit_code == 1
    assert "failed" in err.getvalue()
    trials = tune.ExperimentAnalysis(str(study.experiment_dir)).trials
    assert all(t.status == "ERROR" for t in trials)
    text = Path(trials[0].error_file).read_text()
    assert "torch" in text and "sees no CUDA device" in text and "allow_cpu_fallback" in text
    # ... and MLflow shows the failed runs with the reason.
    client = MlflowClient(outcome.summary["tracking_uri"])
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
    assert len(runs) == 2
    assert all(r.info.status == "FAILED" for r in runs)
    assert all("sees no CUDA device" in r.data.tags["s2ap.error"] for r in runs)


@pytest.mark.ray
def test_gpu_request_on_a_cluster_without_gpus_fails_fast(tmp_path: Path) -> None:
    path = write_study(tmp_path, {"study.resources": {"cpu": 1, "gpu": 1}})
    start = time.monotonic()
    proc = run_cli("tune", str(path), "--num-gpus", "0", "--num-cpus", "2", timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no GPU" in proc.stderr and "study.resources.gpu: 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 120
    assert not (tmp_path / "studies").exists()
