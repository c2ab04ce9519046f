"""Overhead of the study service: one trial through Ray Tune vs the same run with ``s2ap run``.

Both commands start from the same dense checkpoint and run the same prune + finetune epochs
with the same config; the study has one trial (a one-point grid), no scheduler, and a test
evaluation without AutoAttack, like the ``s2ap run`` side. Whole-command wall time, alternating
A and B, so machine noise hits both:

    python benchmarks/service_overhead.py [--repeats 2] [--config configs/run-digits.yaml]

Prints each wall time and the median ratio tune/run (process start, Ray start-up, MLflow
logging and checkpointing included: what a user waits for).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

S2AP = str(Path(sys.executable).with_name("s2ap"))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/run-digits.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s2ap-overhead-"))
    base = yaml.safe_load(Path(args.config).read_text())

    # One shared dense model, so neither side pretrains.
    dense_run = work / "dense"
    subprocess.run(
        [S2AP, "run", args.config, "--out", str(dense_run), "--quiet",
         "--set", "prune.epochs=0", "--set", "finetune.epochs=0",
         "--set", "evaluate.autoattack=false"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base["dense"] = {"checkpoint": str(dense_run / "model.safetensors")}
    base["evaluate"] = {**base.get("evaluate", {}), "autoattack": False}
    run_cfg = work / "run.yaml"
    run_cfg.write_text(yaml.safe_dump(base))
    study = {
        **base,
        "study": {
            "name": "overhead",
            "storage_root": str(work / "studies"),
            "num_samples": 1,
            "searcher": {"kind": "grid"},
            "scheduler": {"kind": "none"},
            "resources": {"cpu": 2, "gpu": 0},
        },
        "search_space": {"prune.rho": {"type": "choice", "values": [base["prune"]["rho"]]}},
    }
    study_cfg = work / "study.yaml"
    study_cfg.write_text(yaml.safe_dump(study))

    runs, tunes = [], []
    for i in range(args.repeats):
        runs.append(timed([S2AP, "run", str(run_cfg), "--out", str(work / f"run{i}"), "--quiet"]))
        tunes.append(
            timed([S2AP, "tune", str(study_cfg), "--set", f"study.name=overhead{i}", "-q"])
        )
        print(f"repeat {i}: s2ap run {runs[-1]:.1f} s, s2ap tune (1 trial) {tunes[-1]:.1f} s")
    ratios = [t / r for t, r in zip(tunes, runs)]
    run_s, tune_s = statistics.median(runs), statistics.median(tunes)
    print(
        f"median: s2ap run {run_s:.1f} s, s2ap tune {tune_s:.1f} s, "
        f"ratio tune/run {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
