"""Images/s of one adversarial prune step, against dense adversarial training.

Rows (PGD-k examples + one training update per batch, the same synthetic batch for all):

- dense:            PGD adversarial training of the dense model (the ceiling)
- hydra-per-forward: HYDRA with the top-k mask recomputed in every forward pass (what the
                    HYDRA/HARP reference code does)
- hydra-cached:     HYDRA with the mask cached between score updates (s2ap's masked layers)
- s2ap-1, s2ap-3:   S2AP with 1 and 3 ascent steps on the same PGD examples

Rows are interleaved update by update (dense, hydra, ..., dense, hydra, ...) and the median over
rounds is printed, with each row's ratio to the dense update of the same round, so a noisy
shared machine shifts all rows together.

    python benchmarks/prune_step.py [--arch small_cnn] [--batch-size 128] [--image-size 32]
        [--steps 10] [--iters 1] [--rounds 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from s2ap.adversarial import AttackSettings, PGDObjective
from s2ap.masking import ScoreMasking
from s2ap.models import create_model
from s2ap.perturbation import S2AP


def build(arch: str, channels: int, size: int, classes: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(
        arch,
        num_classes=classes,
        in_channels=channels,
        image_size=size,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )
    return model.to(device)


def make_step(kind: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One training update of the given kind on a fixed batch, as a zero-argument callable."""
    model = build(args.arch, 3, args.image_size, 10, device)
    settings = AttackSettings(eps=8 / 255, step_size=2 / 255, steps=args.steps)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    if kind == "dense":
        params = list(model.parameters())
        update = S2AP(
            torch.optim.SGD(params, lr=0.01, momentum=0.9), [], rho=0.0, perturbation="none"
        )
    else:
        masking = ScoreMasking(model, sparsity=0.9)
        masking.set_stage("prune")
        opt = torch.optim.SGD(masking.trainable_parameters(), lr=0.1, momentum=0.9)
        perturbation, steps = {
            "hydra-per-forward": ("none", 1),
            "hydra-cached": ("none", 1),
            "s2ap-1": ("score", 1),
            "s2ap-3": ("score", 3),
        }[kind]
        update = S2AP(opt, masking.scores(), rho=0.1, ascent_steps=steps, perturbation=perturbation)
        if kind == "hydra-per-forward":
            # Reference behaviour: every forward pass re-selects the top-k of every layer.
            for layer in masking.layers.values():
                layer.register_forward_pre_hook(lambda *_: masking.invalidate())
    objective = PGDObjective(model, settings)
    model.train()

    def step() -> None:
        x_adv = objective.examples(x, y)

        def closure() -> torch.Tensor:
            update.zero_grad()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            loss.backward()
            return loss

        update.step(closure)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--iters", type=int, default=1, help="timed updates per row and round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kinds = ["dense", "hydra-per-forward", "hydra-cached", "s2ap-1", "s2ap-3"]
    steps = {k: make_step(k, args, device) for k in kinds}
    for step in steps.values():  # warm-up: allocator, thread pools, first mask
        step()
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    ratios: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        round_rates = {}
        for kind, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            round_rates[kind] = args.iters * args.batch_size / (time.perf_counter() - start)
        for kind in kinds:
            rates[kind].append(round_rates[kind])
            ratios[kind].append(round_rates[kind] / round_rates["dense"])
    print(
        f"# {args.arch}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"PGD-{args.steps}, sparsity 0.9, device {device}, threads {torch.get_num_threads()}, "
        f"median of {args.rounds} rounds x {args.iters} updates"
    )
    print(f"{'step':<20}{'images/s':>10}{'x dense':>10}")
    for kind in kinds:
        print(
            f"{kind:<20}{statistics.median(rates[kind]):>10.1f}"
            f"{statistics.median(ratios[kind]):>10.3f}"
        )


if __name__ == "__main__":
    main()
