"""Search space, Optuna searcher and trial scheduler of a study.

A search space maps a dotted path into the run config (``prune.rho``) to a distribution::

    prune.rho:          {type: loguniform, low: 0.005, high: 0.5}
    prune.ascent_steps: {type: int, low: 1, high: 3}            # inclusive bounds
    prune.perturbation: {type: choice, values: [score, random, none]}
    finetune.lr:        {type: uniform, low: 0.001, high: 0.05, step: null}

Every path is checked against :class:`s2ap.config.RunConfig` (unknown path -> error naming it and
the closest valid name) and every corner of the space is validated as a whole run config before
Ray starts, so a bound outside a field's range fails at once instead of in trial 17.

Sampling is Optuna's (TPE by default) through Ray Tune's ``OptunaSearch`` with an explicit space
of ``optuna.distributions`` and an RDB storage, so the Optuna study survives the driver and
``optuna-dashboard sqlite:////<storage_root>/optuna.db`` shows it. Early stopping is Ray's ASHA
(Optuna's pruners never run under Ray; ASHA-stopped trials reach Optuna as COMPLETE with their
low-budget value, which is what ASHA compared them on).
"""

from __future__ import annotations

import difflib
import itertools
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from s2ap.config import ConfigError, RunConfig, format_validation_error, set_dotted

__all__ = [
    "FIXED_PATHS",
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "ObjectiveConfig",
    "SchedulerConfig",
    "SearchSpace",
    "SearcherConfig",
    "check_run_config_path",
    "make_scheduler",
    "make_searcher",
    "parse_search_space",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# Parameter distributions


class FloatParam(_Strict):
    """A float drawn uniformly (``uniform``) or log-uniformly (``loguniform``) in [low, high]."""

    type: Literal["uniform", "loguniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0.0, description="quantisation (uniform only)")

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.type == "loguniform":
            if self.low <= 0:
                raise ValueError(f"loguniform needs low > 0 (got {self.low}); use type: uniform")
            if self.step is not None:
                raise ValueError("step is not supported with loguniform; remove it")
        return self

    def distribution(self) -> Any:
        import optuna

        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.type == "loguniform", step=self.step
        )

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def grid(self) -> list[Any]:
        if self.step is None:
            raise ConfigError(
                "a float range has no grid; give it a step, or use type: choice with the values"
            )
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and self.low <= float(value) <= self.high


class IntParam(_Strict):
    """An integer in [low, high] (both inclusive), optionally log-scaled or with a step."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self

    def distribution(self) -> Any:
        import optuna

        return optuna.distributions.IntDistribution(
            self.low, self.high, log=self.log, step=self.step
        )

    def corners(self) -> list[Any]:
        return sorted({self.low, self.high})

    def grid(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )


Scalar = bool | int | float | str | None


class ChoiceParam(_Strict):
    """One of ``values`` (strings, numbers, booleans or null)."""

    type: Literal["choice"]
    values: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceParam:
        if len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        return self

    def distribution(self) -> Any:
        import optuna

        return optuna.distributions.CategoricalDistribution(tuple(self.values))

    def corners(self) -> list[Any]:
        return list(self.values)

    def grid(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)


Param = Annotated[FloatParam | IntParam | ChoiceParam, Field(discriminator="type")]

#: Paths that define the data and the dense starting point, which every trial of a study shares
#: (the dense model is built once per study): searching them would need one dense model per
#: trial. ``seed`` is searchable (it seeds the mask search and finetuning, not the dense model).
FIXED_PATHS: dict[str, str] = {
    "name": "the run name is the study's",
    "device": "the device is chosen by Ray from study.resources",
    "data.source": "all trials share one dataset",
    "data.root": "all trials share one dataset",
    "data.download": "all trials share one dataset",
    "data.val_size": "the validation split must be the same for every trial to compare them",
    "data.split_seed": "the validation split must be the same for every trial to compare them",
    "data.in_memory": "all trials share one loaded dataset per worker",
    "data.options": "all trials share one dataset",
    "model": "all trials prune the same dense model",
    "pretrain": "the dense model is pretrained once per study",
    "dense": "all trials prune the same dense model",
    "evaluate": "test-set evaluation is not a hyperparameter (see study.test_eval)",
}


# --------------------------------------------------------------------------------------------
# Checking dotted paths against RunConfig


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes in an annotation (``X``, ``X | None``, ``Literal[...] | X``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) or origin is Annotated:
        out: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            out.extend(_models_in(arg))
        return out
    return []


def check_run_config_path(path: str, *, where: str = "search_space") -> None:
    """Raise :class:`ConfigError` unless ``path`` names a field of :class:`RunConfig`.

    The message names the unknown part, the section it was looked up in, and the closest
    valid field names; a path that ends on a section (``prune``) asks for a field inside it.
    """
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ConfigError(f"{where}: {path!r}: not a dotted field path such as prune.rho")
    models: list[type[BaseModel]] = [RunConfig]
    for i, part in enumerate(parts):
        section = ".".join(parts[:i]) or "the run config"
        fields = {name: f for m in models for name, f in m.model_fields.items()}
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=3)
            hint = (
                f"; did you mean {', '.join('.'.join([*parts[:i], c]) for c in close)}?"
                if close
                else ""
            )
            raise ConfigError(
                f"{where}: {path}: unknown field {part!r} in {section} "
                f"(valid fields: {', '.join(sorted(fields))}){hint}"
            )
        inner = _models_in(fields[part].annotation)
        last = i == len(parts) - 1
        if last:
            if inner and not typing.get_origin(fields[part].annotation) and len(inner) == 1:
                raise ConfigError(
                    f"{where}: {path}: is a section, not a field; search one of its fields "
                    f"({', '.join(sorted(inner[0].model_fields))})"
                )
            return
        if not inner:
            raise ConfigError(
                f"{where}: {path}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        models = inner


def _fixed_reason(path: str) -> str | None:
    for prefix, reason in FIXED_PATHS.items():
        if path == prefix or path.startswith(prefix + "."):
            return reason
    return None


# --------------------------------------------------------------------------------------------
# The search space


class SearchSpace:
    """Validated ``{dotted path: distribution}`` of a study."""

    def __init__(self, params: Mapping[str, FloatParam | IntParam | ChoiceParam]) -> None:
        self.params = dict(params)

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    @property
    def keys(self) -> list[str]:
        return list(self.params)

    def optuna_space(self) -> dict[str, Any]:
        """``{path: optuna distribution}``; the keys are the trial config's keys."""
        return {path: p.distribution() for path, p in self.params.items()}

    def contains(self, config: Mapping[str, Any]) -> bool:
        """True when ``config`` has a value inside the space for every searched path."""
        return all(path in config and p.contains(config[path]) for path, p in self.params.items())

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter (the ``grid`` searcher's search space)."""
        out = {}
        for path, p in self.params.items():
            try:
                out[path] = p.grid()
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        return out

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def to_dict(self) -> dict[str, Any]:
        return {path: p.model_dump(exclude_none=True) for path, p in self.params.items()}

    def corner_configs(self, limit: int = 256) -> Iterator[dict[str, Any]]:
        """Every combination of extreme values (low/high, each choice), at most ``limit``.

        Beyond ``limit`` combinations, each parameter's extremes are tried one at a time (the
        others at their first value).
        """
        corners = {path: p.corners() for path, p in self.params.items()}
        total = math.prod(len(v) for v in corners.values()) if corners else 0
        if 0 < total <= limit:
            for combo in itertools.product(*corners.values()):
                yield dict(zip(corners, combo))
            return
        first = {path: values[0] for path, values in corners.items()}
        for path, values in corners.items():
            for value in values:
                yield {**first, path: value}

    def validate_against(self, base: Mapping[str, Any], where: str = "search_space") -> None:
        """Build the run config of each corner of the space; raise naming the failing field."""
        for combo in self.corner_configs():
            try:
                build_trial_config(base, combo)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in combo.items())
                raise ConfigError(
                    f"{where}: a value inside the space gives an invalid run config ({shown}):\n"
                    f"{exc}\nnarrow the range (low/high/values) of the field named above"
                ) from None


def parse_search_space(raw: Any, *, where: str = "search_space") -> SearchSpace:
    """Parse the ``search_space:`` mapping; raise :class:`ConfigError` naming the bad entry."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of dotted field paths to distributions, "
            f"e.g. prune.rho: {{type: loguniform, low: 0.005, high: 0.5}}"
        )
    params: dict[str, FloatParam | IntParam | ChoiceParam] = {}
    adapter = _param_adapter()
    for path, spec in raw.items():
        path = str(path)
        check_run_config_path(path, where=where)
        reason = _fixed_reason(path)
        if reason:
            raise ConfigError(
                f"{where}: {path}: cannot be searched ({reason}); set it in the run config "
                "sections instead, or run one study per value"
            )
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(
                f"{where}: {path}: expected {{type: uniform|loguniform|int|choice, ...}}, "
                f"got {spec!r}"
            )
        try:
            params[path] = adapter.validate_python(dict(spec))
        except ValidationError as exc:
            text = format_validation_error(exc, where)
            raise ConfigError(text.replace(f"{where}: ", f"{where}: {path}.", 1)) from None
    for a, b in itertools.permutations(params, 2):
        if b.startswith(a + "."):
            raise ConfigError(f"{where}: {a} and {b} overlap; search one or the other")
    return SearchSpace(params)


def _param_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Param)


def build_trial_config(base: Mapping[str, Any], sampled: Mapping[str, Any]) -> RunConfig:
    """The run config of one trial: the base run config with the sampled values set.

    Raises :class:`ConfigError` naming the field when the result is not a valid run config.
    """
    import copy

    raw = copy.deepcopy(dict(base))
    for path, value in sampled.items():
        set_dotted(raw, path, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "trial config")) from None


# --------------------------------------------------------------------------------------------
# Objectives, searcher, scheduler


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


def _sampler_tpe(cfg: SearcherConfig, n_objectives: int) -> Any:
    import optuna

    kw: dict[str, Any] = {"seed": cfg.seed, "multivariate": cfg.multivariate}
    if cfg.n_startup_trials is not None:
        kw["n_startup_trials"] = cfg.n_startup_trials
    return optuna.samplers.TPESampler(**kw)


def _sampler_gp(cfg: SearcherConfig, n_objectives: int) -> Any:
    import optuna

    kw: dict[str, Any] = {"seed": cfg.seed}
    if cfg.n_startup_trials is not None:
        kw["n_startup_trials"] = cfg.n_startup_trials
    return optuna.samplers.GPSampler(**kw)


def _sampler_cmaes(cfg: SearcherConfig, n_objectives: int) -> Any:
    import optuna

    kw: dict[str, Any] = {"seed": cfg.seed, "warn_independent_sampling": False}
    if cfg.n_startup_trials is not None:
        kw["n_startup_trials"] = cfg.n_startup_trials
    return optuna.samplers.CmaEsSampler(**kw)


def _sampler_random(cfg: SearcherConfig, n_objectives: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=cfg.seed)


def _sampler_nsga2(cfg: SearcherConfig, n_objectives: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=cfg.seed)


def _sampler_grid(cfg: SearcherConfig, n_objectives: int, space: SearchSpace) -> Any:
    import optuna

    return optuna.samplers.GridSampler(space.grid(), seed=cfg.seed)


def _sampler_qmc(cfg: SearcherConfig, n_objectives: int) -> Any:
    import optuna

    return optuna.samplers.QMCSampler(seed=cfg.seed, warn_independent_sampling=False)


#: searcher kind -> sampler factory (what ``study.searcher.kind`` selects).
SAMPLERS: dict[str, Callable[[SearcherConfig, int], Any]] = {
    "tpe": _sampler_tpe,
    "gp": _sampler_gp,
    "cmaes": _sampler_cmaes,
    "random": _sampler_random,
    "nsga2": _sampler_nsga2,
    "qmc": _sampler_qmc,
}
#: Samplers whose factory also needs the search space.
_SPACE_SAMPLERS: dict[str, Callable[[SearcherConfig, int, SearchSpace], Any]] = {
    "grid": _sampler_grid,
}

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
) -> None:
    """Raise :class:`ConfigError` if the searcher cannot run this study (before Ray starts)."""
    import importlib.util

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
    if cfg.kind == "grid":
        try:
            size = space.grid_size()
        except ConfigError as exc:
            raise ConfigError(f"search_space: {exc} (study.searcher.kind is grid)") from None
        if num_samples is not None and num_samples > size:
            raise ConfigError(
                f"study.num_samples: {num_samples} is more than the {size} points of the grid; "
                f"set it to {size} (every combination once)"
            )
    for i, point in enumerate(cfg.points_to_evaluate):
        missing = sorted(set(space.keys) - set(point))
        extra = sorted(set(point) - set(space.keys))
        if missing or extra:
            raise ConfigError(
                f"study.searcher.points_to_evaluate[{i}]: must give exactly the searched fields "
                f"({', '.join(space.keys)}); missing {missing}, not searched {extra}"
            )
        if not space.contains(point):
            bad = [k for k, p in space.params.items() if not p.contains(point[k])]
            raise ConfigError(
                f"study.searcher.points_to_evaluate[{i}]: {', '.join(bad)} outside the search space"
            )


def make_searcher(
    cfg: SearcherConfig,
    objectives: list[ObjectiveConfig],
    space: SearchSpace,
    *,
    study_name: str,
    storage_url: str | None,
) -> Any:
    """Ray Tune's ``OptunaSearch`` over ``space`` with the chosen sampler.

    ``metric``/``mode`` are passed here (TuneConfig's are not passed on to a searcher that has
    its own space). ``storage_url`` (``sqlite:////abs/optuna.db``) persists the Optuna study.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if cfg.kind in _SPACE_SAMPLERS:
        sampler = _SPACE_SAMPLERS[cfg.kind](cfg, len(objectives), space)
    else:
        sampler = SAMPLERS[cfg.kind](cfg, len(objectives))
    storage = optuna.storages.RDBStorage(storage_url) if storage_url else None
    metric: str | list[str]
    mode: str | list[str]
    if len(objectives) == 1:
        metric, mode = objectives[0].metric, objectives[0].mode
    else:
        metric = [o.metric for o in objectives]
        mode = [o.mode for o in objectives]
    return OptunaSearch(
        space=space.optuna_space(),
        metric=metric,
        mode=mode,
        sampler=sampler,
        study_name=study_name,
        storage=storage,
        points_to_evaluate=[dict(p) for p in cfg.points_to_evaluate] or None,
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
    """The Ray Tune scheduler for ``cfg`` (ASHA on the first objective), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.kind == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=cfg.time_attr,
        metric=objective.metric,
        mode=objective.mode,
        max_t=cfg.max_t or max_t,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        brackets=cfg.brackets,
    )
