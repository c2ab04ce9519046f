"""Overhead of the study service: one trial through Ray Tune vs the same run with ``s2ap run``.

Both commands start from the same dense checkpoint and run the same prune + finetune epochs
with the same config; the study has one trial (a one-point grid), no scheduler, and a test
evaluation without AutoAttack, like the ``s2ap run`` side. The two commands alternate (run,
tune, run, tune, ...), so machine noise hits both:

    python benchmarks/service_overhead.py [--repeats 3] [--config configs/run-digits.yaml]
        [--dense model.safetensors] [--pythonpath DIR] [--work DIR] [--records FILE]

Per repeat it measures from outside (the same for any version of the code, so an old tree
runs through ``--pythonpath``):

- ``s2ap run``: when each line of ``metrics.jsonl`` appears (one per epoch), when
  ``summary.json`` appears, when the process exits;
- ``s2ap tune``: the study's own records: the MLflow study and trial runs (start and end
  times, per-epoch metric timestamps, read from ``mlflow.db`` with :mod:`sqlite3`), Ray Tune's
  ``result.json`` of the trial (each epoch's ``result_time``), ``summary.json``; and, when the
  service writes one, the ``timings`` section of ``summary.json`` (its own breakdown).

It prints (a) the per-epoch ratio: median epoch wall time (one epoch's end to the next's,
checkpoint included) under ``s2ap tune`` over the same under ``s2ap run``; (b) the fixed
seconds: each command's wall time less the span of its epochs (first epoch's start to last
epoch's end; ``s2ap run``'s first start is its first end less a median epoch), and what the
service adds over ``s2ap run``; and where the difference goes. Figures are medians over the
repeats. The config is the one given: it is never lengthened to hide fixed cost.
``--records FILE`` prints the tables again from a ``records.json`` an earlier call wrote.

``--peer STUDY.yaml`` instead times ``s2ap tune STUDY.yaml`` against the plain-Optuna loop a
user could write (``benchmarks/peer_optuna.py``: same space, sampler, rungs, dense model and
test evaluation) back to back, alternating ``--repeats`` pairs, and prints both walls, the epochs
each trained, the slot-seconds per trained epoch, the best value each found, the ratio of the
walls per pair and their median, and the service's per-trial set-up (``summary.json``):

    python benchmarks/service_overhead.py --peer configs/quickstart.yaml --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

#: ``s2ap`` as ``python -m tune.cli``: the installed script would import this tree's entry
#: point even when ``--pythonpath`` puts another version first.
S2AP = (sys.executable, "-m", "tune.cli")
#: Steps of a study, in launch order, measured from its own records (see ``tune_breakdown``).
TUNE_STEPS = (
    ("start_to_study_run", "start -> MLflow study run open (imports, Ray start, MLflow store)"),
    ("study_run_to_trial_setup", "study run -> trial set-up starts (dense, Tuner, actor start)"),
    ("trial_setup", "trial set-up (imports left, dataset, dense, pipelines, MLflow run)"),
    ("epochs", "epochs (first step start -> last result)"),
    ("end_of_trial_to_test", "last result -> test numbers logged (trial end, fit end, eval)"),
    ("test_to_study_end", "test numbers -> study run closed (summary.json, metrics, plots)"),
    ("study_end_to_exit", "study run closed -> exit (Ray shutdown)"),
)
RUN_STEPS = (
    ("start_to_first_epoch", "start -> first epoch's start (imports, dataset, dense)"),
    ("epochs", "epochs"),
    ("last_epoch_to_summary", "last epoch -> summary.json (masks, model, test evaluation)"),
    ("summary_to_exit", "summary.json -> exit"),
)


def _gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def median_epoch(ends: Sequence[float]) -> float:
    """Median time from one epoch's end to the next (the first epoch, which also warms up,
    has no start here and is left out)."""
    gaps = _gaps(ends)
    if not gaps:
        raise ValueError("need at least two epochs to time one")
    return statistics.median(gaps)


# --- s2ap run, from outside ----------------------------------------------------------------------
def run_and_watch(cmd: list[str], out_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``s2ap run`` and note when each epoch's metrics line and ``summary.json`` appear."""
    metrics, summary = out_dir / "metrics.jsonl", out_dir / "summary.json"
    arrivals: list[float] = []
    summary_at = None
    start = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=out_dir.parent
    )
    while True:
        done = proc.poll() is not None
        now = time.time()
        if metrics.is_file():
            lines = sum(1 for ln in metrics.read_text().splitlines() if ln.strip())
            arrivals += [now] * (lines - len(arrivals))
        if summary_at is None and summary.is_file():
            summary_at = now
        if done:
            break
        time.sleep(0.05)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {"start": start, "end": end, "epoch_ends": arrivals, "summary_at": summary_at or end}


def run_breakdown(raw: dict[str, Any]) -> dict[str, float]:
    """Seconds per step of ``s2ap run`` (``RUN_STEPS``) from :func:`run_and_watch`'s record."""
    ends, epoch = raw["epoch_ends"], median_epoch(raw["epoch_ends"])
    first_start = ends[0] - epoch
    return {
        "start_to_first_epoch": first_start - raw["start"],
        "epochs": ends[-1] - first_start,
        "last_epoch_to_summary": raw["summary_at"] - ends[-1],
        "summary_to_exit": raw["end"] - raw["summary_at"],
    }


# --- s2ap tune, from the study's records ---------------------------------------------------------
def _runs(db: Path, experiment: str) -> dict[str, dict[str, Any]]:
    """The study's MLflow runs by role (``study``, ``trial``): start, end, metric timestamps."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.start_time, r.end_time, t.value FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 's2ap.role' WHERE e.name = ?",
            (experiment,),
        ).fetchall()
        out = {}
        for run_id, start, end, role in rows:
            metrics = con.execute(
                "SELECT key, step, timestamp FROM metrics WHERE run_uuid = ?", (run_id,)
            ).fetchall()
            out[role] = {
                "start": start / 1000,
                "end": (end or start) / 1000,
                "metrics": [(k, s, ts / 1000) for k, s, ts in metrics],
            }
        return out
    finally:
        con.close()


def _trial_results(experiment_dir: Path) -> list[dict[str, Any]]:
    (result_file,) = experiment_dir.glob("trial_*/result.json")
    return [json.loads(ln) for ln in result_file.read_text().splitlines() if ln.strip()]


def read_study_record(storage_root: Path, name: str, start: float, end: float) -> dict[str, Any]:
    """What a finished one-trial study recorded about its own timing (see the docstring)."""
    experiment_dir = storage_root / name
    summary_file = experiment_dir / "summary.json"
    runs = _runs(storage_root / "mlflow.db", name)
    results = _trial_results(experiment_dir)
    test_ts = [ts for k, _, ts in runs["trial"]["metrics"] if k.startswith("test_")]
    return {
        "start": start,
        "end": end,
        "study_run": (runs["study"]["start"], runs["study"]["end"]),
        "trial_setup_start": results[0]["trial_start_time"],
        "first_step_start": results[0]["result_time"] - results[0]["time_this_iter_s"],
        "epoch_ends": [r["result_time"] for r in results],
        "step_s": [r["time_this_iter_s"] for r in results],
        "train_s": [r["epoch_time_s"] for r in results],
        "test_logged": max(test_ts) if test_ts else None,
        "timings": json.loads(summary_file.read_text()).get("timings"),
    }


def tune_breakdown(raw: dict[str, Any]) -> dict[str, float]:
    """Seconds per step of ``s2ap tune`` (``TUNE_STEPS``) from :func:`read_study_record`."""
    study_start, study_end = raw["study_run"]
    last = raw["epoch_ends"][-1]
    test = raw["test_logged"] or last
    return {
        "start_to_study_run": study_start - raw["start"],
        "study_run_to_trial_setup": raw["trial_setup_start"] - study_start,
        "trial_setup": raw["first_step_start"] - raw["trial_setup_start"],
        "epochs": last - raw["first_step_start"],
        "end_of_trial_to_test": test - last,
        # Not summary.json's time: the service writes it again at the very end (its timings).
        "test_to_study_end": study_end - test,
        "study_end_to_exit": raw["end"] - study_end,
    }


def epoch_split(raw: dict[str, Any]) -> dict[str, float]:
    """Median split of a study's epoch: training (the pipeline's own ``epoch_time_s``),
    the rest of ``step()`` (validation, MLflow), and between steps (checkpoint, Ray)."""
    gaps = _gaps(raw["epoch_ends"])
    steps, train = raw["step_s"][1:], raw["train_s"][1:]
    return {
        "train": statistics.median(train),
        "validate_and_log": statistics.median(s - t for s, t in zip(steps, train)),
        "checkpoint_and_ray": statistics.median(g - s for g, s in zip(gaps, steps)),
    }


# --- the comparison ------------------------------------------------------------------------------
def make_configs(work: Path, config: Path, dense: Path) -> tuple[Path, Path]:
    """The ``s2ap run`` config and the one-trial study file, both from ``config``."""
    base = yaml.safe_load(config.read_text())
    base["dense"] = {"checkpoint": str(dense.absolute())}
    base["evaluate"] = {**base.get("evaluate", {}), "autoattack": False}
    run_cfg = work / "run.yaml"
    run_cfg.write_text(yaml.safe_dump(base))
    study = {
        **base,
        "study": {
            "name": "overhead",
            "storage_root": str(work / "studies"),  # replaced per repeat
            "num_samples": 1,
            "searcher": {"kind": "grid"},
            "scheduler": {"kind": "none"},
            "resources": {"cpu": 2, "gpu": 0},
        },
        "search_space": {"prune.rho": {"type": "choice", "values": [base["prune"]["rho"]]}},
    }
    study_cfg = work / "study.yaml"
    study_cfg.write_text(yaml.safe_dump(study))
    return run_cfg, study_cfg


def _dense_model(work: Path, config: Path, env: dict[str, str]) -> Path:
    """One shared dense model, so neither side pretrains."""
    dense_run = work / "dense"
    subprocess.run(
        [*S2AP, "run", str(config), "--out", str(dense_run), "--quiet",
         "--set", "prune.epochs=0", "--set", "finetune.epochs=0",
         "--set", "evaluate.autoattack=false"],
        check=True, stdout=subprocess.DEVNULL, env=env, cwd=work,
    )  # fmt: skip
    return dense_run / "model.safetensors"


def one_repeat(
    i: int, work: Path, run_cfg: Path, study_cfg: Path, env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``s2ap run`` then ``s2ap tune`` once each; their raw records."""
    out = work / f"run{i}"
    run = run_and_watch([*S2AP, "run", str(run_cfg), "--out", str(out), "--quiet"], out, env)
    # A new storage root each time: every study pays what a user's first one does.
    name, root = f"overhead{i}", work / f"studies{i}"
    start = time.time()
    subprocess.run(
        [*S2AP, "tune", str(study_cfg), "--set", f"study.name={name}", "--storage-root",
         str(root), "-q"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=work,
    )  # fmt: skip
    tune = read_study_record(root, name, start, time.time())
    return run, tune


def _row(label: str, values: Sequence[float], width: int = 64) -> str:
    shown = "  ".join(f"{v:7.2f}" for v in values)
    return f"  {label:<{width}} {shown}   median {statistics.median(values):7.2f}"


def report(runs: list[dict[str, Any]], tunes: list[dict[str, Any]]) -> list[str]:
    """The printed tables (per repeat, then the median) from the raw records."""
    run_steps = [run_breakdown(r) for r in runs]
    tune_steps = [tune_breakdown(t) for t in tunes]
    splits = [epoch_split(t) for t in tunes]
    run_epoch = [median_epoch(r["epoch_ends"]) for r in runs]
    tune_epoch = [median_epoch(t["epoch_ends"]) for t in tunes]
    run_wall = [r["end"] - r["start"] for r in runs]
    tune_wall = [t["end"] - t["start"] for t in tunes]
    run_fixed = [w - b["epochs"] for w, b in zip(run_wall, run_steps)]
    tune_fixed = [w - b["epochs"] for w, b in zip(tune_wall, tune_steps)]
    lines = ["whole commands (s), one column per repeat:"]
    lines.append(_row("s2ap run wall", run_wall))
    lines.append(_row("s2ap tune wall (1 trial)", tune_wall))
    lines.append(_row("ratio tune/run", _ratios(tune_wall, run_wall)))
    lines.append("(a) per epoch (median epoch end -> next epoch end, s):")
    lines.append(_row("s2ap run", run_epoch))
    lines.append(_row("s2ap tune", tune_epoch))
    lines.append(_row("ratio tune/run  [target <= 1.05]", _ratios(tune_epoch, run_epoch)))
    lines.append("(b) fixed seconds (wall - the span of the epochs):")
    lines.append(_row("s2ap run", run_fixed))
    lines.append(_row("s2ap tune", tune_fixed))
    added = [t - r for t, r in zip(tune_fixed, run_fixed)]
    lines.append(_row("added by the service  [target <= 12]", added))
    lines.append("where s2ap run's time goes (s):")
    for key, label in RUN_STEPS:
        lines.append(_row(label, [b[key] for b in run_steps]))
    lines.append("where s2ap tune's time goes (s), from the study's own records:")
    for key, label in TUNE_STEPS:
        lines.append(_row(label, [b[key] for b in tune_steps]))
    lines.append("a study's epoch, split (median s):")
    for key in ("train", "validate_and_log", "checkpoint_and_ray"):
        lines.append(_row(key, [split[key] for split in splits]))
    lines += timings_table(tunes)
    return lines


def _ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


def timings_table(tunes: list[dict[str, Any]]) -> list[str]:
    """The service's own ``timings`` section (absent in versions that do not write it)."""
    records = [t["timings"] for t in tunes if t.get("timings")]
    if len(records) != len(tunes):
        return ["(no 'timings' section in summary.json: this version does not record one)"]
    lines = ["the service's own timings (summary.json 'timings', s):"]
    for key in records[0]:
        values = [r.get(key) for r in records]
        if all(isinstance(v, int | float) for v in values):
            lines.append(_row(key, values))
    return lines


# --------------------------------------------------------------------------------------------
# s2ap tune against the plain-Optuna peer


def _tune_study(study: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``s2ap tune STUDY`` in a fresh storage root: wall, epochs, best value, set-up medians."""
    root = work / "studies"
    start = time.perf_counter()
    subprocess.run(
        [*S2AP, "tune", str(study), "--storage-root", str(root), "-q"],
        check=True,
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    experiment = next(p.parent for p in root.glob("*/summary.json"))
    summary = json.loads((experiment / "summary.json").read_text())
    results = [_trial_results_of(d) for d in sorted(experiment.glob("trial_*"))]
    setups = [r[0].get("timing", {}).get("setup", {}) for r in results if r]
    setup = {
        k: statistics.median(s.get(k, 0.0) for s in setups)
        for k in sorted({k for s in setups for k in s})
    }
    best = summary.get("best") or {}
    objective = summary["objectives"][0]["metric"]
    return {
        "wall_s": wall,
        "search_s": summary["timings"].get("fit_s", float("nan")),
        "epochs": sum(len(r) for r in results),
        "slots": _slots(study),
        "best_value": (best.get("metrics") or {}).get(objective),
        "test": summary.get("test"),
        "setup_median_s": setup,
        "setup_total_s": sum(sum(s.values()) for s in setups),
        "trials": len(results),
    }


def _trial_results_of(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def _slots(study: Path) -> int:
    settings = (yaml.safe_load(study.read_text()) or {}).get("study") or {}
    return int(settings.get("max_concurrent_trials") or 1)


def _peer(study: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``benchmarks/peer_optuna.py STUDY`` in a fresh folder: its JSON line plus the wall."""
    script = Path(__file__).resolve().parent / "peer_optuna.py"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), str(study), "--work", str(work)],
        check=True,
        env=env,
        cwd=work.parent,
        capture_output=True,
        text=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - start
    return out


def peer_table(pairs: list[dict[str, Any]]) -> list[str]:
    """One row per command and pair, then the medians."""
    lines = [
        "| pair | command | wall s | search s | epochs | slot-s per epoch | best value |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for i, pair in enumerate(pairs):
        for name in ("peer", "tune"):
            r = pair[name]
            per_epoch = r["search_s"] * r["slots"] / max(1, r["epochs"])
            best = r.get("best_value")
            shown = f"{best:.4f}" if isinstance(best, float) else "-"
            lines.append(
                f"| {i} | {'plain Optuna' if name == 'peer' else 's2ap tune'} | "
                f"{r['wall_s']:.1f} | {r['search_s']:.1f} | {r['epochs']} | {per_epoch:.3f} | "
                f"{shown} |"
            )
        ratios.append(pair["tune"]["wall_s"] / pair["peer"]["wall_s"])
    lines.append("")
    shown = ", ".join(f"{r:.3f}" for r in ratios)
    lines.append(f"s2ap tune / plain Optuna wall: {shown}; median {statistics.median(ratios):.3f}")
    setups = [p["tune"]["setup_median_s"] for p in pairs]
    keys = sorted({k for s in setups for k in s})
    lines.append(
        "s2ap tune per-trial set-up (median over trials, then over pairs): "
        + ", ".join(f"{k} {statistics.median(s.get(k, 0.0) for s in setups):.3f}" for k in keys)
    )
    return lines


def peer_main(study: Path, repeats: int, work: Path, env: dict[str, str]) -> None:
    pairs = []
    for i in range(repeats):
        # Alternate who goes first, so a trend in the machine's load hits both alike.
        order = ("peer", "tune") if i % 2 == 0 else ("tune", "peer")
        pair: dict[str, Any] = {}
        for name in order:
            folder = work / f"pair{i}-{name}"
            folder.mkdir(parents=True)
            pair[name] = (_peer if name == "peer" else _tune_study)(study, folder, env)
            print(f"pair {i}: {name} {pair[name]['wall_s']:.1f} s", flush=True)
        pairs.append(pair)
        (work / "peer-records.json").write_text(json.dumps(pairs, indent=1, default=str))
    print("\n".join(peer_table(pairs)))
    print(f"raw records: {work / 'peer-records.json'}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/run-digits.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense", type=Path, help="a dense model to start from (else trained)")
    parser.add_argument(
        "--pythonpath", help="put this source tree first on PYTHONPATH (measure another version)"
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a new temp folder)")
    parser.add_argument("--records", type=Path, help="only print the tables of a records.json")
    parser.add_argument(
        "--peer", type=Path, help="time s2ap tune on this study against the plain-Optuna peer"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: give 1 or more")
    for name in ("dense", "records"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name} {path}: no such file")
    return args


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return env


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.records is not None:
        records = json.loads(args.records.read_text())
        if isinstance(records, list):  # a --peer call's peer-records.json
            print("\n".join(peer_table(records)))
        else:
            print("\n".join(report(records["runs"], records["tunes"])))
        return
    env = _env(args.pythonpath)
    if args.peer is not None:
        work = (args.work or Path(tempfile.mkdtemp(prefix="s2ap-peer-"))).absolute()
        work.mkdir(parents=True, exist_ok=True)
        peer_main(args.peer.absolute(), args.repeats, work, env)
        return
    # Every command runs in the working folder: Ray puts the driver's folder first on its
    # workers' path, so a run from inside a source tree would mix two versions of the code.
    work = (args.work or Path(tempfile.mkdtemp(prefix="s2ap-overhead-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    config = args.config.absolute()
    dense = (args.dense or _dense_model(work, config, env)).absolute()
    run_cfg, study_cfg = make_configs(work, config, dense)
    runs, tunes = [], []
    for i in range(args.repeats):
        run, tune = one_repeat(i, work, run_cfg, study_cfg, env)
        runs.append(run)
        tunes.append(tune)
        print(
            f"repeat {i}: s2ap run {run['end'] - run['start']:.1f} s, "
            f"s2ap tune (1 trial) {tune['end'] - tune['start']:.1f} s",
            flush=True,
        )
    (work / "records.json").write_text(json.dumps({"runs": runs, "tunes": tunes}, indent=1))
    print("\n".join(report(runs, tunes)))
    print(f"raw records: {work / 'records.json'}")


if __name__ == "__main__":
    main()
