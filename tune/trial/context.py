"""What the driver hands every trial: ``config["s2ap"]``, plain data beside the sampled values.

A trial's config is the sampled values under their dotted run-config paths
(``{"prune.rho": 0.03, ...}``) plus the context under :data:`CONTEXT_KEY`: the base run config,
the phases, the seeds, the dense model's path and hash, the MLflow study run to nest under, the
GPU share. Plain data, so Ray can ship it to any node and store it in the experiment state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from s2ap.config import ConfigError, RunConfig
from tune.study.baselines import BASELINE_KEY
from tune.study.space import build_trial_config

__all__ = [
    "CONTEXT_KEY",
    "TrialConfigError",
    "TrialContext",
    "baseline_name",
    "make_trial_context",
    "trial_run_config",
]

#: Key of the driver-prepared context in a trial's config.
CONTEXT_KEY = "s2ap"


class TrialConfigError(ConfigError):
    """A trial's config is unusable: no context, or the sampled values make an invalid run
    config (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """The plain-data context every trial of a study receives (see the module docstring)."""

    study: str
    base: dict[str, Any]
    """The study's run config (JSON form) that the sampled values are applied to."""
    phases: tuple[str, ...]
    seeds: tuple[int, ...] | None = None
    """Replicates run inside the trial (``study.seeds``); ``None``: the trial's own seed."""
    dense_path: str | None = None
    dense_hash: str | None = None
    tracking: dict[str, str] | None = None
    """``StudyTracker.trial_context()``: where the trial's MLflow run goes; ``None``: nowhere."""
    gpu: float = 0.0
    allow_cpu_fallback: bool = False
    test_eval: dict[str, Any] | None = None
    """``evaluate`` overrides (possibly empty): evaluate on the test set at the trial's end."""

    def to_config(self) -> dict[str, Any]:
        """The JSON-able form that goes under :data:`CONTEXT_KEY`."""
        data = dataclasses.asdict(self)
        data["phases"] = list(self.phases)
        data["seeds"] = list(self.seeds) if self.seeds else None
        return data

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialContext:
        """The context of a trial's config; :class:`TrialConfigError` if it has none."""
        ctx = config.get(CONTEXT_KEY)
        if not isinstance(ctx, Mapping):
            raise TrialConfigError(
                f"trial config has no {CONTEXT_KEY!r} context; start trials through "
                "tune.driver.launch (s2ap tune) or pass make_trial_context(...) under that key"
            )
        known = {f.name for f in dataclasses.fields(cls)}  # older contexts may hold more keys
        fields = {k: v for k, v in ctx.items() if k in known}
        fields["phases"] = tuple(fields.get("phases") or ())
        fields["seeds"] = tuple(fields["seeds"]) if fields.get("seeds") else None
        return cls(**fields)


def make_trial_context(
    *,
    study_name: str,
    base: dict[str, Any],
    phases: Sequence[str],
    seeds: Sequence[int] | None,
    dense_path: str | None = None,
    dense_hash: str | None = None,
    tracking: dict[str, str] | None = None,
    gpu: float = 0.0,
    allow_cpu_fallback: bool = False,
    test_eval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The context (JSON form) every trial of a study receives under :data:`CONTEXT_KEY`."""
    return TrialContext(
        study=study_name,
        base=base,
        phases=tuple(phases),
        seeds=tuple(seeds) if seeds else None,
        dense_path=dense_path,
        dense_hash=dense_hash,
        tracking=tracking,
        gpu=float(gpu),
        allow_cpu_fallback=bool(allow_cpu_fallback),
        test_eval=test_eval,
    ).to_config()


def baseline_name(config: Mapping[str, Any]) -> str | None:
    """The baseline a trial runs (``study.baselines``), or ``None`` for a searched trial."""
    name = config.get(BASELINE_KEY)
    return str(name) if name else None


def trial_run_config(ctx: TrialContext, sampled: Mapping[str, Any]) -> RunConfig:
    """The trial's run config: the base with the sampled values; names an invalid field."""
    try:
        return build_trial_config(ctx.base, sampled)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in sampled.items())
        raise TrialConfigError(f"sampled configuration ({shown}) is invalid:\n{exc}") from None
