"""A trial's MLflow run: nested under the study run, found again by its trial id, holding the
trial's metrics, masks (``.s2mask``) and weights.

Opened with :meth:`TrialTracker.open` from plain data (:meth:`tracking.runs.StudyTracker.
trial_context`), so a Ray worker on another node can open it; a restarted trial reopens its run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

from tracking.artifacts import (
    MASK_SUFFIX,
    STATE_DICT_SUFFIX,
    read_mask_header,
    save_masks,
    save_state_dict,
)
from tracking.client import (
    ROLE_TRIAL,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ID,
    filter_quote,
    resolve_tracking_uri,
    sqlite_path,
)
from tracking.params import check_name
from tracking.writer import RunWriter

__all__ = ["TrialTracker"]


def _trial_storage_root(
    tracking_uri: str, storage_root: str | os.PathLike[str] | None
) -> str | os.PathLike[str]:
    """Where the trial's outbox lives: as given, else beside an sqlite database."""
    if storage_root is not None:
        return storage_root
    db = sqlite_path(tracking_uri)
    if db is None:
        raise ValueError(
            "TrialTracker.open: pass storage_root= (where the outbox for unsent writes "
            f"lives) when tracking to {tracking_uri}"
        )
    return db.parent


class TrialTracker(RunWriter):
    """One trial's nested MLflow run. Create with :meth:`open` (usable inside a Ray worker)."""

    def __init__(self) -> None:  # use TrialTracker.open
        self.trial_id = ""
        self.experiment_name = ""
        self.experiment_id = ""
        self.parent_run_id = ""
        self.run_id = ""
        self.resumed = False

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment_name: str,
        parent_run_id: str,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        *,
        storage_root: str | os.PathLike[str] | None = None,
        run_name: str | None = None,
        experiment_id: str | None = None,
    ) -> TrialTracker:
        """Find this trial's run under ``parent_run_id`` (by tag ``s2ap.trial_id``) or create it.

        ``params`` is the trial's full config (flattened with dots). On a reopened run only missing
        params are logged; a changed value raises :class:`ParamConflictError`. ``tags`` are added
        to ``s2ap.study``/``s2ap.trial_id``/``s2ap.role``/version tags (pass ``s2ap.device``).
        ``storage_root`` holds the outbox; it defaults to the sqlite database's folder and is
        required for http servers.
        """
        if not trial_id:
            raise ValueError("trial_id must be a non-empty string")
        storage_root = _trial_storage_root(tracking_uri, storage_root)
        self = cls()
        self._init_writer(resolve_tracking_uri(tracking_uri, storage_root), storage_root, trial_id)
        self.trial_id, self.experiment_name = trial_id, experiment_name
        self.parent_run_id = parent_run_id
        # Known from the study's context: one lookup less per trial.
        self.experiment_id = experiment_id or self._experiment_id()
        identity = {TAG_STUDY: experiment_name, TAG_TRIAL_ID: trial_id, TAG_ROLE: ROLE_TRIAL}
        flt = (
            f"tags.`{TAG_TRIAL_ID}` = {filter_quote(trial_id)} AND "
            f"tags.`{TAG_PARENT}` = {filter_quote(parent_run_id)}"
        )
        self._open_run(
            self.experiment_id,
            flt,
            f"trial {trial_id!r}",
            run_name or trial_id,
            params,
            self._run_tags(params, tags or {}, identity),
            created_tags={TAG_PARENT: parent_run_id},
        )
        return self

    def _experiment_id(self) -> str:
        name = self.experiment_name
        exp = self._call(lambda: self._client.get_experiment_by_name(name), "get_experiment")
        if exp is None:
            raise ValueError(
                f"MLflow experiment {name!r} does not exist at {self.tracking_uri}; start "
                "the study first (StudyTracker.start) and pass its trial_context() to the trial"
            )
        return exp.experiment_id

    def log_masks(
        self,
        masks: Mapping[str, torch.Tensor],
        header: Mapping[str, Any] | None = None,
        name: str = "final",
    ) -> str:
        """Store masks as the artifact ``masks/<name>.s2mask``; return the payload sha256.

        Also tags the run with ``s2ap.masks.<name>.sha256`` and ``.sparsity``; ``trial_id`` and
        ``study`` are added to the header unless given.
        """
        check_name(name, "mask name")
        meta = dict(header or {})
        meta.setdefault("study", self.experiment_name)
        meta.setdefault("trial_id", self.trial_id)
        with tempfile.TemporaryDirectory(prefix="s2ap-mask-") as tmp:
            path = os.path.join(tmp, f"{name}{MASK_SUFFIX}")
            sha = save_masks(path, masks, meta)
            sparsity = read_mask_header(path)["global_sparsity"]
            self.log_artifact(path, "masks")
        self.set_tags(
            {f"s2ap.masks.{name}.sha256": sha, f"s2ap.masks.{name}.sparsity": f"{sparsity:.6f}"}
        )
        return sha

    def log_state_dict(self, state_dict: Mapping[str, torch.Tensor], name: str = "final") -> str:
        """Store weights as ``weights/<name>.safetensors`` (or ``.pt``); return the artifact path.

        Tags the run with ``s2ap.weights.<name>.sha256``.
        """
        check_name(name, "weights name")
        filename = f"{name}{STATE_DICT_SUFFIX}"
        with tempfile.TemporaryDirectory(prefix="s2ap-weights-") as tmp:
            path = os.path.join(tmp, filename)
            sha = save_state_dict(path, state_dict)
            self.log_artifact(path, "weights")
        self.set_tags({f"s2ap.weights.{name}.sha256": sha})
        return f"weights/{filename}"
