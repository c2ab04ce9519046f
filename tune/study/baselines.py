"""Baselines and effective configurations: what makes two trials the same question.

A **baseline** (``study.baselines``) is a fixed configuration, e.g. HYDRA
(``{prune.perturbation: none}``), run first and once per seed of the search space
(:func:`baseline_trials`), and never sampled: the reference the searched trials are compared with.

Two trial configs whose *effective* run configs (every field minus those their arm ignores,
:func:`s2ap.arms.effective_config`) are equal train the same model: :class:`EffectiveKey` gives
both the same key, which :class:`tune.driver.searcher.StudySearcher` uses to train each one once.

Ray-free, so validating a study file (:func:`check_baselines`) never starts or imports Ray.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from s2ap.arms import effective_config, ignored_fields
from s2ap.config import ConfigError, config_hash
from tune.study.space import ChoiceParam, IntParam, SearchSpace, build_trial_config, check_settable

__all__ = [
    "BASELINE_KEY",
    "EffectiveKey",
    "baseline_trials",
    "check_baselines",
    "trial_values",
]

#: Key of a baseline trial's name in its config (not a run-config field).
BASELINE_KEY = "baseline"
#: Keys of a trial config that are not run-config paths (the driver's context, the baseline).
NON_PATH_KEYS = frozenset({BASELINE_KEY, "s2ap"})  # "s2ap": tune.trial.context.CONTEXT_KEY
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def trial_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config values of a trial config (``{dotted path: value}``)."""
    return {k: v for k, v in config.items() if k not in NON_PATH_KEYS}


class EffectiveKey:
    """Hash of a trial's effective run config: equal keys train the same model."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self.base = dict(base)

    def __call__(self, config: Mapping[str, Any]) -> str:
        values = trial_values(config)
        try:
            cfg = build_trial_config(self.base, values)
        except ConfigError:  # the trial fails on its own, naming the field; key it as drawn
            return config_hash(values)
        return config_hash(effective_config(cfg))


# --------------------------------------------------------------------------------------------
# Baselines


def check_baselines(
    baselines: Mapping[str, Any],
    space: SearchSpace,
    base: Mapping[str, Any],
    where: str = "study.baselines",
) -> None:
    """Raise :class:`ConfigError` naming the field unless every baseline is a distinct, valid
    configuration that sets only fields it uses."""
    key = EffectiveKey(base)
    seen: dict[str, str] = {}
    for name, values in baselines.items():
        here = f"{where}.{name}"
        if not _NAME.fullmatch(str(name)):
            raise ConfigError(f"{here}: use letters, digits, '_', '.' or '-' for a baseline name")
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{here}: expected {{field: value}}, e.g. {name}: {{prune.perturbation: none}}"
            )
        _check_baseline_values(values, space, here)
        try:
            cfg = build_trial_config(base, values)
        except ConfigError as exc:
            raise ConfigError(f"{here}: {exc}") from None
        ignored = [p for p in values if p in ignored_fields(cfg)]
        if ignored:
            reason = ignored_fields(cfg)[ignored[0]]
            raise ConfigError(
                f"{here}: {ignored[0]}: set, but {reason}, so the run never reads it; remove it"
            )
        k = key(values)
        if k in seen:
            raise ConfigError(
                f"{here}: trains the same configuration as baseline {seen[k]}; remove one of them"
            )
        seen[k] = str(name)


def _check_baseline_values(values: Mapping[str, Any], space: SearchSpace, here: str) -> None:
    for path in values:
        check_settable(str(path), here, "set by a baseline")
        if path == "seed" and "seed" in space:
            raise ConfigError(
                f"{here}: seed: a baseline runs once per seed of the search space; remove seed"
            )


def _seed_values(space: SearchSpace) -> list[int | None]:
    """The seeds a baseline runs with: those of a searched ``seed``, else the run config's."""
    p = space.params.get("seed")
    if isinstance(p, ChoiceParam | IntParam):
        return list(p.grid())
    return [None]


def baseline_trials(baselines: Mapping[str, Mapping[str, Any]], space: SearchSpace) -> list[dict]:
    """One trial config per baseline and seed, in the order the study file lists them."""
    out = []
    for name, values in baselines.items():
        for seed in _seed_values(space):
            trial = {**values, BASELINE_KEY: str(name)}
            if seed is not None:
                trial["seed"] = seed
            out.append(trial)
    return out
