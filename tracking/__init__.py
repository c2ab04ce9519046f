"""MLflow tracking for s2ap studies: runs, metrics, mask artifacts, plots, the best trial, the UI.

Imports torch, numpy, mlflow and matplotlib (and may import ``s2ap``); never ray or ``tune``.
Plotting lives in :mod:`tracking.plots` and the results page in :mod:`tracking.report` (both
imported on use, to keep this import light).

Modules, each on one concept: :mod:`~tracking.client` (tracking URIs, clients, tag names),
:mod:`~tracking.outbox` (writes that survive an outage), :mod:`~tracking.writer` (writing to one
run), :mod:`~tracking.runs` (the study run) and :mod:`~tracking.trial` (a trial run),
:mod:`~tracking.artifacts` (mask and weight files), :mod:`~tracking.selection` and
:mod:`~tracking.pull` (the best trial, pulling its mask), :mod:`~tracking.server` and
:mod:`~tracking.ui` (the MLflow server, the UI on a study's trials).
"""

from tracking.artifacts import (
    MASK_SUFFIX,
    STATE_DICT_SUFFIX,
    MaskFileError,
    config_hash,
    file_sha256,
    load_masks,
    load_state_dict,
    read_mask_header,
    save_masks,
    save_state_dict,
)
from tracking.client import (
    EXPERIMENT_TAGS,
    TAG_BEST_TRIAL_ID,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_OBJECTIVES,
    TAG_PHASE,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ID,
    TrackingUnavailableError,
    check_tracking_server,
    make_client,
    resolve_tracking_uri,
)
from tracking.outbox import (
    FlushReport,
    PendingOutbox,
    flush_outbox,
    pending_outbox,
)
from tracking.params import flatten_params, version_tags
from tracking.pull import (
    BestTrial,
    NoFinishedTrialError,
    PulledMask,
    StudyNotFoundError,
    find_best_trial,
    pull_best_mask,
    pull_mask,
)
from tracking.runs import StudyTracker, metric_history, objective_tags
from tracking.selection import Objective
from tracking.server import (
    MlflowServer,
    MlflowServerError,
    exposure_warning,
    free_port,
    mlflow_server_command,
    mlflow_server_env,
)
from tracking.trial import TrialTracker
from tracking.ui import StudyPages, serve_study_ui, study_pages
from tracking.writer import ParamConflictError

__all__ = [
    "EXPERIMENT_TAGS",
    "MASK_SUFFIX",
    "STATE_DICT_SUFFIX",
    "TAG_BEST_TRIAL_ID",
    "TAG_OBJECTIVES",
    "TAG_OBJECTIVE_METRIC",
    "TAG_OBJECTIVE_MODE",
    "TAG_PHASE",
    "TAG_ROLE",
    "TAG_STUDY",
    "TAG_TRIAL_ID",
    "BestTrial",
    "FlushReport",
    "MaskFileError",
    "MlflowServer",
    "MlflowServerError",
    "NoFinishedTrialError",
    "Objective",
    "ParamConflictError",
    "PendingOutbox",
    "PulledMask",
    "StudyNotFoundError",
    "StudyPages",
    "StudyTracker",
    "TrackingUnavailableError",
    "TrialTracker",
    "check_tracking_server",
    "config_hash",
    "exposure_warning",
    "file_sha256",
    "find_best_trial",
    "flatten_params",
    "flush_outbox",
    "free_port",
    "load_masks",
    "load_state_dict",
    "make_client",
    "metric_history",
    "mlflow_server_command",
    "mlflow_server_env",
    "objective_tags",
    "pending_outbox",
    "pull_best_mask",
    "pull_mask",
    "read_mask_header",
    "resolve_tracking_uri",
    "save_masks",
    "save_state_dict",
    "serve_study_ui",
    "study_pages",
    "version_tags",
]
