"""One definition of the best trial: rows read back from a real Tune experiment, a tie on the
objective, and the summary, ``s2ap status`` and the study run's tag all picking the smaller id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.tune.conftest import write_study
from tracking.client import TAG_BEST_TRIAL_ID
from tune.cli import main
from tune.results.status import study_status
from tune.results.summary import build_summary, record_summary, write_summary
from tune.results.trials import TrialRow, best_trial, read_trial_rows
from tune.study.file import Study, load_study

#: prune.rho -> (val_robust_acc, epochs reported). Two complete trials tie; a better one stops.
PLAN = {0.1: (0.5, 2), 0.2: (0.5, 2), 0.3: (0.9, 1)}


def _fixed_trial(config: dict[str, Any]) -> None:
    """Reports what PLAN says; the higher the trial id, the *earlier* it claims to finish (so
    a rule "first to finish wins" would pick the other of the tied trials)."""
    from ray import tune

    acc, epochs = PLAN[config["prune.rho"]]
    n = int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])
    for epoch in range(1, epochs + 1):
        tune.report({"val_robust_acc": acc, "epoch": epoch, "result_time": 1000.0 - n})


def _run_fixed_experiment(study: Study) -> None:
    """A real Tune experiment in the study's folder (what ``s2ap status`` reads)."""
    from ray import tune

    tune.Tuner(
        _fixed_trial,
        param_space={"prune.rho": tune.grid_search(sorted(PLAN))},
        run_config=tune.RunConfig(name=study.name, storage_path=str(study.storage_root), verbose=0),
    ).fit()


@pytest.mark.ray
def test_a_tie_goes_to_the_smaller_trial_id_everywhere(
    tmp_path: Path, ray_local: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_study(
        tmp_path, {"prune.epochs": 1, "prune.warmup_epochs": 0, "finetune.epochs": 1}
    )
    study = load_study(path)
    assert study.epochs_per_trial == 2
    _run_fixed_experiment(study)

    rows = read_trial_rows(study)
    assert len(rows) == 3 and all(r["state"] == "TERMINATED" for r in rows)
    tied = sorted(r["trial_id"] for r in rows if r["completed"])
    assert len(tied) == 2
    stopped = [r for r in rows if not r["completed"]]
    assert [r["metrics"]["val_robust_acc"] for r in stopped] == [0.9]  # better, but not a result
    first_to_finish = min((r for r in rows if r["completed"]), key=lambda r: r["finished_at"])
    assert first_to_finish["trial_id"] == tied[1]  # the tie is not decided by finishing order

    best = best_trial(study, rows)
    assert best is not None and best["trial_id"] == tied[0]
    assert study_status(study)["best"]["trial_id"] == tied[0]
    assert main(["status", str(path)]) == 0
    assert f"best trial: {tied[0]} (val_robust_acc max = 0.5)" in capsys.readouterr().out

    # The summary and the study run's tag carry the same trial.
    from mlflow.tracking import MlflowClient

    from tracking.runs import StudyTracker

    summary = build_summary(
        study, tracking_uri="unused", rows=rows, fit_wall_s=0.0, best=best, test=None
    )
    assert summary["best"]["trial_id"] == tied[0]
    assert summary["counts"] == "3 trials: 2 completed, 1 stopped early, 0 failed"
    write_summary(study, summary)
    tracker = StudyTracker(None, study.name, study_config={}, storage_root=study.storage_root)
    tracker.start()
    record_summary(tracker, study, summary)
    tracker.finish("FINISHED")
    run = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.data.tags[TAG_BEST_TRIAL_ID] == tied[0]
    assert run.data.metrics["best/val_robust_acc"] == 0.5


def _row(trial_id: str, acc: float | None, *, completed: bool = True) -> TrialRow:
    return TrialRow(
        trial_id=trial_id,
        state="TERMINATED",
        epochs=4 if completed else 1,
        completed=completed,
        config={},
        metrics={"val_robust_acc": acc, "sharpness": 0.1},
        checkpoint=None,
        finished_at=None,
        error=None,
    )


def test_best_trial_ranks_objectives_in_order_then_the_trial_id(tmp_path: Path) -> None:
    study = load_study(
        write_study(
            tmp_path,
            {
                "study.objectives": [
                    {"metric": "val_robust_acc", "mode": "max"},
                    {"metric": "sharpness", "mode": "min"},
                ]
            },
        )
    )
    rows = [
        _row("b_00002", 0.6),
        _row("b_00001", 0.6),
        _row("b_00003", 0.9, completed=False),
        _row("b_00000", None),
    ]
    assert best_trial(study, rows)["trial_id"] == "b_00001"
    rows[0]["metrics"]["sharpness"] = 0.05  # the second objective breaks the tie first
    assert best_trial(study, rows)["trial_id"] == "b_00002"
    assert best_trial(study, [_row("c", None), _row("d", 0.9, completed=False)]) is None
