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

The format is Ray's and undocumented: this reader knows the one of :data:`RAY_FORMAT_VERSION`
(the pinned Ray; ``tests/tune/test_ray_record.py`` checks it against a real experiment). A
record it cannot read raises :class:`RayRecordFormatError`, which says which key moved and in
which Ray, instead of a ``KeyError`` deep in ``s2ap status``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from tune.trial.checkpoint import is_complete_checkpoint

__all__ = [
    "RAY_FORMAT_VERSION",
    "RayRecordFormatError",
    "TrialRecord",
    "has_trial_records",
    "read_trial_records",
]

#: The Ray release whose ``experiment_state-*.json`` this module reads (constraints.txt pins it).
RAY_FORMAT_VERSION = "2.60.0"

_STATE_GLOB = "experiment_state-*.json"  # Ray's TuneController.CKPT_FILE_TMPL


class RayRecordFormatError(RuntimeError):
    """Ray's experiment record does not have the layout this reader knows (a Ray upgrade)."""


def _format_error(state_file: Path, problem: str) -> RayRecordFormatError:
    try:
        installed = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        installed = "not installed"
    return RayRecordFormatError(
        f"{state_file}: {problem}. s2ap reads the experiment record of Ray "
        f"{RAY_FORMAT_VERSION} (the pinned version); this environment has ray {installed}. "
        f"Install ray=={RAY_FORMAT_VERSION} (constraints.txt), or update "
        "tune/results/ray_record.py to the new format"
    )


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial as Ray recorded it (the fields :func:`tune.results.trials.trial_row` reads)."""

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
        if is_complete_checkpoint(folder):
            return str(folder)
    return None


#: Keys of a trial's state and run-metadata documents that the reader needs.
_STATE_KEYS = ("trial_id", "status", "relative_logdir", "config")
_META_KEYS = ("last_result", "num_failures")


def _documents(state_file: Path, entry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's two JSON documents, checked for the keys :func:`_record` reads."""
    if not (isinstance(entry, list | tuple) and len(entry) == 2):
        raise _format_error(state_file, "a trial_data entry is not a [state, metadata] pair")
    try:
        # json.loads with no object hook: a cloudpickle blob stays a dict (or a hex string).
        state, meta = (json.loads(doc) if isinstance(doc, str) else doc for doc in entry)
    except json.JSONDecodeError as exc:
        raise _format_error(state_file, f"a trial's record is not JSON ({exc})") from None
    for doc, keys, what in ((state, _STATE_KEYS, "state"), (meta, _META_KEYS, "metadata")):
        missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise _format_error(state_file, f"a trial's {what} has no {', '.join(missing)}")
    return state, meta


def _record(experiment_dir: Path, state: dict[str, Any], meta: dict[str, Any]) -> TrialRecord:
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
    entries = data.get("trial_data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise _format_error(state_file, "no 'trial_data' list")
    return [_record(d, *_documents(state_file, entry)) for entry in entries]
