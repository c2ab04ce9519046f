"""s2ap: adversarial pruning with S2AP (score-space sharpness-aware adversarial pruning).

The method as a PyTorch library: score-based masks (HYDRA or HARP host), the S2AP score-space
min-max, the three stages (pretrain, prune, finetune) and the paper's metrics. No Ray, no MLflow
here: ``tune`` (the study service) and ``tracking`` (MLflow) build on this package.

The names below are imported on first use (PEP 562), so that ``import s2ap.config`` (what a
study file, a mask header or a read command needs) does not import torch, which takes seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2ap.adversarial import AttackSettings, make_objective
    from s2ap.compute import Compute
    from s2ap.config import RunConfig, load_run_config
    from s2ap.harp import HarpHost
    from s2ap.masking import (
        HydraHost,
        ScoreMasking,
        apply_masks_to_state_dict,
        effective_weights,
        get_masking,
    )
    from s2ap.metrics import (
        accuracy,
        autoattack_accuracy,
        hessian_top_eigenvalue,
        mask_hamming,
        robust_accuracy,
        score_sharpness,
    )
    from s2ap.perturbation import S2AP, ascent_perturbation, random_perturbation
    from s2ap.pipeline import Pipeline

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "AttackSettings": "s2ap.adversarial",
    "make_objective": "s2ap.adversarial",
    "Compute": "s2ap.compute",
    "RunConfig": "s2ap.config",
    "load_run_config": "s2ap.config",
    "HarpHost": "s2ap.harp",
    "HydraHost": "s2ap.masking",
    "ScoreMasking": "s2ap.masking",
    "apply_masks_to_state_dict": "s2ap.masking",
    "effective_weights": "s2ap.masking",
    "get_masking": "s2ap.masking",
    "accuracy": "s2ap.metrics",
    "autoattack_accuracy": "s2ap.metrics",
    "hessian_top_eigenvalue": "s2ap.metrics",
    "mask_hamming": "s2ap.metrics",
    "robust_accuracy": "s2ap.metrics",
    "score_sharpness": "s2ap.metrics",
    "S2AP": "s2ap.perturbation",
    "ascent_perturbation": "s2ap.perturbation",
    "random_perturbation": "s2ap.perturbation",
    "Pipeline": "s2ap.pipeline",
}

__all__ = [
    "S2AP",
    "AttackSettings",
    "Compute",
    "HarpHost",
    "HydraHost",
    "Pipeline",
    "RunConfig",
    "ScoreMasking",
    "__version__",
    "accuracy",
    "apply_masks_to_state_dict",
    "ascent_perturbation",
    "autoattack_accuracy",
    "effective_weights",
    "get_masking",
    "hessian_top_eigenvalue",
    "load_run_config",
    "make_objective",
    "mask_hamming",
    "random_perturbation",
    "robust_accuracy",
    "score_sharpness",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's2ap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
