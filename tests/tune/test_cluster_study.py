"""A study on a real `ray start --head` cluster on 127.0.0.1: through --address, and as a Ray Job
submitted to its dashboard (JobSubmissionClient), waited for until SUCCEEDED."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.support.ray_cluster import LocalRayCluster
from tests.tune.conftest import run_cli, write_study

pytestmark = pytest.mark.ray

SMALL = {
    "study.num_samples": 2,
    "study.scheduler": {"kind": "none"},
    "study.test_eval": {"enabled": False},
    "pretrain.epochs": 1,  # the dense model is pretrained by a Ray task on the cluster
    "prune.epochs": 2,
    "finetune.epochs": 1,
}


def test_study_on_a_local_cluster_and_as_a_ray_job(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    with LocalRayCluster(num_cpus=2, env=env) as cluster:
        # 1. s2ap tune --address HOST:PORT joins the running cluster.
        path = write_study(tmp_path / "direct", SMALL)
        res = run_cli("tune", str(path), "--address", cluster.address, "-q", timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        summary = json.loads((tmp_path / "direct/studies/tiny/summary.json").read_text())
        assert summary["counts"].startswith("2 trials: 2 completed")
        assert "warning" not in res.stderr  # a cluster on this machine: local storage is fine

        # 2. s2ap submit: the same kind of study as a Ray Job (entrypoint s2ap tune --address auto).
        # (a grid over the three arms; every trial evaluates itself on the test set at its end)
        path = write_study(
            tmp_path / "job",
            {
                **SMALL,
                "study.name": "tiny-job",
                "study.num_samples": 3,
                "study.searcher": {"kind": "grid"},
                "study.test_eval": {"enabled": True, "every_trial": True},
                "pretrain.epochs": 0,
                "search_space": {
                    "prune.perturbation": {"type": "choice", "values": ["none", "score", "random"]}
                },
            },
        )
        res = run_cli("submit", str(path), "--address", cluster.dashboard_url, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "ray job logs --follow" in res.stdout
        job_id = next(
            line.split()[-1] for line in res.stdout.splitlines() if line.startswith("submitted")
        )
        client = JobSubmissionClient(cluster.dashboard_url)
        deadline = time.monotonic() + 300
        status = client.get_job_status(job_id)
        while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
            time.sleep(2)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        assert "best trial" in logs
        summary = json.loads((tmp_path / "job/studies/tiny-job/summary.json").read_text())
        assert summary["counts"].startswith("3 trials: 3 completed")
        arms = sorted(r["config"]["prune.perturbation"] for r in summary["trials"])
        assert arms == ["none", "random", "score"]
        assert summary["test"]["test_clean_acc"] >= 0.0
        client = MlflowClient(summary["tracking_uri"])
        exp = client.get_experiment_by_name("tiny-job")
        runs = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
        assert len(runs) == 3 and all("test_pgd_acc" in r.data.metrics for r in runs)
    assert not cluster.pids(), "the cluster left processes behind"
