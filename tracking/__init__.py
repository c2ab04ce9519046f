"""MLflow tracking for s2ap studies: runs, metrics, mask artifacts, plots, pulling the best mask.

Imports torch, numpy, mlflow and matplotlib (and may import ``s2ap``); never ray or ``tune``.
Plotting lives in :mod:`tracking.plots` (imported on use, to keep this import light).
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
from tracking.outbox import (
    FlushReport,
    PendingOutbox,
    RetryPolicy,
    flush_outbox,
    pending_outbox,
)
from tracking.pull import (
    BestTrial,
    NoFinishedTrialError,
    PulledMask,
    StudyNotFoundError,
    find_best_trial,
    pull_best_mask,
    pull_mask,
)
from tracking.runs import (
    EXPERIMENT_TAGS,
    ParamConflictError,
    StudyTracker,
    TrackingUnavailableError,
    TrialTracker,
    check_tracking_server,
    flatten_params,
    make_client,
    metric_history,
    resolve_tracking_uri,
)
from tracking.server import (
    MlflowServer,
    MlflowServerError,
    free_port,
    mlflow_server_command,
    mlflow_server_env,
)

__all__ = [
    "EXPERIMENT_TAGS",
    "MASK_SUFFIX",
    "STATE_DICT_SUFFIX",
    "BestTrial",
    "FlushReport",
    "MaskFileError",
    "MlflowServer",
    "MlflowServerError",
    "NoFinishedTrialError",
    "ParamConflictError",
    "PendingOutbox",
    "PulledMask",
    "RetryPolicy",
    "StudyNotFoundError",
    "StudyTracker",
    "TrackingUnavailableError",
    "TrialTracker",
    "check_tracking_server",
    "config_hash",
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
    "pending_outbox",
    "pull_best_mask",
    "pull_mask",
    "read_mask_header",
    "resolve_tracking_uri",
    "save_masks",
    "save_state_dict",
]
