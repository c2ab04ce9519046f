"""s2ap: adversarial pruning with S2AP (score-space sharpness-aware adversarial pruning).

The method as a PyTorch library: score-based masks (HYDRA or HARP host), the S2AP score-space
min-max, the three stages (pretrain, prune, finetune) and the paper's metrics. No Ray, no MLflow
here: ``tune`` (the study service) and ``tracking`` (MLflow) build on this package.
"""

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
