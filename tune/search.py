"""The searcher and the scheduler of a study: Optuna proposes, ASHA stops, baselines run first.

Sampling is Optuna's (TPE by default) through Ray Tune's ``OptunaSearch``, over the study's search
space as a define-by-run function (:mod:`tune.space`: arms branch into their own parameters), with
an RDB storage, so the Optuna study survives the driver and ``optuna-dashboard
sqlite:////<storage_root>/optuna.db`` shows it. :class:`tune.searcher.StudySearcher` wraps it: the
study's baselines run first, once per seed, and a drawn configuration whose effective config was
already run is not trained again. The ``grid`` searcher enqueues every point of the expanded grid
(branches included) in order.

Early stopping is Ray's ASHA (Optuna's pruners never run under Ray; ASHA-stopped trials reach
Optuna as COMPLETE with their low-budget value, which is what ASHA compared them on). Baselines
are compared at every rung but never stopped: a baseline stopped early has no final number.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from s2ap.config import ConfigError
from tune.space import (
    FIXED_PATHS,
    BranchParam,
    ChoiceParam,
    DefineByRun,
    FloatParam,
    IntParam,
    SearchSpace,
    build_trial_config,
    check_run_config_path,
    parse_search_space,
)

__all__ = [
    "FIXED_PATHS",
    "BranchParam",
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "ObjectiveConfig",
    "SchedulerConfig",
    "SearchSpace",
    "SearcherConfig",
    "build_trial_config",
    "check_run_config_path",
    "check_searcher",
    "make_scheduler",
    "make_searcher",
    "parse_search_space",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ObjectiveConfig(_Strict):
    """One objective: a metric the trials report, and whether to maximise or minimise it."""

    metric: str = "val_robust_acc"
    mode: Literal["max", "min"] = "max"


class SearcherConfig(_Strict):
    """Which Optuna sampler proposes configurations."""

    kind: Literal["tpe", "gp", "cmaes", "random", "nsga2", "qmc", "grid"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = Field(
        None, ge=0, description="random trials before the model kicks in (tpe/gp/cmaes)"
    )
    multivariate: bool = True
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="configurations to try first ({path: value})"
    )


_SINGLE_OBJECTIVE_ONLY = {"cmaes"}

#: Optional packages a sampler needs (checked before Ray starts).
SAMPLER_PACKAGES: dict[str, tuple[str, str]] = {
    "cmaes": ("cmaes", "pip install cmaes"),
    "gp": ("torch", "pip install torch"),
}


def make_sampler(cfg: SearcherConfig, space: SearchSpace) -> Any:
    """The Optuna sampler ``study.searcher.kind`` names (a registry, one line per kind).

    TPE groups parameters that appear together when the space branches (Optuna's ``group``
    option), so each arm's parameters are modelled jointly. ``grid`` enqueues every point of the
    grid instead (:func:`make_searcher`); its sampler is never consulted.
    """
    import optuna

    s = optuna.samplers
    seed = {"seed": cfg.seed}
    startup = {} if cfg.n_startup_trials is None else {"n_startup_trials": cfg.n_startup_trials}
    quiet = {"warn_independent_sampling": False}
    group = cfg.multivariate and space.has_branches
    factories: dict[str, Callable[[], Any]] = {
        "tpe": lambda: s.TPESampler(**seed, **startup, multivariate=cfg.multivariate, group=group),
        "gp": lambda: s.GPSampler(**seed, **startup),
        "cmaes": lambda: s.CmaEsSampler(**seed, **startup, **quiet),
        "random": lambda: s.RandomSampler(**seed),
        "nsga2": lambda: s.NSGAIISampler(**seed),
        "qmc": lambda: s.QMCSampler(**seed, **quiet),
        "grid": lambda: s.RandomSampler(**seed),
    }
    # TPE's ``group`` and QMC are marked experimental in Optuna 5: noise in a study's output
    # (the choice is made here, not by the user).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factories[cfg.kind]()


def check_searcher(
    cfg: SearcherConfig,
    objectives: list[ObjectiveConfig],
    space: SearchSpace,
    num_samples: int | None = None,
    baseline_trials: int = 0,
) -> None:
    """Raise :class:`ConfigError` if the searcher cannot run this study (before Ray starts)."""
    if cfg.kind in _SINGLE_OBJECTIVE_ONLY and len(objectives) > 1:
        raise ConfigError(
            f"study.searcher.kind: {cfg.kind} optimises a single objective but study.objectives "
            f"has {len(objectives)}; use tpe, gp, nsga2 or random for several objectives"
        )
    need = SAMPLER_PACKAGES.get(cfg.kind)
    if need and importlib.util.find_spec(need[0]) is None:
        raise ConfigError(
            f"study.searcher.kind: {cfg.kind} needs the {need[0]!r} package, which is not "
            f"installed ({need[1]}); or choose another searcher (tpe, random, ...)"
        )
    if not len(space):
        raise ConfigError(
            "search_space: empty; add at least one field to search, e.g. "
            "prune.rho: {type: loguniform, low: 0.005, high: 0.5}"
        )
    _check_budget(cfg, space, num_samples, baseline_trials)
    for i, point in enumerate(cfg.points_to_evaluate):
        problem = space.unmatched(point)
        if problem:
            raise ConfigError(
                f"study.searcher.points_to_evaluate[{i}]: {problem}; a point gives one value for "
                f"every field on one branch path of the search space ({', '.join(space.keys)})"
            )


def _check_budget(
    cfg: SearcherConfig, space: SearchSpace, num_samples: int | None, baseline_trials: int
) -> None:
    if num_samples is None:
        return
    if baseline_trials and num_samples <= baseline_trials:
        raise ConfigError(
            f"study.num_samples: {num_samples} trials leave none for the search after the "
            f"{baseline_trials} baseline trials (study.baselines, once per seed); raise it"
        )
    if cfg.kind == "grid":
        try:
            size = space.grid_size()
        except ConfigError as exc:
            raise ConfigError(f"search_space: {exc} (study.searcher.kind is grid)") from None
        if num_samples > size + baseline_trials:
            raise ConfigError(
                f"study.num_samples: {num_samples} is more than the {size} points of the grid"
                + (f" plus {baseline_trials} baseline trials" if baseline_trials else "")
                + f"; set it to {size + baseline_trials} (every combination once)"
            )


def make_searcher(
    cfg: SearcherConfig,
    objectives: list[ObjectiveConfig],
    space: SearchSpace,
    *,
    study_name: str,
    storage_url: str | None,
    base: Mapping[str, Any] | None = None,
    baselines: list[dict[str, Any]] | None = None,
    log_path: str | None = None,
) -> Any:
    """The study's searcher: :class:`~tune.searcher.StudySearcher` around Ray's ``OptunaSearch``.

    ``metric``/``mode`` are passed here (TuneConfig's are not passed on to a searcher that has
    its own space). ``storage_url`` (``sqlite:////abs/optuna.db``) persists the Optuna study.
    ``base`` is the study's run config (for the effective-config keys), ``baselines`` the
    baseline trial configs, ``log_path`` where skipped duplicate draws are recorded.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tune.baselines import EffectiveKey
    from tune.searcher import StudySearcher

    storage = optuna.storages.RDBStorage(storage_url) if storage_url else None
    metric: str | list[str]
    mode: str | list[str]
    if len(objectives) == 1:
        metric, mode = objectives[0].metric, objectives[0].mode
    else:
        metric = [o.metric for o in objectives]
        mode = [o.mode for o in objectives]
    points = [dict(p) for p in cfg.points_to_evaluate]
    if cfg.kind == "grid":
        points += space.grid_points()
    optuna_search = OptunaSearch(
        space=DefineByRun(space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(cfg, space),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=points or None,
    )
    return StudySearcher(
        optuna_search,
        baselines=baselines or [],
        effective_key=EffectiveKey(base or {}),
        log_path=log_path,
    )


class SchedulerConfig(_Strict):
    """Early stopping: ``asha`` (asynchronous successive halving) or ``none`` (run every trial).

    ``max_t`` defaults to the number of epochs a trial runs (prune + finetune); ``time_attr``
    ``training_iteration`` counts epochs (one Tune iteration = one epoch of every seed).
    """

    kind: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    time_attr: str = "training_iteration"
    max_t: int | None = Field(None, ge=1)
    brackets: int = Field(1, ge=1)


def make_scheduler(cfg: SchedulerConfig, objective: ObjectiveConfig, max_t: int) -> Any:
    """The Ray Tune scheduler for ``cfg`` (ASHA on the first objective, baselines exempt), or
    FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    if cfg.kind == "none":
        return FIFOScheduler()
    from tune.searcher import BaselineAwareASHA

    return BaselineAwareASHA(
        time_attr=cfg.time_attr,
        metric=objective.metric,
        mode=objective.mode,
        max_t=cfg.max_t or max_t,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        brackets=cfg.brackets,
    )
