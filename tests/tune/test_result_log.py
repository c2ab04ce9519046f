"""A trial's ``result.json`` keeps every result across a restart from a checkpoint.

Real Ray objects in a local Ray runtime: a trial with its storage under ``tmp_path``, a
storage copy of ``result.json`` older than the driver's (the experiment was last snapshotted
after epoch 1), a checkpoint, then the restart Tune does after a worker dies
(``log_trial_start`` again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ray import tune
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback

from tune.driver.result_log import ResultLog

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_module")]  # Ray's session folder


def _trial(tmp_path: Path) -> Trial:
    tune.register_trainable("s2ap_result_log_probe", lambda config: None)
    storage = StorageContext(storage_path=str(tmp_path / "storage"), experiment_dir_name="exp")
    trial = Trial("s2ap_result_log_probe", config={}, storage=storage, trial_id="t0")
    trial.init_local_path()  # what Tune does before a trial's first start
    return trial


def _rows(path: Path) -> list[int]:
    return [json.loads(line)["training_iteration"] for line in path.read_text().splitlines()]


def _restart_after_two_epochs(logger: JsonLoggerCallback, trial: Trial, tmp_path: Path) -> None:
    """Epochs 1 and 2 logged, storage snapshotted after epoch 1, checkpoint 2, restart, epoch 3."""
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, {"training_iteration": 1})
    Path(trial.path).mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(trial.local_path, "result.json"), Path(trial.path, "result.json"))
    logger.log_trial_result(2, trial, {"training_iteration": 2})
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    trial.run_metadata.checkpoint_manager.register_checkpoint(
        _TrainingResult(tune.Checkpoint.from_directory(str(checkpoint)), {})
    )
    logger.log_trial_start(trial)  # the restart
    logger.log_trial_result(3, trial, {"training_iteration": 3})
    logger.log_trial_end(trial)


def test_a_restarted_trial_keeps_the_results_since_the_last_snapshot(tmp_path: Path) -> None:
    trial = _trial(tmp_path)
    _restart_after_two_epochs(ResultLog(), trial, tmp_path)
    assert _rows(Path(trial.local_path, "result.json")) == [1, 2, 3]


def test_tunes_own_logger_loses_them(tmp_path: Path) -> None:
    """Why ResultLog exists; when this fails, Ray keeps the rows itself and ResultLog can go."""
    trial = _trial(tmp_path)
    _restart_after_two_epochs(JsonLoggerCallback(), trial, tmp_path)
    assert _rows(Path(trial.local_path, "result.json")) == [1, 3]


def test_a_new_driver_starts_from_the_storage_copy(tmp_path: Path) -> None:
    trial = _trial(tmp_path)
    _restart_after_two_epochs(ResultLog(), trial, tmp_path)
    shutil.copy(Path(trial.local_path, "result.json"), Path(trial.path, "result.json"))
    Path(trial.local_path, "result.json").unlink()  # `s2ap tune --resume`: a new session
    resumed = ResultLog()
    resumed.log_trial_start(trial)
    resumed.log_trial_result(4, trial, {"training_iteration": 4})
    resumed.log_trial_end(trial)
    assert _rows(Path(trial.local_path, "result.json")) == [1, 2, 3, 4]
