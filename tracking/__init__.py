"""MLflow tracking for s2ap studies: runs, metrics, mask artifacts, plots, the best trial, the UI.

Imports torch, numpy, mlflow and matplotlib (and may import ``s2ap``); never ray or ``tune``.
Every name below is imported on first use (PEP 562): ``import tracking.artifacts`` (masks,
``s2ap run``) or ``tracking.client``'s URI checks must not pay MLflow's import (~1 s); the
package's names stay importable as ``from tracking import NAME``. Plotting lives in
:mod:`tracking.plots` and the results page in :mod:`tracking.report` (imported on use).

Modules, each on one concept: :mod:`~tracking.client` (tracking URIs, clients, tag names),
:mod:`~tracking.outbox` (writes that survive an outage), :mod:`~tracking.writer` (writing to one
run), :mod:`~tracking.runs` (the study run) and :mod:`~tracking.trial` (a trial run),
:mod:`~tracking.artifacts` (mask and weight files), :mod:`~tracking.selection` and
:mod:`~tracking.pull` (the best trial, pulling its mask), :mod:`~tracking.server` and
:mod:`~tracking.ui` (the MLflow server, the UI on a study's trials).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Module (under ``tracking.``) -> the names this package re-exports from it.
_EXPORTS: dict[str, str] = {
    "artifacts": (
        "MASK_SUFFIX STATE_DICT_SUFFIX MaskFileError config_hash file_sha256 load_masks "
        "load_state_dict read_mask_header save_masks save_state_dict"
    ),
    "client": (
        "EXPERIMENT_TAGS TAG_BEST_TRIAL_ID TAG_OBJECTIVE_METRIC TAG_OBJECTIVE_MODE "
        "TAG_OBJECTIVES TAG_PHASE TAG_ROLE TAG_STUDY TAG_TRIAL_ID TrackingUnavailableError "
        "check_tracking_server make_client resolve_tracking_uri"
    ),
    "outbox": "FlushReport PendingOutbox flush_outbox pending_outbox",
    "params": "flatten_params version_tags",
    "pull": (
        "BestTrial NoFinishedTrialError PulledMask StudyNotFoundError find_best_trial "
        "pull_best_mask pull_mask"
    ),
    "runs": "StudyTracker metric_history objective_tags",
    "selection": "Objective",
    "server": (
        "MlflowServer MlflowServerError exposure_warning free_port mlflow_server_command "
        "mlflow_server_env"
    ),
    "trial": "TrialTracker",
    "ui": "StudyPages serve_study_ui study_pages",
    "writer": "ParamConflictError",
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names.split()}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
