"""Early stopping: Ray Tune's ASHA on the study's first objective, baselines never stopped.

Optuna's pruners never run under Ray; ASHA-stopped trials reach Optuna as COMPLETE with their
low-budget value, which is what ASHA compared them on. Baselines are compared at every rung but
never stopped: a baseline stopped early has no final number.

Both schedulers start the newest pending trial first (:class:`NewestPendingFirst`): with reused
actors, Tune gives a freed actor to the trial its scheduler picks and kills the actor that
trial was still starting. Tune's own order (oldest pending first) picks a trial whose actor is
still starting whenever trials end faster than a worker process starts (short trials, a busy
machine), so those actors never finish starting and the study runs with the actors that were
ready when its first trial ended: 3-4 of 8 slots in ``benchmarks/scale.py`` (128 trials x 8),
with every killed start's imports spent for nothing. The newest pending trial has no actor yet:
the freed actor takes it, and the starting ones finish and join.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from tune.study.baselines import BASELINE_KEY
from tune.study.settings import ObjectiveConfig, SchedulerConfig

__all__ = ["BaselineAwareASHA", "NewestFirstFIFO", "NewestPendingFirst", "make_scheduler"]


class NewestPendingFirst:
    """``choose_trial_to_run``: the newest pending trial, then the oldest paused one (see the
    module docstring for why not Tune's oldest pending)."""

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        for trial in reversed(trials):
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED:
                return trial
        return None


class NewestFirstFIFO(NewestPendingFirst, FIFOScheduler):
    """Tune's FIFO scheduler (no early stopping), newest pending trial first."""


class BaselineAwareASHA(NewestPendingFirst, ASHAScheduler):
    """ASHA that records baselines at every rung (they set the bar for the searched trials) but
    never stops one early: a baseline stopped early has no final number to compare with."""

    def __init__(self, *, time_attr: str, max_t: int, **kwargs: Any) -> None:
        super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
        self.budget = (time_attr, max_t)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        time_attr, max_t = self.budget
        early = result.get(time_attr, max_t) < max_t
        if action == TrialScheduler.STOP and early and trial.config.get(BASELINE_KEY):
            return TrialScheduler.CONTINUE
        return action


def make_scheduler(cfg: SchedulerConfig, objective: ObjectiveConfig, max_t: int) -> Any:
    """The Ray Tune scheduler for ``cfg`` (ASHA on the first objective, baselines exempt), or
    FIFO; newest pending trial first."""
    if cfg.kind == "none":
        return NewestFirstFIFO()
    return BaselineAwareASHA(
        time_attr=cfg.time_attr,
        metric=objective.metric,
        mode=objective.mode,
        max_t=cfg.max_t or max_t,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        brackets=cfg.brackets,
    )
