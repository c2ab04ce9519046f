"""The ``study:`` block of a study file: typed, validated settings (Ray-free).

What a study runs (:class:`StudySettings`): how many trials, which Optuna sampler proposes them
(:class:`SearcherConfig`), what they optimise (:class:`ObjectiveConfig`), how ASHA stops them
(:class:`SchedulerConfig`), what each trial reserves, how it checkpoints and retries, and the
baselines. :func:`check_searcher` refuses a searcher that cannot run the study before Ray
starts. The searcher and scheduler objects themselves are built in the driver
(:mod:`tune.driver.searcher`, :mod:`tune.driver.scheduler`).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from s2ap.config import ConfigError, Count, Flag, StrictSection
from tune.study.space import SearchSpace

__all__ = [
    "REPORTED_METRICS",
    "CheckpointSettings",
    "ObjectiveConfig",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearcherConfig",
    "StudySettings",
    "TestEvalConfig",
    "check_searcher",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Strict(StrictSection):
    # allow_inf_nan=False: YAML's .inf/.nan parse as floats and would pass a `gt=0` bound.
    # Counts and flags are strict (Count, Flag): `true` is no count, `1` no flag.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ObjectiveConfig(_Strict):
    """One objective: a metric the trials report, and whether to maximise or minimise it."""

    metric: str = "val_robust_acc"
    mode: Literal["max", "min"] = "max"


class SearcherConfig(_Strict):
    """Which Optuna sampler proposes configurations."""

    kind: Literal["tpe", "gp", "cmaes", "random", "nsga2", "qmc", "grid"] = "tpe"
    seed: Count | None = 0
    n_startup_trials: Count | None = Field(
        None, ge=0, description="random trials before the model kicks in (tpe/gp/cmaes)"
    )
    multivariate: Flag = True
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="configurations to try first ({path: value})"
    )


_SINGLE_OBJECTIVE_ONLY = {"cmaes"}

#: Optional packages a sampler needs (checked before Ray starts).
SAMPLER_PACKAGES: dict[str, tuple[str, str]] = {
    "cmaes": ("cmaes", "pip install cmaes"),
    "gp": ("torch", "pip install torch"),
}


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


class SchedulerConfig(_Strict):
    """Early stopping: ``asha`` (asynchronous successive halving) or ``none`` (run every trial).

    ``max_t`` defaults to the number of epochs a trial runs (prune + finetune); ``time_attr``
    ``training_iteration`` counts epochs (one Tune iteration = one epoch of every seed).
    """

    kind: Literal["asha", "none"] = "asha"
    grace_period: Count = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    time_attr: str = "training_iteration"
    max_t: Count | None = Field(None, ge=1)
    brackets: Count = Field(1, ge=1)


#: Metrics every trial reports (Ray result keys); objectives must be among them. Prune-phase
#: metrics keep their last prune-epoch value during finetune epochs, so they can be objectives.
REPORTED_METRICS = frozenset(
    {
        "val_robust_acc",
        "val_clean_acc",
        "best_val_robust_acc",
        "train_robust_loss",
        "mask_hamming",
        "sharpness",
        "sparsity",
        "epoch_time_s",
        "images_per_s",
        "val_robust_acc_std",
        "val_clean_acc_std",
        "mask_hamming_seeds",
    }
)


class ResourcesConfig(_Strict):
    """What one trial reserves. ``gpu`` may be a fraction (< 1): trials then share a GPU and each
    caps its CUDA memory to that share (``torch.cuda.set_per_process_memory_fraction``)."""

    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU per trial must be a whole number (e.g. 2)")
        return v


class TestEvalConfig(_Strict):
    """Test-set evaluation of the best trial's selected model after the search.

    Unset fields keep the run config's ``evaluate:`` section.
    """

    __test__ = False  # not a pytest class

    enabled: Flag = True
    every_trial: Flag = Field(
        False,
        description="also evaluate every completed trial's selected model on the test set at "
        "its end (logged to MLflow only, never reported to Optuna/ASHA): for comparison pages",
    )
    autoattack: Flag | None = None
    n_examples: Count | None = Field(None, ge=1)
    pgd_steps: Count | None = Field(None, ge=1)


class CheckpointSettings(_Strict):
    """How often trials checkpoint (epochs), and how many of its newest checkpoints a trial
    keeps once it has ended (a running trial keeps all: :mod:`tune.driver.checkpoints`)."""

    frequency: Count = Field(1, ge=1)
    num_to_keep: Count = Field(1, ge=1)


class StudySettings(_Strict):
    """The ``study:`` block."""

    name: str | None = None
    description: str | None = Field(
        None,
        max_length=500,
        description="what the study is, in words (e.g. the data and the machine): recorded "
        "with the study run (param study.description) and quoted by `s2ap report`",
    )
    storage_root: str = "./studies"
    num_samples: Count = Field(8, ge=1)
    max_concurrent_trials: Count | None = Field(None, ge=1)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig()], min_length=1
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    trainable: Literal["pipeline", "prune"] = "pipeline"
    tracking_uri: str | None = None
    seeds: list[Count] | None = Field(
        None,
        min_length=1,
        description="replicates: each sampled configuration runs once per seed inside one "
        "trial and reports the mean (and the spread) over seeds",
    )
    allow_cpu_fallback: Flag = False
    test_eval: TestEvalConfig = Field(default_factory=TestEvalConfig)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    max_failures: Count = Field(
        2,
        ge=0,
        description="retries of a trial whose worker died (node lost, OOM-killed): each resumes "
        "from the trial's last checkpoint, so a lost worker costs at most checkpoint.frequency "
        "epochs",
    )
    time_budget_s: float | None = Field(None, gt=0)
    reuse_actors: Flag = True
    baselines: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fixed configurations ({dotted path: value}) run first, once per seed of "
        "the search space, never sampled: the references the searched trials are compared with",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(
                "use letters, digits, '_', '.' or '-' (it names a folder, an MLflow experiment "
                "and an Optuna study)"
            )
        return v

    @field_validator("storage_root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        if "://" in v and not v.startswith("file://"):
            raise ValueError(
                "must be a path (local, or a shared mount such as NFS at the same path on every "
                "node); object storage URIs are not supported for the study's databases"
            )
        return v.removeprefix("file://")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(s < 0 for s in v):
                raise ValueError("seeds must be non-negative integers")
            if len(set(v)) != len(v):
                raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        seen = set()
        for o in v:
            if o.metric.startswith("test_"):
                raise ValueError(
                    f"{o.metric!r}: the test set is never used for selection; use a validation "
                    "metric such as val_robust_acc"
                )
            if o.metric not in REPORTED_METRICS:
                known = ", ".join(sorted(REPORTED_METRICS))
                raise ValueError(f"unknown metric {o.metric!r}; trials report {known}")
            if o.metric in seen:
                raise ValueError(f"metric {o.metric!r} is listed twice")
            seen.add(o.metric)
        return v

    @model_validator(mode="after")
    def _cross(self) -> StudySettings:
        multi = [
            o.metric
            for o in self.objectives
            if o.metric.endswith("_std") or o.metric == "mask_hamming_seeds"
        ]
        if multi and not (self.seeds and len(self.seeds) > 1):
            raise ValueError(
                f"objectives {multi} need several seeds; set study.seeds (e.g. [0, 1, 2])"
            )
        return self
