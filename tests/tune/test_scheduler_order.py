"""The study's schedulers start the newest pending trial first (tune.driver.scheduler): a freed
actor goes to a trial that has none, never to one whose actor is still starting."""

from __future__ import annotations

from typing import Any

import pytest
from ray import tune
from ray.tune.experiment import Trial

from tune.driver.scheduler import make_scheduler
from tune.study.settings import ObjectiveConfig, SchedulerConfig

pytestmark = pytest.mark.ray


class _Trials:
    """What a scheduler reads of Tune's controller here: its trials, oldest first."""

    def __init__(self, *statuses: str) -> None:
        tune.register_trainable("s2ap_scheduler_probe", lambda config: None)
        self.trials = []
        for i, status in enumerate(statuses):
            trial = Trial("s2ap_scheduler_probe", config={}, trial_id=f"t{i}", stub=True)
            trial.status = status
            self.trials.append(trial)

    def get_trials(self) -> list[Trial]:
        return self.trials


@pytest.fixture(params=["asha", "none"])
def scheduler(request: Any) -> Any:
    return make_scheduler(
        SchedulerConfig(kind=request.param), ObjectiveConfig(metric="val_robust_acc"), max_t=4
    )


def test_the_newest_pending_trial_goes_first(scheduler: Any) -> None:
    trials = _Trials(Trial.RUNNING, Trial.PENDING, Trial.TERMINATED, Trial.PENDING, Trial.RUNNING)
    assert scheduler.choose_trial_to_run(trials) is trials.trials[3]
    assert scheduler.choose_trial_to_run(trials) is trials.trials[3]  # idempotent, as Tune asks


def test_then_the_oldest_paused_one_then_none(scheduler: Any) -> None:
    trials = _Trials(Trial.TERMINATED, Trial.PAUSED, Trial.RUNNING, Trial.PAUSED)
    assert scheduler.choose_trial_to_run(trials) is trials.trials[1]
    assert scheduler.choose_trial_to_run(_Trials(Trial.RUNNING, Trial.TERMINATED)) is None
