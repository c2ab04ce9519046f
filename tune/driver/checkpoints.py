"""A finished trial keeps its newest checkpoints only; a running one keeps all of them.

Ray Tune's own ``CheckpointConfig(num_to_keep=K)`` deletes a running trial's older checkpoints,
and to keep its experiment record consistent with what is left on disk it then snapshots the
whole experiment (every trial's state, the searcher's) after every K checkpoints of any trial.
With a checkpoint per epoch that snapshot ran at every epoch of every trial, and its cost grows
with the number of trials: a 1,000-trial study spent most of its driver's time there
(``benchmarks/scale.py``). So Ray keeps every checkpoint (no forced snapshots; Tune snapshots
on its own period) and :class:`PruneFinishedCheckpoints` removes a trial's older ones once the
trial has ended: disk use stays bounded by the running trials, and a finished trial's newest
``num_to_keep`` checkpoints remain (its selected model, the test evaluation, ``s2ap status``).
A failed trial keeps everything (a retry or ``--resume`` may restart it from any of them).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune.trial.checkpoint import is_complete_checkpoint

__all__ = ["PruneFinishedCheckpoints", "prune_checkpoints"]

_log = logging.getLogger(__name__)


def prune_checkpoints(trial_dir: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` complete checkpoints of a trial's folder (an
    incomplete one newer than those, still being written, is left alone); the removed."""
    folders = sorted(Path(trial_dir).glob("checkpoint_*"))
    complete = [f for f in folders if is_complete_checkpoint(f)]
    kept = set(complete[-keep:]) if keep > 0 else set()
    newest_kept = max(kept) if kept else None
    removed = []
    for folder in folders:
        if folder in kept or (newest_kept is not None and folder > newest_kept):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


class PruneFinishedCheckpoints(Callback):
    """Ray Tune callback: at a trial's end, :func:`prune_checkpoints` on its folder."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.path:
            try:
                prune_checkpoints(trial.path, self.keep)
            except OSError as exc:  # bookkeeping: never fails the study
                _log.warning("could not prune the checkpoints of %s: %s", trial, exc)
