"""What one CIFAR-10 study costs on a small CPU: the rows the budget of a study is made of.

Reads the run config of a study file (default ``configs/experiments/cifar10-cpu.yaml``: data,
model, threat, epochs, validation, evaluation) and times, through the project's own code
(:func:`s2ap.pipeline.load_data`, :class:`s2ap.pipeline.Pipeline` one epoch per ``step()``,
:func:`s2ap.metrics.robust_accuracy`, :func:`s2ap.metrics.autoattack_accuracy`):

- ``data``: loading the dataset as a trial does (a fresh process: time and peak RSS; with
  ``--fresh-cache``, the imagefolder source decodes the images again instead of reading its
  ``.npy`` cache), and one pass over the training batches with augmentation, no model;
- ``pretrain``: one dense PGD adversarial training epoch over the training split;
- ``prune-<arm>``: one prune epoch from the dense model, for the arms of the study (HYDRA, S2AP,
  random, HARP, HARP+S2AP; S2AP with no warm-up, so the extra pass is in the epoch);
- ``finetune``: one finetuning epoch of the pruned model;
- ``pgd20``, ``autoattack``: the test evaluation (PGD-k on ``evaluate.n_examples``, AutoAttack
  standard L-inf on ``evaluate.autoattack_examples``) of the finetuned model.

Every row reports wall seconds, this process's CPU seconds (what a shared machine cannot take
away) and the 1-minute load average at its start and end (other jobs on the machine). An epoch
row splits its wall time into training (``epoch_time_s``) and the rest (validation, sharpness,
Hessian at the last prune epoch). ``--compare-threads`` instead runs the same PGD training
batches as 1 process x 2 threads and as 2 processes x 1 thread at once, alternately, and prints
the images/s of the machine in each layout: how a 2-core study should run its trials.

    python benchmarks/cifar_cpu.py [--config FILE] [--set FIELD=VALUE ...] [--threads 1]
        [--rows data pretrain prune-hydra ...] [--train-examples N] [--dense FILE]
        [--save-dense FILE] [--fresh-cache] [--json FILE]
    python benchmarks/cifar_cpu.py --compare-threads [--batches 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from s2ap.config import RunConfig, set_dotted
from s2ap.data import DatasetSplits
from s2ap.pipeline import Pipeline, load_data

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "experiments" / "cifar10-cpu.yaml"
#: Prune rows: prune-section overrides of each arm of the study.
PRUNE_ROWS: dict[str, dict[str, Any]] = {
    "prune-hydra": {"host": "hydra", "perturbation": "none"},
    "prune-s2ap": {"host": "hydra", "perturbation": "score", "warmup_epochs": 0},
    "prune-random": {"host": "hydra", "perturbation": "random", "warmup_epochs": 0},
    "prune-harp": {"host": "harp", "perturbation": "none"},
    "prune-harp-s2ap": {"host": "harp", "perturbation": "score", "warmup_epochs": 0},
}
ROWS = ("data", "pretrain", *PRUNE_ROWS, "finetune", "pgd20", "autoattack")


def read_run_config(path: Path, overrides: list[str]) -> RunConfig:
    """The run config of a study file (its ``study:``/``search_space:`` dropped), with
    ``data.root`` resolved against the file's folder as the study service does."""
    raw = yaml.safe_load(path.read_text())
    raw.pop("study", None)
    raw.pop("search_space", None)
    for item in overrides:
        key, _, value = item.partition("=")
        set_dotted(raw, key, yaml.safe_load(value))
    root = raw.get("data", {}).get("root")
    if root is not None and not os.path.isabs(root):
        raw["data"]["root"] = str((path.parent / root).resolve())
    raw["device"] = "cpu"
    return RunConfig.model_validate(raw)


def one_epoch(cfg: RunConfig, section: str, **fields: Any) -> RunConfig:
    """``cfg`` with ``section`` run for one epoch (and ``fields`` set in it)."""
    data = cfg.model_dump()
    data[section].update(epochs=1, **fields)
    return RunConfig.model_validate(data)


@contextmanager
def measured(name: str, rows: list[dict[str, Any]], **extra: Any) -> Iterator[dict[str, Any]]:
    """Time the block: wall and CPU seconds, load average before and after; append a row."""
    row: dict[str, Any] = {"row": name, "load_start": os.getloadavg()[0], **extra}
    wall, cpu = time.perf_counter(), time.process_time()
    yield row
    row.update(
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu,
        load_end=os.getloadavg()[0],
    )
    rows.append(row)
    print(format_row(row), flush=True)


def format_row(row: dict[str, Any]) -> str:
    extra = {
        k: (round(v, 4) if isinstance(v, float) else v)
        for k, v in row.items()
        if k not in {"row", "wall_s", "cpu_s", "load_start", "load_end"}
    }
    return (
        f"{row['row']:<18}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}"
        f"{row['load_start']:>7.2f}{row['load_end']:>7.2f}  {json.dumps(extra)}"
    )


def load_in_subprocess(config: Path, overrides: list[str]) -> dict[str, Any]:
    """Load the dataset in a fresh process (a trial's first load): seconds and peak RSS."""
    code = (
        "import json, resource, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from cifar_cpu import read_run_config\n"
        "from pathlib import Path\n"
        "import torch\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "from s2ap.pipeline import load_data\n"
        "cfg = read_run_config(Path(sys.argv[2]), sys.argv[3:])\n"
        "w, c = time.perf_counter(), time.process_time()\n"
        "d = load_data(cfg)\n"
        "print(json.dumps({'load_wall_s': time.perf_counter() - w,\n"
        "  'load_cpu_s': time.process_time() - c,\n"
        "  'rss_before_mib': base / 1024,\n"
        "  'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
        "  'n': [len(d.train), len(d.val), len(d.test)]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(config), *overrides],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def batches_pass(cfg: RunConfig, data: DatasetSplits) -> int:
    """One epoch of training batches (gather, float conversion, crop and flip), no model."""
    from s2ap.stages import augmentation

    seen = 0
    for x, _ in data.train.batches(
        cfg.data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        augment=augmentation(cfg.data, data),
        drop_last=True,
    ):
        seen += len(x)
    return seen


@contextmanager
def cpu_of_validation(pipeline: Pipeline) -> Iterator[list[float]]:
    """CPU seconds spent in the epoch's validation and prune metrics (sharpness, Hessian):
    :func:`s2ap.stages.validate` and the stage's ``epoch_metrics``, timed where they run."""
    from s2ap import stages

    spent = [0.0]
    stage = pipeline.stage
    assert stage is not None

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - start

        return wrapper

    validate, stage.epoch_metrics = stages.validate, timed(stage.epoch_metrics)  # type: ignore[method-assign]
    stages.validate = timed(validate)
    try:
        yield spent
    finally:
        stages.validate = validate
        del stage.epoch_metrics  # the class's method again


def epoch_row(
    name: str, pipeline: Pipeline, rows: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """One ``Pipeline.step()``: training wall seconds from its record; CPU seconds split into
    training and the rest (validation, sharpness, Hessian at the last prune epoch)."""
    with cpu_of_validation(pipeline) as spent, measured(name, rows, **extra) as row:
        record = pipeline.step()
    row.update(
        train_s=record["epoch_time_s"],
        images_per_s=record["images_per_s"],
        val_clean=record["val_clean_acc"],
        val_robust=record["val_robust_acc"],
        other_cpu_s=spent[0],
        train_cpu_s=row["cpu_s"] - spent[0],
        train_images=len(pipeline.data.train)
        // pipeline.cfg.data.batch_size
        * pipeline.cfg.data.batch_size,
    )
    row["train_cpu_ms_per_image"] = 1000 * row["train_cpu_s"] / max(row["train_images"], 1)
    print(
        f"{'':<18}training {row['train_s']:.1f} s wall, {row['train_cpu_s']:.1f} s CPU "
        f"({row['train_cpu_ms_per_image']:.2f} CPU-ms/image); validation and metrics "
        f"{row['wall_s'] - row['train_s']:.1f} s wall, {row['other_cpu_s']:.1f} s CPU",
        flush=True,
    )
    return record


def run_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = read_run_config(args.config, args.set)
    rows: list[dict[str, Any]] = []
    torch.manual_seed(0)
    print(
        f"# {cfg.model.arch}, batch {cfg.data.batch_size}, PGD-{cfg.threat.steps} "
        f"(eps {cfg.threat.eps:.4f}, step {cfg.threat.step_size:.4f}), torch threads "
        f"{torch.get_num_threads()}, validation PGD-{cfg.validation.pgd_steps} on "
        f"{cfg.validation.max_examples} examples, {os.cpu_count()} CPUs"
    )
    print(f"{'row':<18}{'wall s':>9}{'cpu s':>9}{'load0':>7}{'load1':>7}  details")
    if "data" in args.rows:
        if args.fresh_cache:
            _drop_cache(cfg)
        with measured("data-load", rows) as row:
            row.update(load_in_subprocess(args.config, args.set))
    data = load_data(cfg)
    if args.train_examples:
        data.train = data.train.subset(args.train_examples)
    if "data" in args.rows:
        with measured("data-batches", rows) as row:
            row["images"] = batches_pass(cfg, data)

    dense_state = _read_state(args.dense) if args.dense else None
    if "pretrain" in args.rows:
        pipeline = Pipeline(
            one_epoch(cfg, "pretrain"), data=data, dense_state=None, phases=("pretrain",)
        )
        epoch_row("pretrain", pipeline, rows, params=_params(pipeline))
        if dense_state is None:
            dense_state = {k: v.detach().clone() for k, v in pipeline.model.state_dict().items()}
    if args.save_dense and dense_state is not None:
        from safetensors.torch import save_file

        save_file(dense_state, args.save_dense)

    finetuned: Pipeline | None = None
    for name, fields in PRUNE_ROWS.items():
        if name not in args.rows:
            continue
        pipeline = Pipeline(
            one_epoch(cfg, "prune", **fields),
            data=data,
            dense_state=dense_state,
            phases=("prune", "finetune"),
        )
        epoch_row(name, pipeline, rows)
        finetuned = finetuned or pipeline
    if {"finetune", "pgd20", "autoattack"} & set(args.rows):
        if finetuned is None:  # the finetune row needs a mask: prune one HYDRA epoch untimed
            finetuned = Pipeline(
                one_epoch(cfg, "prune", **PRUNE_ROWS["prune-hydra"]),
                data=data,
                dense_state=dense_state,
                phases=("prune", "finetune"),
            )
            finetuned.step()
        if "finetune" in args.rows:
            epoch_row("finetune", finetuned, rows)
    model = finetuned.selected_model() if finetuned is not None else None
    if "pgd20" in args.rows and model is not None:
        evaluate_pgd(cfg, data, model, rows)
    if "autoattack" in args.rows and model is not None:
        evaluate_autoattack(cfg, data, model, rows)
    return rows


def evaluate_pgd(
    cfg: RunConfig, data: DatasetSplits, model: torch.nn.Module, rows: list[dict[str, Any]]
) -> None:
    from s2ap import metrics
    from s2ap.stages import attack_settings

    split = data.test.subset(cfg.evaluate.n_examples)
    bs = cfg.data.eval_batch_size
    with measured("test-clean", rows, images=len(split)) as row:
        row["acc"] = metrics.accuracy(model, split.batches(bs))
    settings = attack_settings(cfg.threat, cfg.evaluate.pgd_steps)
    with measured(f"test-pgd{cfg.evaluate.pgd_steps}", rows, images=len(split)) as row:
        row["acc"] = metrics.robust_accuracy(model, split.batches(bs), settings)


def evaluate_autoattack(
    cfg: RunConfig, data: DatasetSplits, model: torch.nn.Module, rows: list[dict[str, Any]]
) -> None:
    from s2ap import metrics

    n = cfg.evaluate.autoattack_examples or cfg.evaluate.n_examples
    split = data.test.subset(n)
    x, y = next(iter(split.batches(len(split))))
    with measured("test-autoattack", rows, images=len(split)) as row:
        row["acc"] = metrics.autoattack_accuracy(
            model, x, y, eps=cfg.threat.eps, num_classes=data.num_classes, seed=cfg.seed
        )


def _params(pipeline: Pipeline) -> int:
    return sum(p.numel() for p in pipeline.model.parameters())


def _read_state(path: str) -> dict[str, torch.Tensor]:
    from s2ap.pipeline import load_state_file

    return load_state_file(path)  # safetensors or torch.load(weights_only=True)


def _drop_cache(cfg: RunConfig) -> None:
    from s2ap.data.imagefolder import CACHE_DIRNAME

    if cfg.data.source == "imagefolder" and cfg.data.root:
        folder = Path(cfg.data.root) / CACHE_DIRNAME
        for f in folder.glob("*.npy") if folder.is_dir() else []:
            f.unlink()


# --------------------------------------------------------------------------------------------
# 1 process x 2 threads vs 2 processes x 1 thread


def train_batches(cfg: RunConfig, batches: int) -> float:
    """Seconds for ``batches`` dense PGD training batches of real data (after one warm-up)."""
    data = load_data(cfg)
    pipeline = Pipeline(one_epoch(cfg, "pretrain"), data=data, phases=("pretrain",))
    stage = pipeline.stage
    assert stage is not None
    stage.model.train()
    it = data.train.batches(cfg.data.batch_size, shuffle=True, augment=stage.augment)
    x, y = next(it)
    stage.train_batch(x, y)
    start = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
        stage.train_batch(x, y)
    return time.perf_counter() - start


def compare_threads(args: argparse.Namespace) -> list[dict[str, Any]]:
    def launch(threads: int) -> subprocess.Popen[str]:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--config", str(args.config), "--worker-batches"]
        cmd += [str(args.batches), *[f"--set={s}" for s in args.set]]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)

    def layout(n_procs: int, threads: int) -> dict[str, Any]:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        procs = [launch(threads) for _ in range(n_procs)]
        seconds = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        images = n_procs * args.batches * cfg.data.batch_size
        # Machine throughput while all processes train: images over the slowest one's time.
        rate = images / max(seconds)
        row = {
            "row": f"{n_procs} proc x {threads} thr",
            "train_s": seconds,
            "images_per_s": rate,
            "load_start": load,
            "load_end": os.getloadavg()[0],
            "wall_s": time.perf_counter() - start,
        }
        print(
            f"{row['row']:<16} {rate:7.1f} img/s (machine)  per process "
            f"{[round(s, 1) for s in seconds]} s  load {load:.2f} -> {row['load_end']:.2f}",
            flush=True,
        )
        return row

    cfg = read_run_config(args.config, args.set)
    print(
        f"# {args.batches} PGD-{cfg.threat.steps} training batches of {cfg.data.batch_size} per "
        f"process, {cfg.model.arch}; layouts alternate, {args.repeats} repeats"
    )
    rows: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        rows.append(layout(1, 2))
        rows.append(layout(2, 1))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's cpus)")
    parser.add_argument("--train-examples", type=int, default=0, help="0: the whole split")
    parser.add_argument("--dense", help="dense state dict to prune (default: the pretrain row's)")
    parser.add_argument("--save-dense", help="write the dense model (safetensors)")
    parser.add_argument("--fresh-cache", action="store_true", help="decode the images again")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--compare-threads", action="store_true")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker-batches", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_batches:  # a --compare-threads worker: threads come from OMP_NUM_THREADS
        cfg = read_run_config(args.config, args.set)
        print(train_batches(cfg, args.worker_batches))
        return
    torch.set_num_threads(args.threads)
    rows = compare_threads(args) if args.compare_threads else run_rows(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
