"""A trial's MLflow run, seen from the trial: every write a trial makes goes through one
:class:`TrialRecorder` (a thin wrapper of :class:`tracking.runs.TrialTracker`).

The recorder is opened once the trial's pipelines exist, with all params and tags at once; a
trial that fails while it is built opens it only to record the failure (FAILED, with the
reason in ``s2ap.error``). How a trial ends is its run's ``s2ap.outcome`` tag
(:data:`OUTCOMES`). Without a tracking context (a Trainable used outside a study) it records
nothing. What a trial logs, and when, is decided here, in one place: which params
(:func:`trial_params`), which tags (:func:`trial_tags`), per-epoch metrics, masks, weights,
test numbers and the outcome.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from s2ap.arms import effective_config, ignored_fields, method_name
from s2ap.config import RunConfig
from tracking.client import OUTCOME_COMPLETED, TAG_OUTCOME
from tune.trial.context import TrialContext

if TYPE_CHECKING:
    import torch

    from tracking.runs import TrialTracker

__all__ = [
    "COMPLETED",
    "ERROR",
    "INTERRUPTED",
    "ORPHANED",
    "OUTCOMES",
    "STOPPED_EARLY",
    "TAG_BASELINE",
    "TrialRecorder",
    "test_metrics",
    "trial_params",
    "trial_run_name",
    "trial_tags",
]

_log = logging.getLogger(__name__)

#: How a trial ends (its run's ``s2ap.outcome`` tag) -> the MLflow status its run ends with.
#: A trial the scheduler stopped early ended normally: FINISHED, as Ray Tune's own MLflow
#: callback ends it (the tag says it is not a result; readers select on the tag). Only an error
#: is FAILED. KILLED is for runs really killed: the unfinished trials of an interrupted study
#: (``interrupted``), the orphans of a killed driver (``orphaned``; :mod:`tune.driver.reconcile`).
COMPLETED = OUTCOME_COMPLETED
STOPPED_EARLY = "stopped_early"
ERROR = "error"
INTERRUPTED = "interrupted"
ORPHANED = "orphaned"
OUTCOMES = {
    COMPLETED: "FINISHED",
    STOPPED_EARLY: "FINISHED",
    ERROR: "FAILED",
    INTERRUPTED: "KILLED",
    ORPHANED: "KILLED",
}
#: Tag naming the baseline a trial runs (absent on searched trials).
TAG_BASELINE = "s2ap.baseline"


def trial_run_name(cfg: RunConfig, trial_id: str) -> str:
    """The trial's run name in MLflow: its method, then its id (``harp+s2ap-3b6e1_00004``), so
    that the runs table reads by method and sorts runs of one method together."""
    return f"{method_name(cfg.prune.host, cfg.prune.perturbation)}-{trial_id}"


def trial_params(cfg: RunConfig, ctx: TrialContext) -> dict[str, Any]:
    """The params of a trial's run: the run config it used, plus how the study runs it.

    Fields the trial's arm never reads (:func:`s2ap.arms.ignored_fields`: a HYDRA trial's
    ``prune.rho``) are left out, so the runs table never shows a value that did not matter.
    Also stored in the trial's checkpoint (``trial.json``): reopening the run must log the
    same values, since MLflow params are write-once.
    """
    return {
        **effective_config(cfg),
        "study.trainable": "prune" if list(ctx.phases) == ["prune"] else "pipeline",
        "study.seeds": list(ctx.seeds) if ctx.seeds else None,
    }


def trial_tags(
    cfg: RunConfig,
    ctx: TrialContext,
    *,
    sampled: Mapping[str, Any],
    trial_name: str,
    device_info: Mapping[str, str] | None,
    baseline: str | None = None,
) -> dict[str, str]:
    """Tags of a trial's run: versions, host and worker PID, method, what was sampled (the
    values its arm uses), the baseline it runs (``s2ap.baseline``), the device."""
    import ray

    from tracking.client import TAG_DEVICE

    ignored = ignored_fields(cfg)
    used = {k: v for k, v in sampled.items() if k not in ignored}
    tags = {
        "s2ap.ray_version": ray.__version__,
        # The version without the import: a trial never uses Optuna (it runs in the driver).
        "s2ap.optuna_version": importlib.metadata.version("optuna"),
        "s2ap.hostname": socket.gethostname(),
        "s2ap.pid": str(os.getpid()),  # the worker running the trial now (set again on restart)
        "s2ap.trial_name": trial_name,
        "s2ap.searched": json.dumps(used, sort_keys=True),
        "s2ap.method": method_name(cfg.prune.host, cfg.prune.perturbation),
        "s2ap.dense_hash": ctx.dense_hash or "",
        # The Ray node the trial runs on (set again when it restarts elsewhere).
        "s2ap.node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
    }
    if baseline:
        tags[TAG_BASELINE] = baseline
    if device_info:
        tags[TAG_DEVICE] = device_info["device_name"]
        tags["s2ap.gpu_ids"] = device_info["gpu_ids"]
    return tags


def test_metrics(numbers: Mapping[str, Any]) -> dict[str, float]:
    """The ``test_*`` numbers of a test evaluation (what goes to MLflow)."""
    return {k: v for k, v in numbers.items() if k.startswith("test_") and isinstance(v, float)}


def _last_epoch_step(tracker: TrialTracker) -> int:
    """The last epoch a reopened run already holds (0: none): a trial restarted from its
    checkpoint redoes the epochs after it, and must not log them twice.

    Read after :meth:`TrialTracker.open`, which first sends what a previous process of the
    trial left queued: the run's metrics as it was found (before that) could miss an epoch."""
    from tracking.runs import metric_history

    try:
        history = metric_history(tracker.client, tracker.run_id, "epoch")
    except Exception:  # best effort: at worst a redone epoch is logged twice
        _log.warning("could not read the logged epochs of trial %s", tracker.trial_id)
        return 0
    return max((step for step, _ in history), default=0)


class TrialRecorder:
    """All of one trial's MLflow interaction; a no-op without a tracking context."""

    def __init__(self, tracker: TrialTracker | None = None, logged_through: int = 0) -> None:
        self._tracker = tracker
        self._finished = False
        # Epochs up to here are in the run already (a restarted trial's): logged once only.
        self._logged_through = logged_through

    @classmethod
    def open(
        cls,
        tracking: Mapping[str, str] | None,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        run_name: str | None = None,
    ) -> TrialRecorder:
        """Find (by trial id, under the study run) or create the trial's run and log
        ``params`` and ``tags``; a disabled recorder when ``tracking`` is ``None``."""
        if not tracking:
            return cls(None)
        from tracking.runs import TrialTracker

        tracker = TrialTracker.open(
            tracking["tracking_uri"],
            tracking["experiment_name"],
            tracking["parent_run_id"],
            trial_id,
            params,
            tags,
            storage_root=tracking.get("storage_root"),
            run_name=run_name,
            experiment_id=tracking.get("experiment_id"),
        )
        recorder = cls(tracker, _last_epoch_step(tracker) if tracker.resumed else 0)
        tracker.start_background()  # epochs' metrics overlap the next epoch (tracking.writer)
        return recorder

    @property
    def enabled(self) -> bool:
        return self._tracker is not None

    def log_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        """One epoch's metrics (numbers only; the tracker drops the rest), with ``epoch``
        among them; an epoch the run already holds (redone after a restore) is skipped."""
        if self._tracker is not None and step > self._logged_through:
            self._tracker.log_metrics(dict(metrics), step=step)

    def spill(self) -> None:
        """Make the epochs handed to the sender durable (the outbox) before a checkpoint: a
        trial restored from that checkpoint never trains those epochs again."""
        if self._tracker is not None:
            self._tracker.spill()

    @property
    def queued_writes(self) -> int:
        """Writes that failed over to the outbox so far (0 without tracking)."""
        return self._tracker.queued_writes if self._tracker is not None else 0

    def log_masks(
        self, masks: Mapping[str, torch.Tensor], header: Mapping[str, Any], name: str
    ) -> None:
        if self._tracker is not None:
            self._tracker.log_masks(masks, header, name)

    def log_weights(self, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
        if self._tracker is not None:
            self._tracker.log_state_dict(state_dict, name)

    def log_test(self, numbers: Mapping[str, Any], step: int) -> None:
        """Test-set numbers: MLflow only (Optuna and ASHA never see them)."""
        if self._tracker is not None:
            self._tracker.log_metrics(test_metrics(numbers), step=step)

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the run with ``outcome`` (:data:`OUTCOMES`: ``completed``, ``stopped_early``,
        ``error`` with the reason, ...) as its tag and the status that goes with it; only the
        first call counts. An unknown outcome is a ``ValueError``; past that it never raises:
        tracking must not hide the trial's own outcome."""
        if outcome not in OUTCOMES:
            raise ValueError(f"finish({outcome!r}): a trial ends as one of {sorted(OUTCOMES)}")
        if self._tracker is None or self._finished:
            return
        self._finished = True
        try:
            tags = {TAG_OUTCOME: outcome}
            if error is not None:
                tags["s2ap.error"] = f"{type(error).__name__}: {error}"[:4000]
            self._tracker.set_tags(tags)
            self._tracker.finish(OUTCOMES[outcome])
        except Exception:
            _log.exception("could not finish the MLflow run of trial %s", self._tracker.trial_id)
