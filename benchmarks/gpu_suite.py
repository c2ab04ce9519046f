"""GPU reference suite: S2AP throughput on ResNet-18 at CIFAR shape, alone and sharing a GPU.

Prints one markdown table, in under 5 minutes on one CUDA GPU (synthetic 32x32 data, PGD-10,
90% sparsity, rows interleaved and the median over rounds taken):

1. images/s of dense adversarial training, HYDRA (cached masks) and S2AP (one ascent step) at
   batch 128 in float32 and at batch 512 with bf16 autocast and channels-last;
2. the time to refresh every mask of the model: the default threshold selection, sort and
   ``torch.kthvalue``;
3. the total images/s of 1, 2 and 4 trials (S2AP at batch 128, float32) sharing the GPU, each
   a separate process capping its memory with ``torch.cuda.set_per_process_memory_fraction``
   (1/n each, as a Ray trial with ``num_gpus=1/n`` does), all started together.

The targets (measured on one H100; see docs/PERFORMANCE.md) are printed beside the values.
``--tiny`` runs the same code at a toy size (small CNN, 8x8 images, 1 PGD step, 1 and 2
processes): the CPU smoke test of the test suite. Imports neither Ray nor MLflow.

    python benchmarks/gpu_suite.py [--tiny] [--device cuda] [--rounds 10] [--iters 5]
        [--trials 1 2 4] [--duration 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import queue
import time
from collections.abc import Callable

import torch
from steps import Setting, make_steps, median, median_ratio, sync, time_rows

from s2ap.masking import ScoreMasking, kth_largest_by_selection, kth_largest_by_sort
from s2ap.models import create_model

TARGET_S2AP_BF16 = 4500.0  # images/s of S2AP at batch 512, bf16 + channels-last (H100)
TARGET_SHARING = 1.5  # total throughput of shared trials / one trial alone

ROWS = ["dense", "hydra-cached", "s2ap-1"]


def settings(args: argparse.Namespace) -> dict[str, Setting]:
    """The two step settings: the trial default, and the large-batch bf16 one."""
    if args.tiny:
        base = Setting(arch="small_cnn", batch_size=16, image_size=8, pgd_steps=1)
        large = dataclasses.replace(base, batch_size=32, amp="bf16", channels_last=True)
    else:
        base = Setting(arch="resnet18", batch_size=128, image_size=32, pgd_steps=10)
        large = dataclasses.replace(base, batch_size=512, amp="bf16", channels_last=True)
    base = dataclasses.replace(base, device=args.device)
    large = dataclasses.replace(large, device=args.device)
    return {
        f"bs {base.batch_size} fp32": base,
        f"bs {large.batch_size} bf16 + channels_last": large,
    }


def step_rows(args: argparse.Namespace) -> list[tuple[str, str, float, float, str]]:
    """(section, row, images/s, x dense, target) for every setting and row."""
    out = []
    device = torch.device(args.device)
    for name, setting in settings(args).items():
        seconds = time_rows(
            make_steps(setting, ROWS), rounds=args.rounds, iters=args.iters, device=device
        )
        for row in ROWS:
            target = ""
            if row == "s2ap-1" and setting.amp == "bf16" and not args.tiny:
                target = f">= {TARGET_S2AP_BF16:,.0f} images/s"
            rate = setting.batch_size / median(seconds[row])
            out.append((name, row, rate, median_ratio(seconds["dense"], seconds[row]), target))
    return out


def refresh_rows(args: argparse.Namespace) -> list[tuple[str, str, float, float, str]]:
    """Milliseconds to refresh every mask; and the thresholds alone, by sort and by kthvalue."""
    setting = next(iter(settings(args).values()))
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(
        setting.arch,
        num_classes=10,
        in_channels=3,
        image_size=setting.image_size,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    ).to(device)
    masking = ScoreMasking(model, sparsity=setting.sparsity)
    flats = [layer.scores.detach().abs().reshape(-1) for layer in masking.layers.values()]
    ks = list(masking.host.kept_counts(masking).values())

    def refresh() -> None:
        masking.invalidate()
        masking.refresh()

    def thresholds(select: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for f, k in zip(flats, ks):
                select(f, k)

        return run

    timed = {
        "refresh (default selection)": refresh,
        "thresholds by sort": thresholds(kth_largest_by_sort),
        "thresholds by kthvalue": thresholds(kth_largest_by_selection),
    }
    section = f"mask refresh, all {len(flats)} layers (ms)"
    seconds = time_rows(timed, rounds=3 if args.tiny else 20, iters=1, device=device)
    return [(section, row, 1000 * median(seconds[row]), 0.0, "") for row in timed]


def _trial(setting: Setting, fraction: float, duration: float, barrier, results) -> None:
    """One trial process: warm up, wait for the others, then update for ``duration`` seconds."""
    device = torch.device(setting.device)
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    else:
        torch.set_num_threads(1)  # CPU smoke test: one core per process
    step = make_steps(setting, ["s2ap-1"])["s2ap-1"]
    step()
    sync(device)
    barrier.wait()
    start, updates = time.perf_counter(), 0
    while time.perf_counter() - start < duration:
        step()
        updates += 1
    sync(device)
    results.put(updates * setting.batch_size / (time.perf_counter() - start))


def shared_throughput(setting: Setting, trials: int, duration: float) -> float:
    """Total images/s of ``trials`` processes running S2AP updates at the same time."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(trials), ctx.Queue()
    procs = [
        ctx.Process(target=_trial, args=(setting, 1.0 / trials, duration, barrier, results))
        for _ in range(trials)
    ]
    for p in procs:
        p.start()
    rates: list[float] = []
    try:
        while len(rates) < trials:
            try:
                rates.append(results.get(timeout=5))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:  # the others would wait at the barrier for ever
                    raise RuntimeError(f"a trial process failed (exit code {failed[0]})") from None
    finally:
        for p in procs:
            if len(rates) < trials:
                p.terminate()
            p.join()
    return sum(rates)


def sharing_rows(args: argparse.Namespace) -> list[tuple[str, str, float, float, str]]:
    setting = next(iter(settings(args).values()))
    out = []
    alone = None
    for n in args.trials:
        total = shared_throughput(setting, n, args.duration)
        alone = alone if alone is not None else total
        target = f">= {TARGET_SHARING}x alone" if n > 1 and not args.tiny else ""
        row = f"{n} trial{'s' if n > 1 else ''}, memory fraction {1 / n:.2f} each"
        out.append(("sharing: total images/s", row, total, total / alone, target))
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the CPU smoke test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per row")
    parser.add_argument("--iters", type=int, default=None, help="updates per row and round")
    parser.add_argument("--trials", type=int, nargs="+", default=None, help="trials sharing")
    parser.add_argument("--duration", type=float, default=None, help="seconds per sharing run")
    args = parser.parse_args()
    defaults = (2, 1, [1, 2], 1.0) if args.tiny else (10, 5, [1, 2, 4], 20.0)
    for name, default in zip(("rounds", "iters", "trials", "duration"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.trials[0] != 1:
        parser.error("--trials must start with 1 (the trial alone is the reference)")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    arch = "small_cnn 8x8, PGD-1" if args.tiny else "ResNet-18 (CIFAR) 32x32, PGD-10"
    print(f"# {arch}, synthetic data, sparsity 0.9, {name}, torch {torch.__version__}")
    print("| section | row | value | x reference | target |")
    print("|---|---|---|---|---|")
    for section, row, value, ratio, target in (
        step_rows(args) + refresh_rows(args) + sharing_rows(args)
    ):
        ratio_text = f"{ratio:.3f}" if ratio else ""
        print(f"| {section} | {row} | {value:.4g} | {ratio_text} | {target} |")
    print(f"# suite took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
