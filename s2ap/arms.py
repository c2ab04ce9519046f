"""Which settings a run actually reads, given its arm, host and optimiser.

The plain host update (``prune.perturbation: none``: HYDRA, or HARP) never reads the radius or the
ascent steps; the random arm draws one direction and takes no ascent steps; the HYDRA host never
reads HARP's rate settings; finetuning without AWP never reads AWP's radius.
Two run configs that differ only in such values train the same model: their *effective*
configs (every field minus the ignored ones) are equal. The study service uses this to refuse
search spaces that vary an ignored field, to train each distinct configuration once, and to
log only what a run used.

Rules are a table (condition -> fields it makes irrelevant -> why), so a new arm or host adds
rows rather than branches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from s2ap.config import RunConfig

__all__ = ["IGNORE_RULES", "IgnoreRule", "effective_config", "flatten", "ignored_fields"]


@dataclasses.dataclass(frozen=True)
class IgnoreRule:
    """When ``applies(cfg)``, the run never reads ``fields`` (dotted paths), because ``reason``."""

    applies: Callable[[RunConfig], bool]
    fields: tuple[str, ...]
    reason: str


def _stage_rules(stage: str) -> list[IgnoreRule]:
    """Optimiser and objective fields a training stage reads only in some settings."""
    return [
        IgnoreRule(
            lambda c: getattr(c, stage).optimizer == "adam",
            (f"{stage}.momentum",),
            f"{stage}.optimizer is adam, which has no momentum setting",
        ),
        IgnoreRule(
            lambda c: getattr(c, stage).objective != "trades",
            (f"{stage}.trades_beta",),
            f"{stage}.objective is not trades",
        ),
    ]


#: The table of rules; :func:`ignored_fields` applies every row.
IGNORE_RULES: list[IgnoreRule] = [
    IgnoreRule(
        lambda c: c.prune.perturbation == "none",
        ("prune.rho", "prune.radius", "prune.ascent_steps", "prune.warmup_epochs"),
        "prune.perturbation is none (the plain host update, HYDRA or HARP): the scores are "
        "never perturbed",
    ),
    IgnoreRule(
        lambda c: c.prune.perturbation == "random",
        ("prune.ascent_steps",),
        "prune.perturbation is random: one random direction, no ascent steps",
    ),
    IgnoreRule(
        lambda c: c.prune.host != "harp",
        ("prune.harp.alpha", "prune.harp.gamma", "prune.harp.rate_lr"),
        "prune.host is hydra: every layer keeps the same fraction, no rates are learned",
    ),
    IgnoreRule(
        lambda c: not c.finetune.awp.enabled,
        ("finetune.awp.gamma", "finetune.awp.warmup_epochs"),
        "finetune.awp.enabled is false",
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
            for path in rule.fields:
                out.setdefault(path, rule.reason)
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"prune": {"rho": 0.1}}`` -> ``{"prune.rho": 0.1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def effective_config(cfg: RunConfig) -> dict[str, Any]:
    """The flattened run config without the fields the run never reads (JSON-able values)."""
    ignored = ignored_fields(cfg)
    return {
        path: value
        for path, value in flatten(cfg.model_dump(mode="json")).items()
        if path not in ignored
    }
