"""Each trial's ``result.json``: every result Ray got, kept across a restart of the trial.

Tune's :class:`~ray.tune.logger.JsonLoggerCallback` writes a trial's results on the driver, in a
staging folder that Ray copies to the study's storage only when it snapshots the experiment
(on its own period: :mod:`tune.driver.checkpoints`). When a trial restarts from a checkpoint
(its worker died, ``study.max_failures``), the callback first copies the storage's copy of the
file over the staging one, so every result since the last snapshot was lost from the file: a
trial killed at epoch 3 kept rows 3 to 7 only. :class:`ResultLog` keeps the staging file when
there is one: this driver wrote it, so it holds at least what storage holds. The storage copy
is still what a new driver starts from (``s2ap tune --resume``: a new session, no staging file).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ray.tune.logger import JsonLoggerCallback

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["ResultLog"]


class ResultLog(JsonLoggerCallback):
    """Tune's JSON logger, minus the overwrite of a trial's own newer file on a restart."""

    def _restore_from_remote(self, file_name: str, trial: Trial) -> None:
        if trial.local_path and Path(trial.local_path, file_name).is_file():
            return
        super()._restore_from_remote(file_name, trial)
