"""The benchmarks' training steps: the stages' own per-batch update on one fixed batch.

Every row is built through :class:`s2ap.pipeline.Pipeline` from a run config and timed through
``TrainingStage.train_batch`` (PGD-k examples, then the update), so a benchmark measures the code
a run executes: compute settings, mask cache, S2AP closure, BatchNorm freezing.

Rows:

- ``dense``:             PGD adversarial training of the dense model (the ceiling)
- ``hydra-per-forward``: HYDRA with the top-k mask recomputed in every forward pass (what the
                         HYDRA/HARP reference code does)
- ``hydra-cached``:      HYDRA with the mask cached between score updates (s2ap's masked layers)
- ``hydra+1pass``:       HYDRA plus one more training forward/backward on the same examples and
                         nothing else: the floor of an S2AP step with one ascent step
- ``s2ap-1``, ``s2ap-3``: S2AP with 1 and 3 ascent steps on the same PGD examples
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from s2ap.config import RunConfig
from s2ap.pipeline import Pipeline, load_data
from s2ap.stages import TrainingStage

__all__ = [
    "CLOCKS",
    "ROWS",
    "Setting",
    "make_steps",
    "median",
    "median_ratio",
    "sync",
    "time_rows",
]

# row -> prune-section overrides (None: the dense pretrain stage).
ROWS: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "hydra-per-forward": {"perturbation": "none"},
    "hydra-cached": {"perturbation": "none"},
    "hydra+1pass": {"perturbation": "none"},
    "s2ap-1": {"perturbation": "score", "ascent_steps": 1},
    "s2ap-3": {"perturbation": "score", "ascent_steps": 3},
}


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: model, batch, attack, device and the ``compute:`` section."""

    arch: str = "small_cnn"
    batch_size: int = 128
    image_size: int = 32
    pgd_steps: int = 10
    sparsity: float = 0.9
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    def run_config(self, prune: dict[str, Any]) -> RunConfig:
        """Synthetic data of one batch (plus a small validation split), no augmentation."""
        return RunConfig.model_validate(
            {
                "device": self.device,
                "data": {
                    "source": "synthetic",
                    "val_size": 8,
                    "batch_size": self.batch_size,
                    "augment": "none",
                    "options": {
                        "n_train": self.batch_size + 8,
                        "n_test": 8,
                        "image_size": self.image_size,
                    },
                },
                "model": {"arch": self.arch},
                "threat": {"steps": self.pgd_steps},
                "prune": {"sparsity": self.sparsity, "warmup_epochs": 0, "rho": 0.1, **prune},
                "compute": {
                    "amp": self.amp,
                    "channels_last": self.channels_last,
                    "compile": self.compile,
                },
            }
        )


def _extra_pass_step(stage: TrainingStage, x: torch.Tensor, y: torch.Tensor) -> None:
    """``train_batch`` plus one more forward/backward of its closure (the S2AP floor)."""
    with stage.compute.autocast(x.device):
        x_adv = stage.objective.examples(x, y)
    closure = stage._closure(x, x_adv, y)
    closure()
    stage.update.step(closure)


def _invalidate_every_forward(pipeline: Pipeline) -> None:
    """Reference HYDRA behaviour: each layer re-selects its own top-k in its forward pass."""
    masking = pipeline.masking
    assert masking is not None
    for name, layer in masking.layers.items():
        layer.register_forward_pre_hook(lambda *_, name=name: masking.invalidate([name]))


def make_steps(setting: Setting, rows: Iterable[str]) -> dict[str, Callable[[], None]]:
    """One zero-argument update per row, each on its own model, all from the same weights."""
    base = setting.run_config({})
    data = load_data(base, setting.device)
    x, y = next(iter(data.train.batches(setting.batch_size)))
    dense = Pipeline(base, data=data, phases=("pretrain",))
    dense_state = {k: v.detach().clone() for k, v in dense.model.state_dict().items()}
    steps: dict[str, Callable[[], None]] = {}
    for row in rows:
        prune = ROWS[row]
        if prune is None:
            pipeline = dense
        else:
            cfg = setting.run_config(prune)
            pipeline = Pipeline(cfg, data=data, dense_state=dense_state, phases=("prune",))
            if row == "hydra-per-forward":
                _invalidate_every_forward(pipeline)
        stage = pipeline.stage
        assert stage is not None
        stage.model.train()
        if row.startswith("s2ap"):
            assert stage.update.perturbing, row
        if row == "hydra+1pass":
            steps[row] = lambda stage=stage: _extra_pass_step(stage, x, y)
        else:
            steps[row] = lambda stage=stage: stage.train_batch(x, y)
    return steps


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a host clock times the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rows(
    steps: dict[str, Callable[[], None]],
    *,
    rounds: int,
    iters: int,
    device: torch.device,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per update of every row, per round; rows interleaved update by update.

    Interleaving makes a noisy (shared) machine shift every row of a round together, so
    per-round ratios between rows stay meaningful. ``clock``: wall time by default;
    ``time.process_time`` counts this process's CPU time only (see ``CLOCKS``).
    """
    for _ in range(warmup):  # allocator, thread pools, cuDNN autotuning, the first mask
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {row: [] for row in steps}
    for _ in range(rounds):
        for row, step in steps.items():
            sync(device)
            start = clock()
            for _ in range(iters):
                step()
            sync(device)
            seconds[row].append((clock() - start) / iters)
    return seconds


#: ``--clock`` choices. ``cpu`` (process CPU time) is what a shared CPU machine can measure:
#: other processes' load stretches wall time but not this process's CPU time. Use it with one
#: thread (``--threads 1``); with more, idle-waiting threads count too.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``."""
    return median(x / y for x, y in zip(a, b))
