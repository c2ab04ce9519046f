"""Typed configuration of one adversarial-pruning run, validated once at the edge.

A run file (YAML) maps onto :class:`RunConfig`. Unknown fields, values out of range and unknown
registry names (architecture, dataset, objective) fail here, before any work starts, with the
field's dotted path in the message (:func:`format_validation_error`).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "AWPConfig",
    "AugmentConfig",
    "ComputeConfig",
    "ConfigError",
    "Count",
    "DataConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "Flag",
    "HarpConfig",
    "ModelConfig",
    "Number",
    "PretrainConfig",
    "PruneConfig",
    "RunConfig",
    "StrictSection",
    "ThreatConfig",
    "ValidationConfig",
    "canonical_json",
    "config_hash",
    "flatten",
    "format_validation_error",
    "load_run_config",
    "read_yaml_file",
    "yaml_text",
]


class ConfigError(ValueError):
    """A configuration problem, with the field's dotted path and the fix in the message."""


def yaml_text(value: Any) -> str:
    """A value as a user writes it in YAML (``true``, ``null``), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _number_kind(annotation: Any) -> str | None:
    """ "whole number" or "number" when a field takes numbers but not true/false, else None."""
    found: set[Any] = set()

    def walk(a: Any) -> None:
        origin = typing.get_origin(a)
        if origin is Annotated:
            walk(typing.get_args(a)[0])
        elif origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(a):
                walk(arg)
        else:
            found.add(a)

    walk(annotation)
    if bool in found:
        return None
    if float in found:
        return "number"
    return "whole number" if int in found else None


def _bool_for_a_number(kind: str, value: bool) -> PydanticCustomError:
    return PydanticCustomError(
        "bool_not_number",
        "must be a {kind}, not {value}",
        {"kind": kind, "value": yaml_text(value)},
    )


class StrictSection(BaseModel):
    """Base of every configuration section (run config, study block, search space leaves).

    Unknown fields are refused, floats must be finite (YAML's .inf/.nan would pass a ``ge=0``
    bound), and a YAML boolean where a number goes is refused: pydantic would read ``true`` as
    1 (a count) or 1.0. Counts and flags are strict themselves (:data:`Count`, :data:`Flag`).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kind = _number_kind(cls.model_fields[info.field_name].annotation)
            if kind is not None:
                raise _bool_for_a_number(kind, value)
        return value


class _Strict(StrictSection):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: A whole number, strictly: ``2.0``, ``"2"`` and ``true`` are refused (pydantic's lax mode
#: takes them as 2, 2 and 1).
Count = Annotated[int, Field(strict=True)]
#: true or false, strictly: ``1``, ``0`` and ``"yes"`` are refused.
Flag = StrictBool
PositiveInt = Annotated[int, Field(ge=1, strict=True)]


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise _bool_for_a_number("number", value)
    return value


#: A float that refuses ``true``/``false``, for models that cannot derive from
#: :class:`StrictSection` (a discriminated union's members: a before-validator on every field
#: would wrap the discriminator too).
Number = Annotated[float, BeforeValidator(_not_a_bool)]
NonNegInt = Annotated[int, Field(ge=0, strict=True)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
# Upper bounds mark values that are certainly a mistake, not a recommended range.
LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
WeightDecay = Annotated[float, Field(ge=0.0, le=1.0)]
# A relative radius of 10 already moves every score 10 times its own norm.
Radius = Annotated[float, Field(ge=0.0, le=10.0)]


class ThreatConfig(_Strict):
    """L-inf PGD threat model used for training and validation attacks."""

    eps: float = Field(8 / 255, ge=0.0, le=1.0, description="L-inf radius in [0,1] pixel units")
    step_size: float = Field(2 / 255, gt=0.0, le=1.0)
    steps: PositiveInt = 10


class AugmentConfig(_Strict):
    crop_padding: NonNegInt = 0
    flip: Flag = False


class DataConfig(_Strict):
    source: str = "digits"
    root: str | None = None
    download: Flag = False
    val_size: float = Field(0.2, gt=0.0, description="fraction in (0,1) or a count >= 1")
    split_seed: NonNegInt = 0
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 512
    augment: Literal["default", "none"] | AugmentConfig = "default"
    in_memory: Flag = True
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from s2ap.data.registry import list_sources

        if v not in list_sources():
            raise ValueError(f"unknown dataset {v!r}; choose one of {list_sources()}")
        return v

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a count must be a whole number; a fraction must be in (0, 1)")
        return v


class ModelConfig(_Strict):
    arch: str = "small_cnn"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from s2ap.architectures import list_models

        if v not in list_models():
            raise ValueError(f"unknown architecture {v!r}; choose one of {list_models()}")
        return v


class _TrainConfig(_Strict):
    """What every training stage shares: optimiser, schedule, robust objective."""

    epochs: NonNegInt = 10
    lr: LearningRate = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: WeightDecay = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    objective: Literal["pgd", "trades"] = "pgd"
    trades_beta: float = Field(6.0, gt=0.0, le=100.0)


class PretrainConfig(_TrainConfig):
    """Dense PGD adversarial training (stage i)."""


class HarpConfig(_Strict):
    """HARP's learned per-layer rates (Zhao & Wressnegger, ICLR 2023); read when host is harp.

    - ``alpha``: floor of a layer's keep rate, as a fraction of ``1 - sparsity``.
    - ``gamma``: budget-loss weight step, ``gamma * (epoch + 1)`` until the budget is met.
    - ``rate_lr``: the rates' learning rate; null uses ``prune.lr`` (one optimizer, as HARP).
    - ``init``: where the rates start: ``target`` keeps ``1 - sparsity`` in every layer;
      ``ten_percent`` keeps 10% in every layer whatever the target, as HARP's shipped strategies
      (``010_uni``) do. The first mask is the same (the split is exact and proportional); the
      budget loss starts at ``max(0.1 / (1 - sparsity) - 1, 0)`` instead of 0.
    - ``rate_weight_decay``: the rates' weight decay; null uses ``prune.weight_decay`` (1e-4);
      HARP's CIFAR-10 config decays everything, rates included, with 5e-4.
    """

    alpha: float = Field(
        0.1, ge=0.0, lt=1.0, description="floor of a layer's rate, as a fraction of 1 - sparsity"
    )
    gamma: float = Field(
        0.01,
        ge=0.0,
        le=10.0,
        description="budget-loss weight step: gamma * (epoch + 1) until the budget is met",
    )
    rate_lr: LearningRate | None = Field(
        None, description="learning rate of the rates; null uses prune.lr (one optimizer, as HARP)"
    )
    init: Literal["target", "ten_percent"] = Field(
        "target",
        description="start of every layer's rate: the target 1 - sparsity, or 10% kept "
        "(HARP's shipped strategies)",
    )
    rate_weight_decay: WeightDecay | None = Field(
        None, description="weight decay of the rates; null uses prune.weight_decay"
    )


class PruneConfig(_TrainConfig):
    """The mask search (stage ii): a host (HYDRA or HARP) with the S2AP score-space min-max."""

    lr: LearningRate = 0.1
    weight_decay: WeightDecay = 1e-4
    epochs: NonNegInt = 20
    sparsity: Fraction = 0.9
    scope: Literal["layer", "global"] = "layer"
    score_init: Literal["scaled", "magnitude", "random"] = "scaled"
    include: list[str] | None = None
    exclude: list[str] | None = None
    bn_trainable: Flag = True
    perturbation: str = Field(
        "score",
        description="the arm (s2ap.arms.ARMS): score (S2AP), random (control), none (host only)",
    )
    rho: Radius = Field(0.1, description="radius (relative: gamma; absolute: global rho)")
    radius: Literal["relative", "absolute"] = "relative"
    ascent_steps: PositiveInt = 1
    warmup_epochs: NonNegInt = 5
    host: str = Field("hydra", description="the host method (s2ap.arms.HOSTS): hydra or harp")
    harp: HarpConfig = Field(default_factory=HarpConfig)

    @field_validator("perturbation")
    @classmethod
    def _known_arm(cls, v: str) -> str:
        from s2ap.arms import ARMS  # the arm table builds on this module

        ARMS.get(v)  # a ValueError listing the registered arms
        return v

    @field_validator("host")
    @classmethod
    def _known_host(cls, v: str) -> str:
        from s2ap.arms import HOSTS

        HOSTS.get(v)
        return v

    @model_validator(mode="after")
    def _harp_is_per_layer(self) -> PruneConfig:
        if self.host != "harp":
            return self
        if self.scope != "layer":
            raise ValueError(
                "prune.scope must be 'layer' when prune.host is 'harp' "
                "(HARP learns how one global budget splits across layers)"
            )
        floor = self.harp.alpha * (1.0 - self.sparsity)
        if self.harp.init == "ten_percent" and floor >= 0.1:
            raise ValueError(
                f"prune.harp.init 'ten_percent' starts every layer at 10% kept, not above the "
                f"floor prune.harp.alpha * (1 - prune.sparsity) = {floor:g}; lower "
                "prune.harp.alpha or use init 'target'"
            )
        return self


class AWPConfig(_Strict):
    """Adversarial weight perturbation (Wu et al., 2020) for the finetune stage."""

    enabled: Flag = False
    gamma: Radius = Field(5e-3, description="relative radius per layer")
    warmup_epochs: NonNegInt = 0


class FinetuneConfig(_TrainConfig):
    """Adversarial training of the surviving weights with the mask fixed (stage iii)."""

    lr: LearningRate = 0.01
    awp: AWPConfig = Field(default_factory=AWPConfig)


class ValidationConfig(_Strict):
    """Per-epoch validation (model selection never sees the test set)."""

    pgd_steps: PositiveInt = 10
    max_examples: PositiveInt | None = None
    sharpness_examples: PositiveInt = 256
    # One radius for every arm, so sharpness is comparable across rho values and methods.
    sharpness_rho: float = Field(0.1, gt=0.0, le=10.0)
    # Power iterations for the top Hessian eigenvalue w.r.t. the scores, at the end of pruning
    # (same fixed batch as sharpness); 0 skips it.
    hessian_iters: NonNegInt = 20


class EvaluateConfig(_Strict):
    """Final test-set evaluation."""

    n_examples: PositiveInt = 1000
    pgd_steps: PositiveInt = 20
    autoattack: Flag = True
    autoattack_examples: PositiveInt | None = None


class DenseConfig(_Strict):
    """The dense starting point: a state dict to load, or (if absent) the pretrain stage."""

    checkpoint: str | None = None


class ComputeConfig(_Strict):
    """How the training passes run on the device; speed and rounding, never the method.

    ``amp: bf16`` runs the attack and the update under bfloat16 autocast (validation and test
    evaluation stay float32); ``channels_last`` stores weights and batches NHWC; ``compile``
    compiles the model's forward with ``torch.compile``. See :mod:`s2ap.compute`.
    """

    amp: Literal["none", "bf16"] = "none"
    channels_last: Flag = False
    compile: Flag = False


class RunConfig(_Strict):
    """One adversarial-pruning run: pretrain (or load) -> prune -> finetune -> evaluate."""

    name: str = "run"
    seed: NonNegInt = 0
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    dense: DenseConfig = Field(default_factory=DenseConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or v.startswith("cuda:"):
            return v
        raise ValueError("use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")

    @model_validator(mode="after")
    def _warmup_fits(self) -> RunConfig:
        p = self.prune
        if p.perturbation != "none" and p.epochs and p.warmup_epochs >= p.epochs:
            raise ValueError(
                f"prune.warmup_epochs ({p.warmup_epochs}) must be smaller than prune.epochs "
                f"({p.epochs}), otherwise the perturbation never starts"
            )
        return self

    def stage_hash(self, *fields: str) -> str:
        """Hash of the named top-level sections, e.g. the pretrain cache key."""
        return config_hash({f: getattr(self, f).model_dump(mode="json") for f in fields})


def _json_default(obj: Any) -> Any:
    """JSON for the non-JSON values a config may hold (paths, enums, numpy and torch scalars,
    arrays and dtypes, sets, dataclasses, pydantic models); duck-typed, so that this module
    imports neither numpy nor torch."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()  # numpy / torch scalars
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if type(obj).__name__ == "dtype":  # torch.dtype, numpy.dtype
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):  # pydantic models
        return obj.model_dump(mode="json")
    raise TypeError(
        f"config_hash: cannot encode a {type(obj).__name__} as JSON; pass plain dicts, lists, "
        "strings, numbers, bools or None (convert it to one of those first)"
    )


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON: sorted keys, no whitespace, no NaN (what a hash is taken of)."""
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def config_hash(obj: Any) -> str:
    """Short stable id of JSON-able data: the first 16 hex digits of the sha256 of its
    canonical JSON. Two configs that differ only in key order hash the same. The one
    definition: dense-model caches, study fingerprints, mask headers and dedup keys all use it."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:16]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"prune": {"rho": 0.1}}`` -> ``{"prune.rho": 0.1}``: dotted paths, as study files,
    search spaces and MLflow params name fields (lists, scalars and empty sections are
    leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


#: Far more than any run or study file: a larger file is the wrong file (a dataset, a checkpoint).
_MAX_CONFIG_BYTES = 10_000_000


def _check_regular_file(p: Path, what: str) -> None:
    """Refuse what reading would hang on (a pipe, ``/dev/zero``) or fill memory with."""
    if not p.exists() or p.is_dir():
        return  # read_yaml_file says which
    if not p.is_file():
        raise ConfigError(
            f"{p}: not a regular file (a device, pipe or socket); pass the {what} (a YAML file)"
        )
    size = p.stat().st_size
    if size > _MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{p}: {size / 1e6:.0f} MB is far too large for a {what} (a few KB of YAML); is it "
            "the right file?"
        )


def read_yaml_file(path: str | Path, what: str, example: str) -> tuple[dict[str, Any], str]:
    """The top-level mapping of a YAML file and its text; :class:`ConfigError` naming the file
    and the fix for whatever stops it: missing, a folder, unreadable, not UTF-8 text, not
    YAML, empty, or not a mapping. ``what`` names the file ("study file"), ``example`` is a
    complete one to start from. A device, pipe or socket, or a file over 10 MB, is refused
    before it is read."""
    p = Path(path)
    _check_regular_file(p, what)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; give the path of the {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder; pass the {what} (a YAML file)") from None
    except PermissionError:
        raise ConfigError(f"{p}: not readable by this user; check its permissions") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not a text file (byte {exc.start} is not UTF-8); a {what} is YAML text, "
            f"e.g. {example}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if raw is None:
        raise ConfigError(f"{p}: the file is empty; start from {example}")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{p}: expected a mapping of sections at the top level (data:, model:, ...), got "
            f"a {type(raw).__name__}; start from {example}"
        )
    return raw, text


# pydantic error type -> fn(error) -> the message, phrased as what the value must be.
_MESSAGES: dict[str, Callable[[Any], str]] = {
    "extra_forbidden": lambda e: (
        "unknown field (check the spelling; see configs/ for the valid fields)"
    ),
    "finite_number": lambda e: "must be a finite number, not inf or nan (write e.g. 0.1)",
    "greater_than": lambda e: f"must be greater than {e['ctx']['gt']}",
    "greater_than_equal": lambda e: f"must be at least {e['ctx']['ge']}",
    "less_than": lambda e: f"must be less than {e['ctx']['lt']}",
    "less_than_equal": lambda e: (
        f"must be at most {e['ctx']['le']} (a larger value is certainly a mistake)"
    ),
    "int_from_float": lambda e: "must be a whole number (write e.g. 10, not 10.5)",
    "int_type": lambda e: f"must be a whole number (e.g. 10), not {yaml_text(e.get('input'))}",
    "bool_type": lambda e: f"must be true or false, not {yaml_text(e.get('input'))}",
    "bool_not_number": lambda e: e["msg"],
}
#: Messages above that already show the value given.
_SHOWS_INPUT = {"int_type", "bool_type", "bool_not_number"}


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``<source>: <dotted.field>: <message> (got <value>)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        known = _MESSAGES.get(e["type"])
        msg = known(e) if known else e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = isinstance(got, dict) or got is None or e["type"] in _SHOWS_INPUT
        got_text = "" if shown else f" (got {got!r})"
        lines.append(f"{source}: {loc or '<root>'}: {msg}{got_text}")
    return "\n".join(lines)


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a run file; raises :class:`ConfigError` with every problem listed."""
    path = Path(path)
    raw, _ = read_yaml_file(
        path,
        "run file",
        "configs/run-digits.yaml (a run file needs at least a dataset and a model, e.g. "
        "'data: {source: digits}' and 'model: {arch: small_cnn}')",
    )
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "prune.rho", 0.1)`` sets ``d["prune"]["rho"]``, creating sections."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is not a section")
    node[leaf] = value
