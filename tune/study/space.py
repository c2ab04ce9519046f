"""The search space of a study: distributions over run-config fields, conditional on the arm.

A search space maps a dotted path into the run config (``prune.rho``) to a distribution::

    prune.rho:          {type: loguniform, low: 0.005, high: 0.5}
    prune.ascent_steps: {type: int, low: 1, high: 3}            # inclusive bounds
    prune.sparsity:     {type: choice, values: [0.9, 0.95]}
    finetune.lr:        {type: uniform, low: 0.001, high: 0.05, step: null}

A choice may instead carry **branches**: each value has its own sub-space, searched only when that
value is drawn. The parameters S2AP has depend on its arm, so the arm is a branching choice::

    prune.perturbation:
      type: choice
      branches:
        score:  {prune.rho: {type: loguniform, low: 0.005, high: 0.5},
                 prune.ascent_steps: {type: int, low: 1, high: 3}}
        random: {prune.rho: {type: loguniform, low: 0.005, high: 0.5}}

A configuration with nothing left to search (HYDRA: ``prune.perturbation: none``) is not a branch
but a baseline (``study.baselines``), run once per seed. Branches nest.

Validated before Ray starts: every path against :class:`s2ap.config.RunConfig` (an unknown one
gets the closest valid names), fields every trial shares cannot be searched, every corner of the
space must build a valid run config, and no searched field may be one the drawn arm ignores
(:func:`s2ap.arms.ignored_fields`): a trial would spend its budget on a value that changes nothing.

Sampling is Optuna's define-by-run API (:class:`DefineByRun`): the space suggests its parameters
in order, and a branching choice suggests its branch's parameters only after its value is drawn.
The same path in sibling branches is one Optuna parameter, so its kind (and, for a choice, its
values) must agree; ranges may differ.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from s2ap.arms import ignored_fields
from s2ap.config import (
    ConfigError,
    Count,
    Flag,
    Number,
    RunConfig,
    format_validation_error,
    set_dotted,
)

__all__ = [
    "FIXED_PATHS",
    "BranchParam",
    "ChoiceParam",
    "DefineByRun",
    "FloatParam",
    "IntParam",
    "SearchSpace",
    "build_trial_config",
    "check_run_config_path",
    "parse_search_space",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------------------------
# Leaf distributions


class FloatParam(_Strict):
    """A float drawn uniformly (``uniform``) or log-uniformly (``loguniform``) in [low, high]."""

    type: Literal["uniform", "loguniform"]
    low: Number
    high: Number
    step: Number | None = Field(None, gt=0.0, description="quantisation (uniform only)")

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

    @property
    def log(self) -> bool:
        return self.type == "loguniform"

    def suggest(self, trial: Any, path: str) -> float:
        return trial.suggest_float(path, self.low, self.high, log=self.log, step=self.step)

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
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and self.low <= float(value) <= self.high
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class IntParam(_Strict):
    """An integer in [low, high] (both inclusive), optionally log-scaled or with a step."""

    type: Literal["int"]
    low: Count
    high: Count
    step: Count = Field(1, ge=1)
    log: Flag = False

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self

    def suggest(self, trial: Any, path: str) -> int:
        return trial.suggest_int(path, self.low, self.high, step=self.step, log=self.log)

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

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


Scalar = bool | int | float | str | None


def _same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type (``1 == True`` is not a match here)."""
    return a == b and type(a) is type(b)


class ChoiceParam(_Strict):
    """One of ``values`` (strings, numbers, booleans or null)."""

    type: Literal["choice"]
    values: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceParam:
        if len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        return self

    def suggest(self, trial: Any, path: str) -> Any:
        return trial.suggest_categorical(path, list(self.values))

    def corners(self) -> list[Any]:
        return list(self.values)

    def grid(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return any(_same_value(value, v) for v in self.values)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


Leaf = Annotated[FloatParam | IntParam | ChoiceParam, Field(discriminator="type")]
_LEAF_ADAPTER: TypeAdapter[Any] = TypeAdapter(Leaf)


# --------------------------------------------------------------------------------------------
# Branching choice and the space (a tree of both)


def _branch_label(value: Any) -> str:
    """How a branch value is written as a key (JSON/YAML-safe, stable across a round trip)."""
    return value if isinstance(value, str) else json.dumps(value)


class BranchParam:
    """A choice whose values each carry their own sub-space (an arm and its parameters)."""

    type = "choice"

    def __init__(self, branches: Mapping[Any, SearchSpace]) -> None:
        self.branches = dict(branches)

    @property
    def values(self) -> list[Any]:
        return list(self.branches)

    def suggest(self, trial: Any, path: str) -> Any:
        value = trial.suggest_categorical(path, self.values)
        self.branch(value).suggest(trial)
        return value

    def branch(self, value: Any) -> SearchSpace:
        for v, sub in self.branches.items():
            if _same_value(v, value):
                return sub
        raise KeyError(value)

    def contains(self, value: Any) -> bool:
        return any(_same_value(value, v) for v in self.branches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "choice",
            "branches": {_branch_label(v): sub.to_dict() for v, sub in self.branches.items()},
        }


Param = FloatParam | IntParam | ChoiceParam | BranchParam
Point = dict[str, Any]


def _combine(options: Sequence[list[Point]], limit: int | None = None) -> list[Point]:
    """Every merge of one option per list (their product); beyond ``limit`` combinations, the
    first option of each list with one list varied at a time."""
    if not options:
        return [{}]
    total = math.prod(len(o) for o in options)
    if limit is None or total <= limit:
        return [
            {k: v for part in combo for k, v in part.items()}
            for combo in itertools.product(*options)
        ]
    first = [o[0] for o in options]
    out = []
    for i, opts in enumerate(options):
        for opt in opts:
            out.append(
                {k: v for part in [*first[:i], opt, *first[i + 1 :]] for k, v in part.items()}
            )
    return out


class SearchSpace:
    """A validated tree of ``{dotted path: distribution or branching choice}``."""

    def __init__(self, params: Mapping[str, Param]) -> None:
        self.params = dict(params)

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __contains__(self, path: object) -> bool:
        return path in self.keys

    @property
    def keys(self) -> list[str]:
        """Every path the space can set, outer ones first (branch paths after their choice)."""
        out: dict[str, None] = {}
        for path, p in self.params.items():
            out[path] = None
            if isinstance(p, BranchParam):
                for sub in p.branches.values():
                    out.update(dict.fromkeys(sub.keys))
        return list(out)

    @property
    def has_branches(self) -> bool:
        return any(isinstance(p, BranchParam) for p in self.params.values())

    def suggest(self, trial: Any) -> None:
        """Suggest every parameter on ``trial`` (an Optuna trial), branches after their choice."""
        for path, p in self.params.items():
            p.suggest(trial, path)

    def unmatched(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` is not a point of the space, or ``None`` when it is."""
        used: set[str] = set()
        problem = self._match(config, used)
        if problem:
            return problem
        extra = sorted(set(config) - used)
        return f"not searched here: {', '.join(extra)}" if extra else None

    def _match(self, config: Mapping[str, Any], used: set[str]) -> str | None:
        for path, p in self.params.items():
            if path not in config:
                return f"missing {path}"
            if not p.contains(config[path]):
                return f"{path}={config[path]!r} is outside the search space"
            used.add(path)
            if isinstance(p, BranchParam):
                problem = p.branch(config[path])._match(config, used)
                if problem:
                    return problem
        return None

    def contains(self, config: Mapping[str, Any]) -> bool:
        """True when ``config`` sets exactly the paths of one branch path, each inside the space."""
        return self.unmatched(config) is None

    def _points(self, leaf_values: str, limit: int | None = None) -> list[Point]:
        options: list[list[Point]] = []
        for path, p in self.params.items():
            if isinstance(p, BranchParam):
                options.append(
                    [
                        {path: v, **sub_point}
                        for v, sub in p.branches.items()
                        for sub_point in sub._points(leaf_values, limit)
                    ]
                )
            else:
                try:
                    values = getattr(p, leaf_values)()
                except ConfigError as exc:
                    raise ConfigError(f"{path}: {exc}") from None
                options.append([{path: v} for v in values])
        return _combine(options, limit)

    def grid_points(self) -> list[Point]:
        """Every point of the grid, branches expanded (what the ``grid`` searcher runs)."""
        return self._points("grid")

    def grid_size(self) -> int:
        return len(self.grid_points())

    def corner_configs(self, limit: int = 256) -> list[Point]:
        """Extreme values (low/high, each choice, each branch); past ``limit`` combinations one
        parameter at a time."""
        return self._points("corners", limit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the study fingerprint and the MLflow study run)."""
        return {path: p.to_dict() for path, p in self.params.items()}

    def validate_against(self, base: Mapping[str, Any], where: str = "search_space") -> None:
        """Build the run config of each corner; raise naming the failing or ignored field."""
        for combo in self.corner_configs():
            try:
                cfg = build_trial_config(base, combo)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in combo.items())
                raise ConfigError(
                    f"{where}: a value inside the space gives an invalid run config ({shown}):\n"
                    f"{exc}\nnarrow the range (low/high/values) of the field named above"
                ) from None
            _refuse_ignored(combo, ignored_fields(cfg), where)


def _refuse_ignored(combo: Mapping[str, Any], ignored: Mapping[str, str], where: str) -> None:
    for path in combo:
        if path in ignored:
            raise ConfigError(
                f"{where}: {path}: is searched, but when {ignored[path]} the run never reads "
                f"it, so those trials would differ only in a value that changes nothing. Search "
                f"{path} only in the branches that use it (a choice with branches: "
                "{type: choice, branches: {<value>: {<field>: <distribution>}}}); run an arm with "
                "nothing to search once per seed as a baseline (study.baselines)"
            )


class DefineByRun:
    """Optuna define-by-run function over a :class:`SearchSpace` (Ray's ``OptunaSearch(space=)``).

    A class rather than a closure so Ray can pickle it with the searcher's state.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        self.space.suggest(trial)


# --------------------------------------------------------------------------------------------
# Paths into RunConfig

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
    "compute": "it sets how trials run (precision, memory layout, compilation), not what they "
    "learn",
}


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


def _unknown_field(path: str, parts: list[str], i: int, fields: Mapping[str, Any], where: str):
    section = ".".join(parts[:i]) or "the run config"
    close = difflib.get_close_matches(parts[i], list(fields), n=3)
    hint = f"; did you mean {', '.join('.'.join([*parts[:i], c]) for c in close)}?" if close else ""
    return ConfigError(
        f"{where}: {path}: unknown field {parts[i]!r} in {section} "
        f"(valid fields: {', '.join(sorted(fields))}){hint}"
    )


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
        fields = {name: f for m in models for name, f in m.model_fields.items()}
        if part not in fields:
            raise _unknown_field(path, parts, i, fields, where)
        annotation = fields[part].annotation
        inner = _models_in(annotation)
        if i == len(parts) - 1:
            if inner and not typing.get_origin(annotation) and len(inner) == 1:
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


def fixed_reason(path: str) -> str | None:
    """Why ``path`` cannot vary between the trials of a study, or ``None``."""
    for prefix, reason in FIXED_PATHS.items():
        if path == prefix or path.startswith(prefix + "."):
            return reason
    return None


def check_settable(path: str, where: str, what: str = "searched") -> None:
    """A path a study may vary per trial: a real field, and not one every trial shares."""
    check_run_config_path(path, where=where)
    reason = fixed_reason(path)
    if reason:
        raise ConfigError(
            f"{where}: {path}: cannot be {what} ({reason}); set it in the run config sections "
            "instead, or run one study per value"
        )


def build_trial_config(base: Mapping[str, Any], sampled: Mapping[str, Any]) -> RunConfig:
    """The run config of one trial: the base run config with the sampled values set.

    Raises :class:`ConfigError` naming the field when the result is not a valid run config.
    """
    raw = copy.deepcopy(dict(base))
    for path, value in sampled.items():
        set_dotted(raw, path, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "trial config")) from None


# --------------------------------------------------------------------------------------------
# Parsing


def _parse_leaf(path: str, spec: Mapping[str, Any], where: str) -> Param:
    try:
        return _LEAF_ADAPTER.validate_python(dict(spec))
    except ValidationError as exc:
        text = format_validation_error(exc, where)
        raise ConfigError(text.replace(f"{where}: ", f"{where}: {path}.", 1)) from None


def _parse_branches(path: str, spec: Mapping[str, Any], where: str) -> BranchParam:
    extra = sorted(set(spec) - {"type", "branches"})
    if extra:
        raise ConfigError(
            f"{where}: {path}: a choice with branches takes only type and branches "
            f"(got {', '.join(map(str, extra))}); its values are the branch names"
        )
    raw = spec["branches"]
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{where}: {path}.branches: expected a mapping of values to sub-spaces with at least "
            "one branch, e.g. branches: {score: {prune.rho: {type: loguniform, low: 0.01, "
            "high: 0.5}}}"
        )
    branches: dict[Any, SearchSpace] = {}
    for value, sub in raw.items():
        here = f"{where}: {path}.branches.{_branch_label(value)}"
        if not sub:
            raise ConfigError(
                f"{here}: empty branch: nothing is searched when {path} is {value!r}. A "
                "configuration with nothing to search is a baseline: list it under "
                f"study.baselines (e.g. baselines: {{{_branch_label(value)}: {{{path}: "
                f"{_branch_label(value)}}}}}) so it runs once per seed, and remove this branch"
            )
        branches[value] = parse_search_space(sub, where=here)
    _check_siblings(path, branches, where)
    return BranchParam(branches)


def _check_siblings(path: str, branches: Mapping[Any, SearchSpace], where: str) -> None:
    """A path in several branches is one Optuna parameter: same kind (and choice values)."""
    seen: dict[str, tuple[Any, Param]] = {}
    for value, sub in branches.items():
        for sub_path, p in _leaves(sub):
            if sub_path == path:
                raise ConfigError(
                    f"{where}: {path}.branches.{_branch_label(value)}: searches {path} again; a "
                    "branch is the value of its choice"
                )
            if sub_path not in seen:
                seen[sub_path] = (value, p)
                continue
            first_value, first = seen[sub_path]
            if _kind(first) != _kind(p):
                raise ConfigError(
                    f"{where}: {sub_path}: is {_kind(first)} in branch "
                    f"{_branch_label(first_value)} but {_kind(p)} in branch "
                    f"{_branch_label(value)}; Optuna sees one parameter {sub_path}, so give it "
                    "the same type (and the same choice values) in every branch"
                )


def _leaves(space: SearchSpace) -> Iterator[tuple[str, Param]]:
    for path, p in space.params.items():
        yield path, p
        if isinstance(p, BranchParam):
            for sub in p.branches.values():
                yield from _leaves(sub)


def _kind(p: Param) -> str:
    if isinstance(p, FloatParam):
        return f"a {'log-' if p.log else ''}float"
    if isinstance(p, IntParam):
        return f"an {'log-' if p.log else ''}int"
    return f"a choice of {p.values}"


def _check_nesting(space: SearchSpace, where: str, outer: frozenset[str] = frozenset()) -> None:
    """No path searched inside a branch of itself or of an enclosing choice, none overlapping."""
    here = set(space.params)
    for a, b in itertools.permutations(here | outer, 2):
        if b.startswith(a + ".") and (a in here or b in here):
            raise ConfigError(f"{where}: {a} and {b} overlap; search one or the other")
    for path in here & outer:
        raise ConfigError(
            f"{where}: {path}: searched both inside a branch and around it; search it in one place"
        )
    for p in space.params.values():
        if isinstance(p, BranchParam):
            for sub in p.branches.values():
                _check_nesting(sub, where, outer | here)


def parse_search_space(raw: Any, *, where: str = "search_space") -> SearchSpace:
    """Parse the ``search_space:`` mapping; raise :class:`ConfigError` naming the bad entry."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of dotted field paths to distributions, "
            f"e.g. prune.rho: {{type: loguniform, low: 0.005, high: 0.5}}"
        )
    params: dict[str, Param] = {}
    for path, spec in raw.items():
        path = str(path)
        check_settable(path, where)
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(
                f"{where}: {path}: expected {{type: uniform|loguniform|int|choice, ...}}, "
                f"got {spec!r}"
            )
        if spec.get("type") == "choice" and "branches" in spec:
            params[path] = _parse_branches(path, spec, where)
        else:
            params[path] = _parse_leaf(path, spec, where)
    space = SearchSpace(params)
    _check_nesting(space, where)
    return space
