"""The study service at scale: wall time against the theoretical minimum, the service's own cost
per trial, MLflow write latency and the read commands, from 16 to 1,000 trials.

Runs the real service (``s2ap tune`` against a multi-node Ray cluster of ``ray start`` nodes on
this machine, the real Trainable, Optuna in its storage, MLflow) on a study built for scale: the
digits data, a tiny MLP, 1-step PGD and 4 epochs of tens of milliseconds each, so that what the
service costs is what shows. Each row is one study (fresh storage root), on the same cluster:

    python benchmarks/scale.py                                  # the whole sweep
    python benchmarks/scale.py --rows 16x2 128x8 1000x16 --stores sqlite postgres
    python benchmarks/scale.py --records WORK/records.json      # the table again

A row prints: ``wall`` (the driver's fit, the search itself) and ``total`` (the whole command);
``min``, the theoretical minimum: the sum of every trial's own step times (``timing.step_s``,
what its epochs spent training and validating) over the concurrent slots; ``ratio`` = wall /
min; the service's cost per trial (slot-seconds not spent in steps, per trial: set-up, MLflow,
checkpoints, Ray); the driver's CPU time per trial split into the sampler's draws, the
searcher's own bookkeeping (baselines, dedup) and the rest (Ray Tune's loop); MLflow write
latency (each epoch's ``log_batch``, p50/p99) and writes that failed over to the outbox; the
driver's peak memory; and the seconds of ``s2ap status``, ``s2ap masks pull``, ``s2ap report``
and the first page of ``s2ap ui`` on the finished study. Then it checks the study: one finished
MLflow run per trial with each epoch's metrics exactly once, one Optuna trial per searched trial
(``lost``/``dup`` count metric points missing or repeated). ``--plot`` draws the per-trial cost
against the number of trials (docs/figures/scale.png).

Figures from one machine are comparable within one call; the machine is reported with them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the supervised cluster and PostgreSQL
S2AP = (sys.executable, "-m", "tune.cli")
ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TQDM_DISABLE": "1",
}

#: The quickstart's conditional space (an S2AP and a random branch) with a HYDRA baseline.
SPACE = {
    "prune.perturbation": {
        "type": "choice",
        "branches": {
            "score": {
                "prune.rho": {"type": "loguniform", "low": 0.005, "high": 0.5},
                "prune.ascent_steps": {"type": "int", "low": 1, "high": 3},
            },
            "random": {"prune.rho": {"type": "loguniform", "low": 0.005, "high": 0.5}},
        },
    }
}


def scale_study(
    trials: int,
    concurrency: int,
    storage_root: str | os.PathLike[str],
    *,
    name: str = "scale",
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The study file (as a dict) of one row: tiny epochs, ASHA, a HYDRA baseline, no test
    evaluation (it would time the evaluation, not the service)."""
    return {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "data": {"source": "digits", "val_size": 0.2, "batch_size": 512},
        "model": {"arch": "mlp"},
        "threat": {"eps": 0.15, "step_size": 0.15, "steps": 1},
        "pretrain": {"epochs": 1, "lr": 0.05},
        "prune": {"epochs": 3, "lr": 0.1, "sparsity": 0.9, "warmup_epochs": 1},
        "finetune": {"epochs": 1, "lr": 0.01},
        "validation": {
            "pgd_steps": 1,
            "max_examples": 128,
            "hessian_iters": 0,
            "sharpness_examples": 32,
        },
        "evaluate": {"n_examples": 64, "pgd_steps": 1, "autoattack": False},
        "study": {
            "name": name,
            "storage_root": str(storage_root),
            "num_samples": trials,
            "max_concurrent_trials": concurrency,
            "searcher": {"kind": "tpe", "seed": 0, "n_startup_trials": 4},
            "scheduler": {"kind": "asha", "grace_period": 2, "reduction_factor": 2},
            "resources": {"cpu": 1, "gpu": 0},
            "baselines": {"hydra": {"prune.perturbation": "none"}},
            "test_eval": {"enabled": False},
            **({"tracking_uri": tracking_uri} if tracking_uri else {}),
        },
        "search_space": SPACE,
    }


# --------------------------------------------------------------------------------------------
# Running one row


def _env() -> dict[str, str]:
    env = {**os.environ, **ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _timed(argv: Sequence[str], *, timeout: float = 600) -> tuple[float, str]:
    """Run a command; its wall seconds and output (raises on a non-zero exit)."""
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def run_driver(argv: Sequence[str], log: Path, timeout: float) -> dict[str, float]:
    """``s2ap tune`` as a child process: its wall seconds and peak memory (RSS, polled)."""
    from tests.support.ray_cluster import import_psutil

    psutil = import_psutil()
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        peak = 0
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                pass
            if time.perf_counter() - start > timeout:
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
                raise TimeoutError(f"{argv} ran past {timeout} s; see {log}")
            time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"s2ap tune exited {proc.returncode}; see {log}")
    return {"total_s": wall, "driver_peak_mb": peak / 2**20}


def _results(experiment: Path) -> list[list[dict[str, Any]]]:
    """Every trial's results (its ``result.json`` lines), one list per trial."""
    out = []
    for path in sorted(experiment.glob("trial_*/result.json")):
        out.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def trial_figures(results: list[list[dict[str, Any]]], concurrency: int) -> dict[str, float]:
    """The theoretical minimum and the per-epoch MLflow figures, from the trials' results."""
    timing = [r.get("timing", {}) for rs in results for r in rs]
    steps = [t.get("step_s", 0.0) for t in timing]
    logs = [t["log_s"] for t in timing if "log_s" in t]
    # A trial's count is cumulative ("so far"): its largest value is the trial's total.
    queued = sum(
        max((r.get("timing", {}).get("mlflow_queued", 0) for r in rs), default=0) for rs in results
    )
    return {
        **_slot_split(timing),
        "trials": len(results),
        "results": len(steps),
        "step_sum_s": sum(steps),
        "min_s": sum(steps) / concurrency,
        "log_p50_ms": 1000 * _percentile(logs, 0.5),
        "log_p99_ms": 1000 * _percentile(logs, 0.99),
        "failed_writes": float(queued),
    }


#: Where a trial's slot time goes, as each trial times itself (``timing`` in its results):
#: key -> (title, timing fields summed over every result, set-up fields summed once per trial).
SPLIT = {
    "split_worker_s": ("worker start", (), ("worker_start_s",)),
    "split_setup_s": ("set-up", (), ("dataset_s", "dense_s", "pipelines_s")),
    "split_mlflow_open_s": ("MLflow run open", (), ("mlflow_run_s",)),
    "split_log_s": ("epoch logs", ("log_s",), ()),
    "split_checkpoint_s": ("checkpoints", ("checkpoint_s",), ()),
    "split_end_s": ("trial end", ("end_s",), ()),
}


def _slot_split(timing: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds summed over the study for each part of :data:`SPLIT` (per trial in ``one_row``);
    ``timing`` holds every result's record (a trial's set-up is in its first one)."""
    setups = [t.get("setup") or {} for t in timing]
    out = {}
    for key, (_, fields, setup_fields) in SPLIT.items():
        total = sum(float(t.get(f, 0.0)) for t in timing for f in fields)
        total += sum(float(s.get(f, 0.0)) for s in setups for f in setup_fields)
        out[key] = total
    return out


def check_study(
    tracking_uri: str, name: str, results: list[list[dict[str, Any]]], optuna_path: str
) -> dict[str, float]:
    """One FINISHED run per trial with each epoch once; one Optuna trial per searched trial."""
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = []
    token = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`s2ap.role` = 'trial'",
            max_results=1000,
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    by_trial: dict[str, list[Any]] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags.get("s2ap.trial_id", ""), []).append(run)
    lost = duplicated = extra_runs = unfinished = 0
    for rs in results:
        trial_id = rs[-1]["trial_id"]
        found = by_trial.get(trial_id, [])
        extra_runs += max(0, len(found) - 1)
        if not found:
            lost += len(rs)
            continue
        unfinished += found[0].info.status != "FINISHED"
        steps = [int(m.step) for m in client.get_metric_history(found[0].info.run_id, "epoch")]
        expected = [int(r["epoch"]) for r in rs]
        lost += len(set(expected) - set(steps))
        duplicated += len(steps) - len(set(steps))
    from tune.study.file import optuna_journal

    study = optuna.load_study(study_name=name, storage=optuna_journal(optuna_path))
    searched = sum(1 for rs in results if not rs[-1].get("config", {}).get("baseline"))
    nodes = sorted({run.data.tags.get("s2ap.node_id", "") for run in runs})
    return {
        "trial_nodes": nodes,
        "nodes": float(len([n for n in nodes if n])),
        "runs": float(len(runs)),
        "lost_metrics": float(lost),
        "dup_metrics": float(duplicated),
        "extra_runs": float(extra_runs),
        "unfinished_runs": float(unfinished),
        "optuna_trials": float(len(study.trials)),
        "searched_trials": float(searched),
    }


COMMANDS = ("status", "pull", "report", "ui")


def time_commands(
    study_file: Path, work: Path, commands: Sequence[str] = COMMANDS
) -> dict[str, Any]:
    """Seconds of the read commands a user runs on the finished study, and the best trial that
    ``s2ap status`` and ``s2ap masks pull`` each name (they must agree)."""
    out: dict[str, Any] = {}
    if "status" in commands:
        out["status_s"], text = _timed([*S2AP, "status", str(study_file), "--json"])
        out["status_best"] = (json.loads(text).get("best") or {}).get("trial_id")
    if "pull" in commands:
        pulled = work / "pulled"
        out["masks_pull_s"], text = _timed(
            [*S2AP, "masks", "pull", str(study_file), "--out", str(pulled), "--force"]
        )
        found = re.search(r"best trial (\S+)", text)
        out["pull_best"] = found.group(1) if found else None
    if "report" in commands:
        report = work / "report.md"
        try:
            out["report_s"], _ = _timed([*S2AP, "report", str(study_file), "--out", str(report)])
        except RuntimeError as exc:  # a study without test numbers may have nothing to report
            print(f"  (report: {str(exc).splitlines()[-1]})", file=sys.stderr)
            out["report_s"] = math.nan
    if "ui" in commands:
        out["ui_first_page_s"] = ui_first_page(study_file)
    return out


def ui_first_page(study_file: Path) -> float:
    """``s2ap ui``: seconds from the command's start to its trials page served and the runs
    search behind its first page answered (the first 100 trials, best first)."""
    from tune.cluster.nodes import free_ports

    (port,) = free_ports(1)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*S2AP, "ui", str(study_file), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        url = None
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"(http://127\.0\.0\.1:\d+/\S*experiments/(\d+)\S*)", line)
            if found:
                url, experiment_id = found.group(1), found.group(2)
                break
        if url is None:
            return math.nan
        urllib.request.urlopen(url, timeout=60).read()
        body = json.dumps(
            {
                "experiment_ids": [experiment_id],
                "filter": "tags.`s2ap.role` = 'trial'",
                "max_results": 100,
                "order_by": ["metrics.`val_robust_acc` DESC"],
            }
        ).encode()
        # The printed page's server: the one `s2ap ui` started, or the study's own MLflow
        # server (an http tracking URI needs no new one).
        base = url.split("/#")[0].rstrip("/")
        api = f"{base}/ajax-api/2.0/mlflow/runs/search"
        request = urllib.request.Request(
            api, data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=60).read()
        return time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def one_row(
    trials: int,
    concurrency: int,
    store: str,
    *,
    address: str,
    work: Path,
    tracking_uri: str | None,
    timeout: float,
    commands: Sequence[str] = COMMANDS,
) -> dict[str, Any]:
    """One study end to end (see the module docstring); its figures."""
    name = f"scale-{trials}x{concurrency}-{store}"
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    study_file = root / "study.yaml"
    study = scale_study(trials, concurrency, root / "studies", name=name, tracking_uri=tracking_uri)
    study_file.write_text(yaml.safe_dump(study, sort_keys=False))
    argv = [*S2AP, "tune", str(study_file), "--address", address, "--shared-storage", "-q"]
    row: dict[str, Any] = {"trials_asked": trials, "concurrency": concurrency, "store": store}
    row.update(run_driver(argv, root / "driver.log", timeout))
    experiment = root / "studies" / name
    summary = json.loads((experiment / "summary.json").read_text())
    timings = summary.get("timings", {})
    row["wall_s"] = timings.get("fit_s", math.nan)
    results = _results(experiment)
    row.update(trial_figures(results, concurrency))
    n = max(1, row["trials"])
    row["ratio"] = row["wall_s"] / row["min_s"] if row["min_s"] else math.nan
    # Slot-seconds the trials did not spend in their steps, per trial.
    row["service_per_trial_s"] = (row["wall_s"] * concurrency - row["step_sum_s"]) / n
    for key in SPLIT:
        row[key] /= n
    # The rest: Ray (actor reuse, results, checkpoint persistence, scheduling) and idle slots.
    row["split_rest_s"] = row["service_per_trial_s"] - sum(row[key] for key in SPLIT)
    for key in ("sampler", "bookkeeping", "ray"):
        row[f"driver_{key}_ms"] = 1000 * timings.get(f"driver/{key}_s", math.nan) / n
    uri = summary["tracking_uri"]
    row.update(check_study(uri, name, results, summary["optuna_storage"]))
    row.update(time_commands(study_file, root, commands))
    return row


# --------------------------------------------------------------------------------------------
# Stores and the cluster


@contextmanager
def tracking_store(store: str, work: Path) -> Iterator[str | None]:
    """``None`` for the default sqlite store; an ``mlflow server`` on PostgreSQL's URL."""
    if store == "sqlite":
        yield None
        return
    from tests.support.postgres import LocalPostgres
    from tracking.server import MlflowServer

    folder = work / f"server-{time.time_ns()}"
    with (
        LocalPostgres(database="mlflow", user="mlflow") as postgres,
        MlflowServer(
            backend_store_uri=postgres.sqlalchemy_uri(),
            artifacts_destination=folder / "artifacts",
            log_dir=folder,
            workers=2,
            startup_timeout_s=240,
        ) as server,
    ):
        yield server.url


@contextmanager
def cluster(nodes: int, node_cpus: int) -> Iterator[str]:
    """A head (no CPUs: it schedules) and ``nodes`` worker nodes on loopback; its address."""
    from tests.support.ray_cluster import LocalRayCluster

    with LocalRayCluster(
        num_cpus=0, worker_nodes=[node_cpus] * nodes, env=ENV, start_timeout_s=300
    ) as c:
        yield c.address


# --------------------------------------------------------------------------------------------
# Output

COLUMNS = (
    ("trials", "trials", "{:.0f}"),
    ("concurrency", "slots", "{:.0f}"),
    ("store", "store", "{}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("min_s", "min s", "{:.1f}"),
    ("ratio", "ratio", "{:.2f}"),
    ("service_per_trial_s", "svc/trial s", "{:.2f}"),
    ("driver_sampler_ms", "draw ms", "{:.1f}"),
    ("driver_bookkeeping_ms", "book ms", "{:.1f}"),
    ("driver_ray_ms", "ray ms", "{:.1f}"),
    ("log_p50_ms", "log p50", "{:.0f}"),
    ("log_p99_ms", "log p99", "{:.0f}"),
    ("failed_writes", "queued", "{:.0f}"),
    ("lost_metrics", "lost", "{:.0f}"),
    ("dup_metrics", "dup", "{:.0f}"),
    ("driver_peak_mb", "peak MB", "{:.0f}"),
    ("nodes", "nodes", "{:.0f}"),
    ("status_s", "status", "{:.1f}"),
    ("masks_pull_s", "pull", "{:.1f}"),
    ("report_s", "report", "{:.1f}"),
    ("ui_first_page_s", "ui", "{:.1f}"),
    ("total_s", "total s", "{:.0f}"),
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key, math.nan)
            cells.append(fmt.format(value) if value == value else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_table(rows: Sequence[dict[str, Any]]) -> str:
    """Where ``svc/trial`` goes (slot-seconds per trial), as a Markdown table."""
    parts = [*((k, title) for k, (title, _, _) in SPLIT.items()), ("split_rest_s", "rest (Ray)")]
    lines = [
        "| trials | slots | store | svc/trial s | " + " | ".join(t for _, t in parts) + " |",
        "|" + "---|" * (4 + len(parts)),
    ]
    for row in rows:
        if "split_log_s" not in row:  # a records.json from before the split
            continue
        cells = [f"{row['trials']:.0f}", f"{row['concurrency']:.0f}", str(row["store"])]
        cells += [f"{row['service_per_trial_s']:.2f}", *(f"{row[k]:.2f}" for k, _ in parts)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The service's cost per trial against the number of trials, one line per slots/store."""
    from tracking.plots import new_figure, save_png

    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    series: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for row in rows:
        key = (int(row["concurrency"]), str(row["store"]))
        series.setdefault(key, []).append((int(row["trials"]), row["service_per_trial_s"]))
    for (slots, store), points in sorted(series.items()):
        points.sort()
        ax.plot(*zip(*points), marker="o", label=f"{slots} slots, {store}")
    ax.set_xscale("log")
    ax.set_xlabel("trials in the study")
    ax.set_ylabel("service cost per trial (slot-seconds)")
    ax.set_title("s2ap tune at scale (multi-node cluster on one machine)")
    ax.legend(fontsize="small")
    save_png(fig, path)


def machine() -> str:
    cpus = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = math.nan
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        f"{platform.node()}: {cpus} CPUs, {mem:.0f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at the end"
    )


# --------------------------------------------------------------------------------------------
# Command line


def parse_rows(items: Sequence[str]) -> list[tuple[int, int]]:
    """``["16x2", "1000x16"]`` -> ``[(16, 2), (1000, 16)]``."""
    out = []
    for item in items:
        found = re.fullmatch(r"(\d+)x(\d+)", item)
        if not found:
            raise argparse.ArgumentTypeError(f"--rows {item!r}: expected TRIALSxSLOTS, e.g. 128x8")
        out.append((int(found.group(1)), int(found.group(2))))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows",
        nargs="+",
        default=[f"{n}x{c}" for n in (16, 128, 1000) for c in (2, 8, 16)],
        help="TRIALSxSLOTS studies to run (default: 16, 128, 1000 trials x 2, 8, 16 slots)",
    )
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgres"])
    p.add_argument("--nodes", type=int, default=4, help="worker nodes of the cluster")
    p.add_argument("--node-cpus", type=int, default=4, help="logical CPUs of each worker node")
    p.add_argument("--work", type=Path, default=None, help="folder for the studies (kept)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per study")
    p.add_argument(
        "--records",
        type=Path,
        nargs="+",
        help="print (and --plot) the rows of earlier records.json files, in the order given",
    )
    p.add_argument(
        "--commands",
        nargs="*",
        default=list(COMMANDS),
        choices=COMMANDS,
        help="the read commands to time on each finished study (default: all)",
    )
    p.add_argument(
        "--plot", type=Path, help="draw the per-trial cost (e.g. docs/figures/scale.png)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.records:
        rows = [row for path in args.records for row in json.loads(path.read_text())["rows"]]
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="s2ap-scale-"))
        work.mkdir(parents=True, exist_ok=True)
        records = work / "records.json"
        rows = []
        with cluster(args.nodes, args.node_cpus) as address:
            for store in args.stores:
                with tracking_store(store, work) as uri:
                    for trials, slots in parse_rows(args.rows):
                        print(f"# {trials} trials, {slots} slots, {store} ...", flush=True)
                        row = one_row(
                            trials,
                            slots,
                            store,
                            address=address,
                            work=work,
                            tracking_uri=uri,
                            timeout=args.timeout,
                            commands=args.commands,
                        )
                        rows.append(row)
                        print(table([row]).splitlines()[-1], flush=True)
                        records.write_text(json.dumps({"machine": machine(), "rows": rows}))
        print(f"records: {records}")
    print(f"\n{machine()}\n")
    print(table(rows))
    print("\nwhere svc/trial goes (slot-seconds per trial; rest = Ray and idle slots):\n")
    print(split_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"\nplot: {args.plot}")
    if rows and any(r.get("lost_metrics") or r.get("dup_metrics") for r in rows):
        print("\nWARNING: metrics lost or duplicated (see the lost/dup columns)")
    ratios = [r["ratio"] for r in rows if r.get("ratio") == r.get("ratio")]
    if ratios:
        print(f"\nratio wall/min: median {statistics.median(ratios):.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
