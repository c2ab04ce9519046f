"""The scale benchmark at CI size: 64 trials of the tiny configuration on a two-node loopback
cluster (``benchmarks/scale.py``, the real service, the real Trainable, Optuna and MLflow).

Every trial must have exactly one finished MLflow run holding each of its epochs once, every
searched trial one Optuna trial, and ``s2ap status`` and ``s2ap masks pull`` must name the same
best trial. The benchmark's timings are printed (``pytest -s``), never asserted: the machine is
shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tune.conftest import short_tmp

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

ROOT = Path(__file__).resolve().parents[2]


def test_64_trials_on_two_nodes_lose_nothing_and_agree() -> None:
    work = Path(short_tmp("scale"))
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scale.py"),
            "--rows",
            "64x4",
            "--stores",
            "sqlite",
            "--nodes",
            "2",
            "--node-cpus",
            "2",
            "--commands",
            "status",
            "pull",
            "--work",
            str(work),
            "--timeout",
            "900",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
    )
    print(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = json.loads((work / "records.json").read_text())["rows"]
    assert row["trials"] == 64 and row["concurrency"] == 4
    assert row["lost_metrics"] == 0 and row["dup_metrics"] == 0
    assert row["extra_runs"] == 0 and row["unfinished_runs"] == 0
    assert row["runs"] == 64, "one MLflow run per trial"
    # Optuna holds one trial per searched trial, plus the draws skipped as repeats (each told
    # its twin's value): never fewer than the searched trials.
    assert row["optuna_trials"] >= row["searched_trials"] == 63  # 1 HYDRA baseline
    nodes = {n for n in row.get("trial_nodes", []) if n}
    assert len(nodes) == 2, f"trials ran on {nodes}"
    assert row["status_best"] and row["status_best"] == row["pull_best"]
