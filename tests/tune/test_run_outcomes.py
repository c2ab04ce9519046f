"""How a trial's MLflow run ends (:data:`tune.trial.recorder.OUTCOMES`): stopped early is a
normal end (FINISHED), only an error is FAILED, KILLED is for runs really killed; and how the
driver settles the runs Tune ended without the Trainable (:mod:`tune.driver.reconcile`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tracking.runs import StudyTracker
from tune.driver.reconcile import close_dangling_runs, kill_interrupted_runs
from tune.trial.recorder import OUTCOMES, TrialRecorder


def _row(trial_id: str, state: str, completed: bool = False) -> dict[str, Any]:
    """The fields of a :class:`tune.results.trials.TrialRow` the reconciliation reads."""
    return {"trial_id": trial_id, "state": state, "completed": completed}


@pytest.fixture
def study(tmp_path: Path) -> StudyTracker:
    tracker = StudyTracker(None, "outcomes", study_config={}, storage_root=tmp_path / "store")
    tracker.start()
    return tracker


def _open(study: StudyTracker, trial_id: str) -> TrialRecorder:
    return TrialRecorder.open(study.trial_context(), trial_id, {"seed": 0}, {})


def _ends(study: StudyTracker) -> dict[str, tuple[str, str | None]]:
    """trial id -> (run status, outcome tag)."""
    return {t["trial_id"]: (t["status"], t["tags"].get("s2ap.outcome")) for t in study.trials()}


def test_the_recorder_ends_a_run_by_its_outcome(study: StudyTracker) -> None:
    assert OUTCOMES == {
        "completed": "FINISHED",
        "stopped_early": "FINISHED",
        "error": "FAILED",
        "interrupted": "KILLED",
        "orphaned": "KILLED",
    }
    _open(study, "done").finish("completed")
    _open(study, "asha").finish("stopped_early")
    failed = _open(study, "bad")
    failed.finish("error", error=ValueError("diverged"))
    failed.finish("completed")  # only the first call counts
    with pytest.raises(ValueError, match="stopped_early"):
        _open(study, "typo").finish("KILLED")  # a status is not an outcome
    ends = _ends(study)
    assert ends["done"] == ("FINISHED", "completed")
    assert ends["asha"] == ("FINISHED", "stopped_early")
    assert ends["bad"] == ("FAILED", "error")
    run = next(t for t in study.trials() if t["trial_id"] == "bad")
    assert run["tags"]["s2ap.error"] == "ValueError: diverged"


def test_the_driver_settles_runs_tune_ended_and_interrupted_ones(study: StudyTracker) -> None:
    for trial_id in ("crashed", "lost", "stopped", "orphan", "again"):
        _open(study, trial_id)  # RUNNING: their Trainables never ended them
    _open(study, "fine").finish("completed")
    client = MlflowClient(study.tracking_uri)
    again = next(t for t in study.trials() if t["trial_id"] == "again")
    client.set_tag(again["run_id"], "s2ap.outcome", "interrupted")  # an earlier launch's
    client.set_terminated(again["run_id"], "KILLED")
    rows = [
        _row("crashed", "ERROR"),
        _row("lost", "TERMINATED", completed=True),
        _row("stopped", "TERMINATED"),
        _row("again", "TERMINATED", completed=True),
        _row("fine", "TERMINATED", completed=True),
    ]
    assert close_dangling_runs(study, rows) is not None
    ends = _ends(study)
    assert ends["crashed"] == ("FAILED", "error")
    assert ends["lost"] == ("FINISHED", "completed")
    assert ends["stopped"] == ("FINISHED", "stopped_early")
    assert ends["again"] == ("FINISHED", "completed")
    assert ends["fine"] == ("FINISHED", "completed")
    assert ends["orphan"] == ("KILLED", "orphaned")  # a trial Tune's record does not know


def test_an_interrupt_leaves_the_unfinished_trials_killed(study: StudyTracker) -> None:
    # Tune stopped the actors of an interrupted study: their clean-up ended the runs as if
    # the scheduler had stopped them. The driver knows better.
    _open(study, "paused").finish("stopped_early")
    _open(study, "running")  # an actor that never cleaned up
    _open(study, "done").finish("completed")
    _open(study, "asha").finish("stopped_early")
    rows = [
        _row("paused", "PAUSED"),
        _row("running", "RUNNING"),
        _row("done", "RUNNING"),  # completed, but not yet in Tune's snapshot
        _row("asha", "TERMINATED"),
    ]
    assert kill_interrupted_runs(study, rows) == 2
    ends = _ends(study)
    assert ends["paused"] == ends["running"] == ("KILLED", "interrupted")
    assert ends["done"] == ("FINISHED", "completed")
    assert ends["asha"] == ("FINISHED", "stopped_early")
