"""Ray Tune's record of a study's trials, read as plain JSON: nothing in it is unpickled.

Ray keeps its record in the experiment folder as ``experiment_state-<time>.json``: per trial,
its state (id, status, config, ...) and its run metadata (last result, failures, error file),
each a JSON document in which the fields Ray cannot write as JSON are cloudpickle blobs.
Ray's own reader (``ray.tune.ExperimentAnalysis``) unpickles those blobs, so reading a copied
or downloaded study folder through it would run whatever code they hold. Here they are never
decoded: only plain JSON fields are read, and a trial's checkpoint is found on disk (its
newest ``checkpoint_NNNNNN`` folder that holds a whole s2ap trial checkpoint).

Only ``s2ap tune --resume`` loads Ray's pickles (``tuner.pkl``, the searcher's state and these
blobs), through Ray itself: resume only study folders you or your cluster wrote.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = ["TrialRecord", "has_trial_records", "read_trial_records"]

_STATE_GLOB = "experiment_state-*.json"  # Ray's TuneController.CKPT_FILE_TMPL
#: What a finished checkpoint folder holds (tune.checkpoint writes both).
_CHECKPOINT_FILES = ("state.pt", "trial.json")


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial as Ray recorded it (the fields :func:`tune.results.trial_row` reads)."""

    trial_id: str
    status: str
    """TERMINATED, ERROR, PENDING or PAUSED (Ray records a running trial as PENDING)."""
    config: dict[str, Any]
    last_result: dict[str, Any]
    num_failures: int
    """How often the trial failed and was restarted from its last checkpoint (or gave up)."""
    checkpoint: str | None
    error_file: str | None
    path: Path


def _newest_state_file(experiment_dir: Path) -> Path | None:
    # Ray picks the greatest name, as here: the names end in a sortable timestamp.
    found = sorted(experiment_dir.glob(_STATE_GLOB))
    return found[-1] if found else None


def has_trial_records(experiment_dir: str | Path) -> bool:
    """True when Ray has recorded this experiment (a study that started)."""
    d = Path(experiment_dir)
    return d.is_dir() and _newest_state_file(d) is not None


def _latest_checkpoint(trial_dir: Path) -> str | None:
    for folder in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        if all((folder / name).is_file() for name in _CHECKPOINT_FILES):
            return str(folder)
    return None


def _record(experiment_dir: Path, state_json: str, metadata_json: str) -> TrialRecord:
    # json.loads with no object hook: a cloudpickle blob stays a dict (or a hex string).
    state, meta = json.loads(state_json), json.loads(metadata_json)
    trial_dir = experiment_dir / str(state.get("relative_logdir") or "")
    status = str(state.get("status", "PENDING"))
    error_name = meta.get("error_filename")
    error_file = trial_dir / error_name if isinstance(error_name, str) else None
    config, last = state.get("config"), meta.get("last_result")
    return TrialRecord(
        trial_id=str(state["trial_id"]),
        status="PENDING" if status == "RUNNING" else status,  # as Ray restores it
        config=config if isinstance(config, dict) else {},
        last_result=last if isinstance(last, dict) else {},
        num_failures=int(meta.get("num_failures") or 0),
        checkpoint=_latest_checkpoint(trial_dir) if state.get("relative_logdir") else None,
        error_file=str(error_file) if error_file is not None and error_file.is_file() else None,
        path=trial_dir,
    )


def read_trial_records(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of the experiment, from Ray's newest record (empty if there is none)."""
    d = Path(experiment_dir)
    state_file = _newest_state_file(d) if d.is_dir() else None
    if state_file is None:
        return []
    data = json.loads(state_file.read_text(encoding="utf-8"))
    return [_record(d, state, meta) for state, meta in data.get("trial_data", [])]
