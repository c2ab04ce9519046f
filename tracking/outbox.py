"""Writes that survive an MLflow outage: a local outbox, replayed in order.

Why: a study runs for hours on a cluster; an MLflow server restart or a network blip must not kill
trials or lose metrics. Each write is one MLflow call, retried by MLflow's own HTTP client (its
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` / ``_BACKOFF_JITTER`` / ``_TIMEOUT``
variables; see :mod:`tracking.client`). A write that still fails with a *transient* error
(connection refused, timeout, 5xx, 429, sqlite "database is locked") is appended to
``<storage_root>/mlflow-outbox/<key>.jsonl`` (artifacts are copied next to it) and replayed, in
order, before the next write and at ``finish()``. :func:`pending_outbox` and :func:`flush_outbox`
let the command line report and send what is left after a study ends.

Permanent errors (bad parameter values, a deleted run, ...) are raised immediately: retrying them
would never succeed. If one shows up during a replay, the entry is moved to
``<key>.rejected.jsonl`` with the error so the rest of the queue can drain.

Writes are described as JSON operations (``log_batch``, ``log_artifact``, ``set_terminated``) so
they can be queued on disk and executed later by a different process. A ``log_batch`` operation
(metrics, params and tags of one epoch) is one MLflow request unless it exceeds MLflow's
per-request limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from tracking.client import make_client

_log = logging.getLogger(__name__)

OUTBOX_DIRNAME = "mlflow-outbox"


# --------------------------------------------------------------------------------------------
# which errors are worth queueing

# MLflow error codes that no amount of retrying fixes are mapped to 4xx HTTP statuses.
_TRANSIENT_STATUS = {408, 429}


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` may go away: network failures, timeouts, 5xx/429 and locked sqlite."""
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status in _TRANSIENT_STATUS
    try:
        import requests

        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            return status >= 500 or status in _TRANSIENT_STATUS
        if isinstance(exc, requests.RequestException):
            return True
    except ImportError:  # pragma: no cover - requests ships with mlflow
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    return name == "OperationalError"  # sqlalchemy / sqlite3 lock errors


# --------------------------------------------------------------------------------------------
# operations


Batch = tuple[list[Metric], list[Param], list[RunTag]]


def split_batch(metrics: list[Metric], params: list[Param], tags: list[RunTag]) -> Iterator[Batch]:
    """Cut one write into as few ``log_batch`` requests as MLflow's limits allow (usually one):
    at most 100 params and tags together, 1000 metrics, 1000 entities per request."""
    while metrics or params or tags:
        n_p = min(len(params), MAX_PARAMS_TAGS_PER_BATCH)
        n_t = min(len(tags), MAX_PARAMS_TAGS_PER_BATCH - n_p)
        n_m = min(len(metrics), MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - n_p - n_t)
        yield metrics[:n_m], params[:n_p], tags[:n_t]
        metrics, params, tags = metrics[n_m:], params[n_p:], tags[n_t:]


def execute_op(client: MlflowClient, op: dict[str, Any]) -> None:
    """Execute one queued write operation against ``client`` (see module docstring)."""
    kind = op["op"]
    run_id = op["run_id"]
    if kind == "log_batch":
        metrics = [
            Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op.get("metrics", [])
        ]
        params = [Param(k, v) for k, v in op.get("params", [])]
        tags = [RunTag(k, v) for k, v in op.get("tags", [])]
        for m, p, t in split_batch(metrics, params, tags):
            client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)
    elif kind == "log_artifact":
        client.log_artifact(run_id, op["local_path"], op.get("artifact_path"))
    elif kind == "set_terminated":
        client.set_terminated(run_id, status=op["status"], end_time=op.get("end_time"))
    else:
        raise ValueError(
            f"unknown outbox operation {kind!r}; this outbox was written by a newer s2ap"
        )


def describe_op(op: dict[str, Any]) -> str:
    """One-line human summary of an operation, for logs and ``pending_outbox``."""
    kind = op.get("op")
    if kind == "log_batch":
        parts = []
        for field in ("metrics", "params", "tags"):
            if op.get(field):
                parts.append(f"{len(op[field])} {field}")
        return f"log_batch({', '.join(parts) or 'empty'})"
    if kind == "log_artifact":
        dest = op.get("artifact_path") or ""
        return f"log_artifact({os.path.basename(op.get('local_path', ''))} -> {dest or '/'})"
    if kind == "set_terminated":
        return f"set_terminated({op.get('status')})"
    return str(kind)


# --------------------------------------------------------------------------------------------
# outbox


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe_key(key: str) -> str:
    safe = _SAFE.sub("_", key).strip("._") or "run"
    return safe[:120]


class Outbox:
    """An append-only queue of write operations for one trial (or the study), stored as JSON lines.

    Safe across processes on one host (``flock``): a trial and ``s2ap`` flushing by hand do not
    interleave. Entries are removed only after they were sent, so a crash mid-replay re-sends at
    most one entry (MLflow ignores identical metrics, params and tags written twice).
    """

    def __init__(self, storage_root: str | os.PathLike[str], key: str) -> None:
        self.dir = Path(storage_root).absolute() / OUTBOX_DIRNAME
        self.key = _safe_key(key)
        self.path = self.dir / f"{self.key}.jsonl"
        self.rejected_path = self.dir / f"{self.key}.rejected.jsonl"
        self.files_dir = self.dir / f"{self.key}.files"
        self._lock_path = self.dir / f".{self.key}.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    # A torn last line from a crash while appending: the op was never confirmed.
                    _log.warning("outbox %s: skipping an unreadable line", self.path)
        return entries

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            if self.files_dir.exists() and not any(self.files_dir.iterdir()):
                self.files_dir.rmdir()
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for entry in entries:
                fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def entries(self) -> list[dict[str, Any]]:
        """The queued operations, oldest first."""
        with self._locked():
            return self._read()

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        return len(self.entries())

    def append(self, op: dict[str, Any], tracking_uri: str) -> None:
        """Queue ``op``; a ``log_artifact`` op's file is copied into the outbox first."""
        with self._locked():
            entries = self._read()
            seq = (entries[-1]["seq"] + 1) if entries else 0
            entry = dict(op, seq=seq, tracking_uri=tracking_uri, queued_at=time.time())
            if op["op"] == "log_artifact":
                dest_dir = self.files_dir / str(seq)
                dest_dir.mkdir(parents=True, exist_ok=True)
                dest = dest_dir / os.path.basename(op["local_path"])
                shutil.copy2(op["local_path"], dest)
                entry["local_path"] = str(dest)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def replay(self, client_for: Callable[[str], MlflowClient]) -> int:
        """Send queued operations in order; stop at the first transient failure.

        ``client_for(tracking_uri)`` returns the client for an entry. Returns how many were sent.
        Raises the transient error if the very first entry could not be sent.
        """
        sent = 0
        with self._locked():
            entries = self._read()
            while entries:
                try:
                    sent += self._send(entries[0], client_for)
                except Exception:  # transient: _send moved MLflow's refusals aside
                    self._write(entries)
                    if sent == 0:
                        raise
                    return sent
                entries.pop(0)
                self._write(entries)
        return sent

    def _send(self, entry: dict[str, Any], client_for: Callable[[str], MlflowClient]) -> bool:
        """Execute one entry (True); a permanent refusal moves it to the rejected file (False)."""
        op = {k: v for k, v in entry.items() if k not in ("seq", "tracking_uri", "queued_at")}
        try:
            execute_op(client_for(entry["tracking_uri"]), op)
        except Exception as exc:
            if is_transient(exc):
                raise
            _log.error(
                "outbox %s: MLflow rejected %s (%s); moved it to %s",
                self.path,
                describe_op(op),
                exc,
                self.rejected_path,
            )
            with open(self.rejected_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(dict(entry, error=str(exc)[:2000])) + "\n")
            return False
        if op["op"] == "log_artifact":
            shutil.rmtree(Path(op["local_path"]).parent, ignore_errors=True)
        return True


# --------------------------------------------------------------------------------------------
# inspection and manual flush (for the command line)


@dataclasses.dataclass(frozen=True)
class PendingOutbox:
    """What one outbox file still holds."""

    key: str
    path: str
    operations: int
    metric_values: int
    artifacts: int
    tracking_uris: tuple[str, ...]
    run_ids: tuple[str, ...]
    oldest_queued_at: float | None
    rejected: int

    def summary(self) -> str:
        """One line for the user, e.g. ``trial_3: 12 operations (40 metric values, 1 artifact)``."""
        where = ", ".join(self.tracking_uris) or "?"
        text = (
            f"{self.key}: {self.operations} unsent operations ({self.metric_values} metric values, "
            f"{self.artifacts} artifacts) for {where}"
        )
        if self.rejected:
            text += f"; {self.rejected} rejected by MLflow (see {self.key}.rejected.jsonl)"
        return text


def _outbox_keys(storage_root: str | os.PathLike[str]) -> list[str]:
    root = Path(storage_root).absolute() / OUTBOX_DIRNAME
    if not root.is_dir():
        return []
    keys = set()
    for p in root.glob("*.jsonl"):
        name = p.name[: -len(".jsonl")]
        keys.add(name[: -len(".rejected")] if name.endswith(".rejected") else name)
    return sorted(keys)


def pending_outbox(storage_root: str | os.PathLike[str]) -> list[PendingOutbox]:
    """List the outboxes under ``storage_root`` that still hold unsent or rejected operations."""
    result = []
    for key in _outbox_keys(storage_root):
        box = Outbox(storage_root, key)
        entries = box.entries()
        rejected = 0
        if box.rejected_path.exists():
            with open(box.rejected_path, encoding="utf-8") as fh:
                rejected = sum(1 for line in fh if line.strip())
        if not entries and not rejected:
            continue
        result.append(
            PendingOutbox(
                key=key,
                path=str(box.path),
                operations=len(entries),
                metric_values=sum(len(e.get("metrics", [])) for e in entries),
                artifacts=sum(1 for e in entries if e["op"] == "log_artifact"),
                tracking_uris=tuple(sorted({e["tracking_uri"] for e in entries})),
                run_ids=tuple(sorted({e["run_id"] for e in entries})),
                oldest_queued_at=min((e["queued_at"] for e in entries), default=None),
                rejected=rejected,
            )
        )
    return result


@dataclasses.dataclass(frozen=True)
class FlushReport:
    """Result of :func:`flush_outbox`: operations sent, still pending, and errors per outbox."""

    sent: int
    remaining: int
    errors: dict[str, str]


def flush_outbox(
    storage_root: str | os.PathLike[str], tracking_uri: str | None = None
) -> FlushReport:
    """Send every queued operation under ``storage_root``, oldest first per outbox.

    ``tracking_uri`` overrides the URI recorded with each entry (e.g. the server moved); ``None``
    sends each entry where it was meant to go. Outboxes that still cannot be sent (after MLflow's
    own retries) are reported in ``errors`` and left in place.
    """
    clients: dict[str, MlflowClient] = {}

    def client_for(uri: str) -> MlflowClient:
        target = tracking_uri or uri
        if target not in clients:
            clients[target] = make_client(target)
        return clients[target]

    sent = 0
    errors: dict[str, str] = {}
    for key in _outbox_keys(storage_root):
        try:
            sent += Outbox(storage_root, key).replay(client_for)
        except Exception as exc:
            errors[key] = f"{type(exc).__name__}: {exc}"
    remaining = sum(p.operations for p in pending_outbox(storage_root))
    return FlushReport(sent=sent, remaining=remaining, errors=errors)
