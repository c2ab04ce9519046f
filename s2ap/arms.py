"""The arms and hosts of S2AP: one table each, and what every run config actually reads.

An **arm** (``prune.perturbation``) is how the scores are perturbed before each update: ``score``
(S2AP's ascent), ``random`` (a random direction of the same norm: the control), ``none`` (the
plain host update). A **host** (``prune.host``) is the pruning method the arm wraps: ``hydra``
(the same fraction in every layer) or ``harp`` (per-layer rates learned under the budget).
Everything the project says about one of them (its name on a page, in a run name, in a mask
header; which settings it reads; how it is built) is one entry of :data:`ARMS` or :data:`HOSTS`,
so adding an arm is one :func:`register_arm` call (plus, for a host, its own module):
``docs/CONTRIBUTING.md`` shows how.

What a run never reads follows from the tables: the settings of the arms other than its own
(HYDRA's plain update reads no radius), the settings block of the hosts other than its own
(``prune.harp.*`` on HYDRA), and a few optimiser rules (:data:`IGNORE_RULES`). Two run configs
that differ only in such values train the same model: their *effective* configs (every field
minus the ignored ones, :func:`effective_config`) are equal. The study service uses this to
refuse search spaces that vary an ignored field, to train each distinct configuration once, and
to log only what a run used.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from s2ap.config import config_hash, flatten
from s2ap.registry import Registry

# The tables name the torch code they run (host classes, perturbation functions) and import it
# when a run uses it: a study file, a method name or a mask header reads the tables without
# torch, which saves the read commands (status, masks pull, report) seconds.
if TYPE_CHECKING:
    from torch import Tensor

    from s2ap.config import PruneConfig, RunConfig
    from s2ap.masking import HydraHost
    from s2ap.perturbation import S2AP, Closure

__all__ = [
    "ARMS",
    "DEFAULT_HOST",
    "HOSTS",
    "IGNORE_RULES",
    "Arm",
    "Host",
    "IgnoreRule",
    "effective_config",
    "ignored_fields",
    "mask_header",
    "method_header",
    "method_label",
    "method_name",
    "method_text",
    "register_arm",
    "register_host",
]

#: The settings of the prune stage that arms read (each arm lists those it uses).
ARM_SETTINGS = ("rho", "radius", "ascent_steps", "warmup_epochs")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way to perturb the scores before a host update (a ``prune.perturbation`` value).

    Attributes:
        name: the ``prune.perturbation`` value.
        label: its name on pages and in tables (``S2AP``); ``None`` for the plain host update,
            which the host's label names.
        slug: its part of a method name and a run name (``s2ap``); ``None`` like ``label``.
        direction: ``fn(S2AP optimizer, closure) -> z`` (the perturbation of every score
            tensor); ``None``: no perturbation, the host update itself.
        reads: the prune settings it uses, of :data:`ARM_SETTINGS` (also what a mask header
            shows); the others are ignored fields of a run on this arm.
        why_ignored: completes "prune.perturbation is <name>: ..." in an ignored-field message.
    """

    name: str
    label: str | None
    slug: str | None
    direction: Callable[[S2AP, Closure], list[Tensor]] | None
    reads: tuple[str, ...]
    why_ignored: str


@dataclasses.dataclass(frozen=True)
class Host:
    """One pruning method the arms wrap (a ``prune.host`` value).

    Attributes:
        name: the ``prune.host`` value (also its method-name part).
        label: its name on pages and in tables (``HYDRA``).
        cls_path: the host class as ``module:Class`` (:class:`~s2ap.masking.HydraHost` or a
            subclass, in its own module), imported when a run builds the host.
        settings: the ``prune`` sub-block it reads (``harp``), passed to the class as keyword
            arguments; a run on another host ignores that block. ``None``: no settings.
    """

    name: str
    label: str
    cls_path: str
    settings: str | None = None

    @property
    def cls(self) -> type[HydraHost]:
        """The host class :attr:`cls_path` names."""
        module, _, name = self.cls_path.partition(":")
        cls: type[HydraHost] = getattr(importlib.import_module(module), name)
        return cls

    def build(self, prune: PruneConfig) -> HydraHost:
        """The host object of a run, from its ``prune`` section."""
        if self.settings is None:
            return self.cls()
        return self.cls(**getattr(prune, self.settings).model_dump())


ARMS: Registry[Arm] = Registry("perturbation")
HOSTS: Registry[Host] = Registry("host")
#: The host an arm's label stands alone on (S2AP as published is on HYDRA: "S2AP", not
#: "HYDRA+S2AP").
DEFAULT_HOST = "hydra"


def register_arm(arm: Arm) -> Arm:
    """Add ``arm`` to :data:`ARMS` (a taken name is an error)."""
    return ARMS.register(arm.name)(arm)


def register_host(host: Host) -> Host:
    """Add ``host`` to :data:`HOSTS` (a taken name is an error)."""
    return HOSTS.register(host.name)(host)


def _score_direction(opt: S2AP, closure: Closure) -> list[Tensor]:
    from s2ap.perturbation import ascent_perturbation

    return ascent_perturbation(
        opt.scores, closure, rho=opt.rho, radius=opt.radius, ascent_steps=opt.ascent_steps
    )


def _random_direction(opt: S2AP, closure: Closure) -> list[Tensor]:
    from s2ap.perturbation import random_perturbation

    return random_perturbation(opt.scores, rho=opt.rho, radius=opt.radius, generator=opt.generator)


register_arm(
    Arm(
        name="none",
        label=None,
        slug=None,
        direction=None,
        reads=(),
        why_ignored="the plain host update (HYDRA or HARP): the scores are never perturbed",
    )
)
register_arm(
    Arm(
        name="score",
        label="S2AP",
        slug="s2ap",
        direction=_score_direction,
        reads=ARM_SETTINGS,
        why_ignored="S2AP reads every perturbation setting",
    )
)
register_arm(
    Arm(
        name="random",
        label="random",
        slug="random-perturbation",
        direction=_random_direction,
        reads=("rho", "radius", "warmup_epochs"),
        why_ignored="one random direction, no ascent steps",
    )
)
register_host(Host(name="hydra", label="HYDRA", cls_path="s2ap.masking:HydraHost"))
register_host(Host(name="harp", label="HARP", cls_path="s2ap.harp:HarpHost", settings="harp"))


# --------------------------------------------------------------------------------------------
# Method names: one rule for run names, tags, pages and mask headers


def method_name(host: str, arm: str) -> str:
    """``hydra``, ``harp`` (plain host update), ``s2ap``, ``harp+s2ap``,
    ``random-perturbation``, ``harp+random-perturbation``: run names and the ``s2ap.method``
    tag."""
    slug = ARMS.get(arm).slug
    if slug is None:
        return HOSTS.get(host).name
    return slug if host == DEFAULT_HOST else f"{HOSTS.get(host).name}+{slug}"


def method_label(host: str, arm: str) -> str:
    """``HYDRA``, ``HARP``, ``S2AP``, ``HARP+S2AP``, ``random``, ``HARP+random``: tables and
    pages."""
    label = ARMS.get(arm).label
    if label is None:
        return HOSTS.get(host).label
    return label if host == DEFAULT_HOST else f"{HOSTS.get(host).label}+{label}"


def method_header(cfg: RunConfig) -> dict[str, Any]:
    """What produced a mask: host, arm, the settings the arm reads, the host's settings block,
    scope and target sparsity (nothing the run ignored)."""
    p = cfg.prune
    host = HOSTS.get(p.host)
    method: dict[str, Any] = {"host": p.host, "perturbation": p.perturbation}
    method.update({key: getattr(p, key) for key in ARMS.get(p.perturbation).reads})
    if host.settings is not None:
        method[host.settings] = getattr(p, host.settings).model_dump(mode="json")
    method.update(scope=p.scope, sparsity_target=p.sparsity)
    return method


def mask_header(cfg: RunConfig, dense_hash: str | None = None) -> dict[str, Any]:
    """Metadata stored beside a mask: what produced it (:func:`method_header`) and from which
    dense model."""
    return {
        "architecture": cfg.model.arch,
        "dataset": cfg.data.source,
        "method": method_header(cfg),
        "config_hash": config_hash(cfg.model_dump(mode="json")),
        "dense_checkpoint_hash": dense_hash,
    }


def method_text(header: Mapping[str, Any]) -> str:
    """``S2AP (rho 0.1, 1 step)``, ``HARP+S2AP (...)``, ``HYDRA``, ``random (rho 0.1)`` from a
    mask header's ``method`` entry (a header from an unknown arm or host shows its names)."""
    method = header.get("method")
    if not isinstance(method, Mapping):
        return str(method or "?")
    host, arm = str(method.get("host", DEFAULT_HOST)), str(method.get("perturbation"))
    try:
        label = method_label(host, arm)
    except ValueError:
        return f"{host} + {arm}"
    details = []
    rho = method.get("rho")
    if "rho" in method:
        details.append(f"rho {rho:.3g}" if isinstance(rho, int | float) else "rho ?")
    if "ascent_steps" in method:
        steps = method["ascent_steps"]
        details.append(f"{steps} step{'s' if steps != 1 else ''}")
    return f"{label} ({', '.join(details)})" if details else label


# --------------------------------------------------------------------------------------------
# Ignored fields


@dataclasses.dataclass(frozen=True)
class IgnoreRule:
    """When ``applies(cfg)``, the run never reads ``fields`` (dotted paths), because
    ``reason(cfg)``."""

    applies: Callable[[RunConfig], bool]
    fields: Callable[[RunConfig], tuple[str, ...]]
    reason: Callable[[RunConfig], str]


def _arm_rule(cfg: RunConfig) -> tuple[str, ...]:
    reads = ARMS.get(cfg.prune.perturbation).reads
    return tuple(f"prune.{key}" for key in ARM_SETTINGS if key not in reads)


def _host_rule(cfg: RunConfig) -> tuple[str, ...]:
    """The settings blocks of every host but the run's own, field by field."""
    out: list[str] = []
    for name in HOSTS.names():
        block = HOSTS.get(name).settings
        if name != cfg.prune.host and block is not None:
            fields = type(getattr(cfg.prune, block)).model_fields
            out += [f"prune.{block}.{field}" for field in fields]
    return tuple(out)


def _stage_rules(stage: str) -> list[IgnoreRule]:
    """Optimiser and objective fields a training stage reads only in some settings."""
    return [
        IgnoreRule(
            lambda c: getattr(c, stage).optimizer == "adam",
            lambda c: (f"{stage}.momentum",),
            lambda c: f"{stage}.optimizer is adam, which has no momentum setting",
        ),
        IgnoreRule(
            lambda c: getattr(c, stage).objective != "trades",
            lambda c: (f"{stage}.trades_beta",),
            lambda c: f"{stage}.objective is not trades",
        ),
    ]


#: Every rule; :func:`ignored_fields` applies them in order (the first reason of a field wins).
IGNORE_RULES: list[IgnoreRule] = [
    IgnoreRule(
        lambda c: True,
        _arm_rule,
        lambda c: (
            f"prune.perturbation is {c.prune.perturbation}: "
            f"{ARMS.get(c.prune.perturbation).why_ignored}"
        ),
    ),
    IgnoreRule(
        lambda c: True,
        _host_rule,
        lambda c: (
            f"prune.host is {c.prune.host}: only the host named by prune.host reads its "
            "settings block"
        ),
    ),
    IgnoreRule(
        lambda c: not c.finetune.awp.enabled,
        lambda c: ("finetune.awp.gamma", "finetune.awp.warmup_epochs"),
        lambda c: "finetune.awp.enabled is false",
    ),
    *_stage_rules("pretrain"),
    *_stage_rules("prune"),
    *_stage_rules("finetune"),
]


def ignored_fields(cfg: RunConfig) -> dict[str, str]:
    """``{dotted field: why the run never reads it}`` for this run config."""
    out: dict[str, str] = {}
    for rule in IGNORE_RULES:
        if rule.applies(cfg):
            fields = rule.fields(cfg)
            if fields:
                reason = rule.reason(cfg)
                for path in fields:
                    out.setdefault(path, reason)
    return out


def effective_config(cfg: RunConfig) -> dict[str, Any]:
    """The flattened run config without the fields the run never reads (JSON-able values)."""
    ignored = ignored_fields(cfg)
    return {
        path: value
        for path, value in flatten(cfg.model_dump(mode="json")).items()
        if path not in ignored
    }
