"""Writing to one MLflow run so that an outage loses nothing (the base of the study and trial runs).

Each write is one operation (:mod:`tracking.outbox`): a ``log_batch`` with an epoch's metrics and
tags, an artifact, the end of the run. It is sent at once; if MLflow still fails after its own
retries, it is queued in the run's outbox, and every later write waits behind the queue so the
order holds. While writes are queued for an HTTP server, one ``/health`` request (no retries)
decides whether to send them now, so a trial does not wait out MLflow's whole retry budget at
every epoch of an outage. ``finish()`` sends what is queued, then ends the run.

With ``background=True`` (a trial's run) an epoch's metrics are handed to a sender thread and the
trial goes on training: the write's round trip (a store transaction, a lock wait on a shared
sqlite file, an HTTP request) overlaps the next epoch instead of adding to it. Order still holds:
every other write waits until the sender has sent what it was handed. What the sender has not
sent yet lives in memory only until :meth:`RunWriter.spill` puts it into the outbox (durable):
the trial calls it when it checkpoints, so a worker that dies after a checkpoint loses nothing
(the epochs before it are in MLflow or the outbox; the epochs after it are trained again).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from s2ap.config import config_hash
from tracking.client import (
    TAG_CONFIG_HASH,
    TAG_PHASE,
    TrackingUnavailableError,
    is_http,
    make_client,
    server_answers,
)
from tracking.outbox import Outbox, describe_op, execute_op, is_transient
from tracking.params import flatten_params, now_ms, tag_value, to_number, version_tags

__all__ = ["TERMINAL_STATUSES", "ParamConflictError", "RunWriter"]

_log = logging.getLogger(__name__)

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
#: Seconds writes to a local (sqlite) store stay queued before the user is told.
LOCK_WARN_S = 60.0


class ParamConflictError(ValueError):
    """A run already has a param with a different value (MLflow params are write-once)."""


class RunWriter:
    """Writes to one MLflow run through the outbox. Subclasses find it again or create it
    (:meth:`_open_run`)."""

    tracking_uri: str
    run_id: str
    resumed: bool
    storage_root: Path
    _client: MlflowClient
    _outbox: Outbox
    _params: dict[str, str]

    def _init_writer(
        self, tracking_uri: str, storage_root: str | os.PathLike[str], key: str
    ) -> None:
        self.tracking_uri = tracking_uri
        self.storage_root = Path(storage_root).absolute()
        self._client = make_client(tracking_uri)
        self._outbox = Outbox(self.storage_root, key)
        self._lock = threading.RLock()
        self._warned_outage = False
        self._queued_since: float | None = None
        self._finished = False
        self._params = {}
        #: Writes that failed over to the outbox (an outage, a locked store): counted for the
        #: scale benchmark's "failed writes".
        self.queued_writes = 0
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._idle = threading.Condition()
        self._sender: threading.Thread | None = None

    # -- background sending (epoch metrics of a trial) -----------------------------------
    def start_background(self) -> None:
        """From now on :meth:`log_metrics` hands its write to a sender thread (see the module
        docstring); idempotent."""
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._send_pending, name=f"mlflow-{self.run_id[:8]}", daemon=True
            )
            self._sender.start()

    def _send_pending(self) -> None:
        while True:
            with self._idle:
                while not self._pending:
                    self._idle.wait()
                op = self._pending[0]
            if op.get("op") == "stop":
                with self._idle:
                    self._pending.popleft()
                    self._idle.notify_all()
                return
            try:
                self._submit(op)
            except Exception:  # a permanent refusal: logged, the trial goes on
                _log.exception("MLflow refused %s", describe_op(op))
            with self._idle:
                self._pending.popleft()
                self._idle.notify_all()

    def flush(self) -> None:
        """Wait until the sender has sent (or queued in the outbox) every write handed to it."""
        with self._idle:
            while self._pending:
                self._idle.wait()

    def spill(self) -> int:
        """Put the writes the sender has not sent yet into the outbox (durable), so that they
        survive this process; returns how many. The sender skips them afterwards (the outbox
        goes first at the next write), except the one it may be sending now."""
        with self._idle:
            waiting = [op for op in self._pending if op.get("op") != "stop"]
            # The first one may be on its way now: it stays with the sender too (a second copy
            # of a write MLflow already has is ignored: same metric key, step, time and value).
            for op in waiting[1:]:
                self._pending.remove(op)
        # Not under the writer's lock, which the sender holds while it sends: the outbox has a
        # lock of its own.
        for op in waiting:
            self._outbox.append(op, self.tracking_uri)
        return len(waiting)

    def _stop_background(self) -> None:
        if self._sender is None:
            return
        with self._idle:
            self._pending.append({"op": "stop"})
            self._idle.notify_all()
        self._sender.join()
        self._sender = None

    @property
    def client(self) -> MlflowClient:
        """The client this run is written with (for reads such as a metric's history)."""
        return self._client

    # -- finding the run ----------------------------------------------------------------
    @staticmethod
    def _run_tags(
        config: Mapping[str, Any], extra: Mapping[str, Any], identity: Mapping[str, str]
    ) -> dict[str, str]:
        """A run's tags: versions, ``extra`` (as strings), ``identity`` (study, role, trial)
        and the hash of its ``config``."""
        return {
            **version_tags(),
            **{k: tag_value(v) for k, v in extra.items()},
            **identity,
            TAG_CONFIG_HASH: config_hash(dict(config)),
        }

    def _open_run(
        self,
        experiment_id: str,
        flt: str,
        what: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        created_tags: Mapping[str, str] | None = None,
    ) -> None:
        """Reuse the run ``flt`` finds (:meth:`_reopen`) or create it with ``tags`` (and
        ``created_tags``); then log the params it lacks.

        A reused run gets ``tags`` again (it may carry old values); a new one has them already.
        """
        run = self._find_run(experiment_id, flt, what)
        if run is not None:
            self._reopen(run, params)
        else:
            new_tags = {**tags, **(created_tags or {})}
            self.run_id = self._create_once(experiment_id, flt, what, run_name, new_tags)
        self._finished = False
        # After the writes a previous process of this run queued (the outbox goes first).
        self.log_params_and_tags(params, tags if self.resumed else {})

    def _search(self, experiment_id: str, flt: str, what: str) -> list[Any]:
        """The active runs matching ``flt``, oldest first."""
        return self._call(
            lambda: self._client.search_runs(
                [experiment_id], filter_string=flt, order_by=["attributes.start_time ASC"]
            ),
            f"search_runs({what})",
        )

    def _find_run(self, experiment_id: str, flt: str, what: str) -> Any | None:
        """The oldest active run matching ``flt`` (the one to reuse), or ``None``."""
        runs = self._search(experiment_id, flt, what)
        if len(runs) > 1:
            _log.warning(
                "%s has %d runs; using the oldest (%s)", what, len(runs), runs[0].info.run_id
            )
        return runs[0] if runs else None

    def _create_once(
        self, experiment_id: str, flt: str, what: str, run_name: str, tags: Mapping[str, str]
    ) -> str:
        """Create the run ``flt`` finds, and make sure it is the only one.

        MLflow retries a request that timed out or got a 5xx answer, ``create_run`` included: a
        first attempt the server did complete then leaves a second run behind. The oldest run
        is kept and the others are deleted, so a trial or study never has two.
        """
        self._call(
            lambda: self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags)),
            f"create_run({what})",
        )
        runs = self._search(experiment_id, flt, what)
        for extra in runs[1:]:
            _log.warning("%s: deleting duplicate run %s", what, extra.info.run_id)
            self._call(functools.partial(self._client.delete_run, extra.info.run_id), "delete_run")
        return runs[0].info.run_id

    def _reopen(self, run: Any, params: Mapping[str, Any]) -> None:
        """Write to ``run`` again: RUNNING, with its params known (a changed one raises)."""
        self.run_id = run.info.run_id
        self.resumed = True
        self._params = dict(run.data.params)
        self._check_params(params)  # before anything is written
        if run.info.status != "RUNNING":
            self._call(lambda: self._client.update_run(self.run_id, status="RUNNING"), "update_run")

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """A read or run-creating call; a transient failure is a TrackingUnavailableError."""
        try:
            return fn()
        except Exception as exc:
            if is_transient(exc):
                raise TrackingUnavailableError(
                    f"MLflow at {self.tracking_uri} did not answer {what} ({exc}); check that "
                    "the server is up (MLflow retries as MLFLOW_HTTP_REQUEST_MAX_RETRIES and "
                    "MLFLOW_HTTP_REQUEST_TIMEOUT say)"
                ) from exc
            raise

    def _client_for(self, uri: str) -> MlflowClient:
        return self._client if uri == self.tracking_uri else make_client(uri)

    def _replay(self) -> bool:
        """Send what the outbox holds, if the store answers; True if it is empty afterwards."""
        if not self._outbox.path.exists():
            return True
        if is_http(self.tracking_uri) and not server_answers(self.tracking_uri):
            return False
        try:
            self._outbox.replay(self._client_for)
        except Exception as exc:
            if not is_transient(exc):
                raise
        empty = not self._outbox.path.exists()
        if empty:
            self._queued_since = None
        if empty and self._warned_outage:
            _log.warning("MLflow at %s is back; sent the queued operations", self.tracking_uri)
            self._warned_outage = False
        return empty

    def _queue(self, op: dict[str, Any], error: BaseException | None) -> None:
        self._outbox.append(op, self.tracking_uri)
        self.queued_writes += 1
        now = time.monotonic()
        if self._queued_since is None:
            self._queued_since = now
        # A shared sqlite file is locked by another trial's write now and then: the outbox
        # absorbs that in a moment, nothing for the user to see. A server that does not answer,
        # or a lock that lasts, is worth a line.
        lasting = now - self._queued_since >= LOCK_WARN_S
        if not self._warned_outage and (is_http(self.tracking_uri) or lasting):
            _log.warning(
                "MLflow at %s unavailable (%s); queueing writes in %s until it is back",
                self.tracking_uri,
                error or "earlier writes are queued",
                self._outbox.path,
            )
            self._warned_outage = True

    def _submit(self, op: dict[str, Any]) -> bool:
        """Execute a write now, or queue it behind earlier queued writes. True if sent now."""
        if self._sender is not None and threading.current_thread() is not self._sender:
            self.flush()  # the writes handed to the sender go first
        with self._lock:
            if not self._replay():
                self._queue(op, None)
                return False
            try:
                execute_op(self._client, op)
                return True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                _log.debug("%s failed: %s", describe_op(op), exc)
                self._queue(op, exc)
                return False

    # -- public writes ---------------------------------------------------------------------
    def log_metrics(
        self, metrics: Mapping[str, Any], step: int, *, timestamp_ms: int | None = None
    ) -> None:
        """Log numeric metrics at ``step`` (the epoch), in one request. Strings become tags
        ``s2ap.<key>`` (so ``{"phase": "prune"}`` sets ``s2ap.phase``); other values are
        ignored."""
        ts = now_ms() if timestamp_ms is None else int(timestamp_ms)
        values: list[list[Any]] = []
        tags: list[list[str]] = []
        for key, value in metrics.items():
            number = to_number(value)
            if number is not None:
                values.append([str(key), number, ts, int(step)])
            elif isinstance(value, str):
                tags.append([f"s2ap.{key}", tag_value(value)])
        if values or tags:
            op = {"op": "log_batch", "run_id": self.run_id, "metrics": values, "tags": tags}
            if self._sender is None:
                self._submit(op)
                return
            with self._idle:
                self._pending.append(op)
                self._idle.notify_all()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (overwrite) run tags; values are converted to strings."""
        self.log_params_and_tags({}, tags)

    def set_phase(self, phase: str) -> None:
        """Record the trial's current phase (``warmup``, ``prune``, ``finetune``, ...)."""
        self.set_tags({TAG_PHASE: phase})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested dicts are flattened with dots). Already-logged identical values are
        skipped; a different value raises :class:`ParamConflictError`."""
        self.log_params_and_tags(params, {})

    def log_params_and_tags(self, params: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
        """:meth:`log_params` and :meth:`set_tags` in one request."""
        flat = self._check_params(params)
        missing = [[k, v] for k, v in flat.items() if k not in self._params]
        items = [[str(k), tag_value(v)] for k, v in tags.items()]
        if not (missing or items):
            return
        op: dict[str, Any] = {"op": "log_batch", "run_id": self.run_id}
        if missing:
            op["params"] = missing
        if items:
            op["tags"] = items
        self._submit(op)
        self._params.update(dict(missing))

    def _check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Flatten ``params``; raise ParamConflictError if any differs from a logged value."""
        flat = flatten_params(params)
        conflicts = {
            k: (self._params[k], v)
            for k, v in flat.items()
            if k in self._params and self._params[k] != v
        }
        if conflicts:
            shown = "; ".join(
                f"{k}: logged {a!r}, now {b!r}" for k, (a, b) in list(conflicts.items())[:10]
            )
            raise ParamConflictError(
                f"run {self.run_id} already has different values for {len(conflicts)} param(s) "
                f"({shown}). MLflow params cannot change: start a new study/trial for a changed "
                "config, or restore the original one"
            )
        return flat

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload a file (or every file under a folder) to the run's artifacts."""
        path = Path(local_path)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.parent.relative_to(path).as_posix()
                dest = "/".join(x for x in (artifact_path, rel if rel != "." else None) if x)
                self.log_artifact(file, dest or None)
            return
        if not path.is_file():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        self._submit(
            {
                "op": "log_artifact",
                "run_id": self.run_id,
                "local_path": str(path.absolute()),
                "artifact_path": artifact_path,
            }
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact ``artifact_file`` (e.g. ``study.yaml``)."""
        self._log_via_tempfile(artifact_file, lambda p: Path(p).write_text(text, encoding="utf-8"))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure as a PNG artifact (e.g. ``plots/stability.png``)."""
        self._log_via_tempfile(artifact_file, lambda p: figure.savefig(p, format="png", dpi=100))

    def _log_via_tempfile(self, artifact_file: str, write: Callable[[str], Any]) -> None:
        dirname, basename = os.path.split(artifact_file.strip("/"))
        if not basename:
            raise ValueError(f"artifact_file {artifact_file!r} must name a file")
        with tempfile.TemporaryDirectory(prefix="s2ap-artifact-") as tmp:
            path = os.path.join(tmp, basename)
            write(path)
            self.log_artifact(path, dirname or None)

    # -- the end -----------------------------------------------------------------------------
    def pending(self) -> int:
        """Number of writes waiting in this run's outbox."""
        return len(self._outbox)

    def finish(self, status: str = "FINISHED") -> int:
        """Flush the outbox and mark the run ``FINISHED``/``FAILED``/``KILLED``.

        Returns how many writes remain unsent (0 normally); those stay in the outbox for
        :func:`tracking.outbox.flush_outbox`. Calling it twice is harmless.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"finish(status={status!r}): use one of {TERMINAL_STATUSES}")
        self.flush()
        self._stop_background()
        with self._lock:
            if self._finished:
                return self.pending()
            op = {"op": "set_terminated", "run_id": self.run_id, "status": status}
            self._submit({**op, "end_time": now_ms()})
            self._finished = True
            left = self.pending()
            if left:
                _log.warning(
                    "run %s finished with %d writes not yet sent to %s; they are in %s "
                    "(send them with `flush_outbox` / the s2ap command line)",
                    self.run_id,
                    left,
                    self.tracking_uri,
                    self._outbox.path,
                )
            return left
