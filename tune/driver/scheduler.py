"""Early stopping: Ray Tune's ASHA on the study's first objective, baselines never stopped.

Optuna's pruners never run under Ray; ASHA-stopped trials reach Optuna as COMPLETE with their
low-budget value, which is what ASHA compared them on. Baselines are compared at every rung but
never stopped: a baseline stopped early has no final number.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune.study.baselines import BASELINE_KEY
from tune.study.settings import ObjectiveConfig, SchedulerConfig

__all__ = ["BaselineAwareASHA", "make_scheduler"]


class BaselineAwareASHA(ASHAScheduler):
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
    FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    if cfg.kind == "none":
        return FIFOScheduler()
    return BaselineAwareASHA(
        time_attr=cfg.time_attr,
        metric=objective.metric,
        mode=objective.mode,
        max_t=cfg.max_t or max_t,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        brackets=cfg.brackets,
    )
