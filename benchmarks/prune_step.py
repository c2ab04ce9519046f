"""Images/s of one adversarial prune step, against dense adversarial training.

Each row is PGD-k examples plus one training update on the same synthetic batch, run through
the stages' own ``train_batch`` (rows: see ``steps.py``). Rows are interleaved update by update
(dense, hydra, ..., dense, hydra, ...) and the median over rounds is printed, with each row's
throughput relative to the dense update and its time relative to the HYDRA-cached update of the
same round, so a noisy shared machine shifts all rows together.

    python benchmarks/prune_step.py [--arch small_cnn] [--batch-size 128] [--image-size 32]
        [--steps 10] [--iters 1] [--rounds 15] [--device cpu] [--threads 0]
        [--amp none|bf16] [--channels-last] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse

import torch
from steps import CLOCKS, ROWS, Setting, make_steps, median, median_ratio, time_rows

# The speed targets (ratios measured in one interleaved run).
TARGET_VS_DENSE = 0.85  # S2AP-1 throughput / dense adversarial training throughput, at least
TARGET_VS_HYDRA = 1.10  # S2AP-1 time per update / HYDRA-cached time per update, at most


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--iters", type=int, default=1, help="timed updates per row and round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--clock", default="wall", choices=list(CLOCKS), help="cpu: process CPU time (CPU only)"
    )
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = Setting(
        arch=args.arch,
        batch_size=args.batch_size,
        image_size=args.image_size,
        pgd_steps=args.steps,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    rows = list(dict.fromkeys(["dense", "hydra-cached", *args.rows]))  # the two references
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures CPU work; it cannot time a GPU")
    seconds = time_rows(
        make_steps(setting, rows),
        rounds=args.rounds,
        iters=args.iters,
        device=device,
        clock=CLOCKS[args.clock],
    )
    dense, hydra = seconds["dense"], seconds["hydra-cached"]
    print(
        f"# {args.arch}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"PGD-{args.steps}, sparsity {setting.sparsity}, device {device}, amp {args.amp}, "
        f"channels_last {args.channels_last}, threads {torch.get_num_threads()}, "
        f"{args.clock} clock, median of {args.rounds} rounds x {args.iters} updates"
    )
    print(f"{'step':<20}{'images/s':>10}{'x dense':>10}{'time x hydra':>14}")
    for row in rows:
        rate = args.batch_size / median(seconds[row])
        print(
            f"{row:<20}{rate:>10.1f}{median_ratio(dense, seconds[row]):>10.3f}"
            f"{median_ratio(seconds[row], hydra):>14.3f}"
        )
    if "s2ap-1" in seconds:
        vs_dense = median_ratio(dense, seconds["s2ap-1"])
        vs_hydra = median_ratio(seconds["s2ap-1"], hydra)
        print(f"S2AP-1 / dense (throughput):      {vs_dense:.3f}  (target >= {TARGET_VS_DENSE})")
        print(f"S2AP-1 / HYDRA-cached (time):     {vs_hydra:.3f}  (target <= {TARGET_VS_HYDRA})")
    if "hydra+1pass" in seconds:
        floor = median_ratio(seconds["hydra+1pass"], hydra)
        print(f"floor: HYDRA + 1 pass / HYDRA:    {floor:.3f}  (one more forward+backward)")


if __name__ == "__main__":
    main()
