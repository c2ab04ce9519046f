"""Where a study's time goes: a light, always-on record of the launch steps and of each epoch.

The driver times its steps (Ray start, the MLflow study run, the dense model, the Tuner, the
fit, the result reading, the test evaluation, the summary, Ray's shutdown) with a
:class:`StepTimes`; a trial times its set-up (the imports its worker paid before the set-up
began, the dataset, the dense model, the pipelines, its MLflow run) and, per epoch, its
training and validation, its MLflow writes and its checkpoint, and reports them under
:data:`TIMING_KEY` in its results. :func:`study_timings` puts both together as the flat
``timings`` section of ``summary.json`` (seconds; ``benchmarks/service_overhead.py`` prints it).

Timing costs a clock read per step: nothing is measured twice and nothing waits for it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TIMING_KEY",
    "StepTimes",
    "driver_costs",
    "epoch_timings",
    "process_start_time",
    "study_timings",
    "trial_timings",
]

#: Key of a trial result's timing record (``{"step_s": ..., "setup": {...}, ...}``).
TIMING_KEY = "timing"
#: What a trial times of each epoch (``<part>_s`` in its timing record).
_EPOCH_PARTS = ("step", "log", "end", "checkpoint")


def process_start_time(pid: int | str = "self") -> float | None:
    """When this process started (``time.time()`` scale), or ``None`` where ``/proc`` is not.

    The time before the first line of the service ran (the interpreter, the imports, for a Ray
    worker its own start-up) is only seen this way.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # Field 22 (starttime, clock ticks after boot); the name field may hold spaces.
    ticks = float(stat[stat.rindex(")") + 2 :].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")


class StepTimes(dict[str, float]):
    """Seconds per named step (``<name>_s``), in the order the steps first ran."""

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``<name>_s`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self[key] = self.get(key, 0.0) + time.perf_counter() - start

    def since(self, name: str, start: float | None) -> None:
        """``<name>_s``: from ``start`` (``time.time()`` scale) to now; nothing if unknown."""
        if start is not None:
            self[f"{name}_s"] = time.time() - start


def driver_costs(costs: Mapping[str, float]) -> dict[str, float]:
    """The driver's seconds during the search, split: ``driver/sampler_s`` (Optuna's draws and
    tells), ``driver/bookkeeping_s`` (the searcher wrapper: baselines, dedup, its state) and
    ``driver/ray_s`` (the rest of the driver's CPU time: Ray Tune's loop, scheduler, callbacks,
    loggers). Empty when the search did not measure them (a resumed study)."""
    if "cpu_s" not in costs or "sampler_s" not in costs:
        return {}
    sampler, book = costs.get("sampler_s", 0.0), costs.get("bookkeeping_s", 0.0)
    return {
        "driver/sampler_s": sampler,
        "driver/bookkeeping_s": book,
        "driver/ray_s": max(0.0, costs["cpu_s"] - sampler - book),
    }


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_timings(results: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Per epoch of one trial (from its 2nd result on): the split of the time from the previous
    result to this one into ``step`` (training + validation), ``log`` (MLflow), ``end`` (the
    last epoch's masks, weights and test numbers), ``checkpoint`` (the trial's write of the
    previous epoch's checkpoint) and ``ray`` (the rest: Ray's own handling of the result and
    of the checkpoint)."""
    out = []
    for prev, cur in itertools.pairwise(results):
        timing = cur.get(TIMING_KEY) or {}
        if "step_s" not in timing or "result_time" not in prev:
            continue
        split = {k: float(timing.get(f"{k}_s", 0.0)) for k in _EPOCH_PARTS}
        gap = float(cur["result_time"]) - float(prev["result_time"])
        out.append({"epoch": gap, **split, "ray": gap - sum(split.values())})
    return out


def trial_timings(experiment_dir: str | Path) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The set-up of the study's first trial (``TIMING_KEY``/``setup`` of its first result,
    plus when it began) and every trial's per-epoch split (:func:`epoch_timings`)."""
    trials = [_results(d) for d in sorted(Path(experiment_dir).glob("trial_*"))]
    trials = [r for r in trials if r]
    epochs = [e for results in trials for e in epoch_timings(results)]
    if not trials:
        return {}, epochs
    first = min(trials, key=lambda r: float(r[0].get("trial_start_time", 0.0)))
    setup = dict((first[0].get(TIMING_KEY) or {}).get("setup") or {})
    if "trial_start_time" in first[0]:
        setup["start_time"] = float(first[0]["trial_start_time"])
    return setup, epochs


def study_timings(
    driver: Mapping[str, float], experiment_dir: str | Path, fit_start: float | None
) -> dict[str, float]:
    """The ``timings`` section of ``summary.json``: the driver's steps, then the first
    trial's set-up (``trial_setup/*``) and the median per-epoch split (``epoch/*``)."""
    out = dict(driver)
    setup, epochs = trial_timings(experiment_dir)
    start = setup.pop("start_time", None)
    if start is not None and fit_start is not None:
        out["fit_start_to_first_trial_setup_s"] = start - fit_start
    out.update({f"trial_setup/{k}": float(v) for k, v in setup.items()})
    if epochs:
        out["epoch/count"] = float(len(epochs))
        for key in ("epoch", "step", "log", "checkpoint", "ray"):
            out[f"epoch/{key}_s"] = statistics.median(e[key] for e in epochs)
        ends = [e["end"] for e in epochs if e["end"] > 0]  # once per trial, at its last epoch
        if ends:
            out["trial_end_s"] = statistics.median(ends)
    return {k: round(v, 4) for k, v in out.items()}
