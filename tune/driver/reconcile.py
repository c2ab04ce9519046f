"""After a search: bring Optuna's and MLflow's records in line with Ray Tune's.

A driver killed at the wrong moment leaves records Tune's experiment snapshot does not know:
an Optuna trial asked for but never run, a trial run started (or even finished) after the last
snapshot, a run left RUNNING by a crashed actor. ``--resume`` cannot know them; here they are
closed so that nothing looks like a result that is not one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tracking.client import TAG_OUTCOME
from tune.results.trials import TrialRow, unfinished
from tune.study.file import Study
from tune.trial.recorder import (
    COMPLETED,
    ERROR,
    INTERRUPTED,
    ORPHANED,
    OUTCOMES,
    STOPPED_EARLY,
)

__all__ = ["close_dangling_runs", "fail_orphan_optuna_trials", "kill_interrupted_runs"]

_log = logging.getLogger(__name__)


def fail_orphan_optuna_trials(study: Study) -> int:
    """Mark Optuna trials left RUNNING by a killed driver as FAIL; return how many.

    A driver killed between asking Optuna for a configuration and saving the experiment state
    leaves an Optuna trial no Tune trial owns; after a complete run nothing may be RUNNING.
    Their numbers are kept in the Optuna study's user attribute ``s2ap_orphans``.
    """
    import optuna

    if not study.optuna_path.exists():
        return 0
    try:
        ostudy = optuna.load_study(study_name=study.name, storage=study.optuna_storage())
    except KeyError:
        return 0
    running = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return 0
    for trial in running:
        ostudy.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    known = list(ostudy.user_attrs.get("s2ap_orphans", []))
    ostudy.set_user_attr("s2ap_orphans", sorted({*known, *(t.number for t in running)}))
    return len(running)


def close_dangling_runs(tracker: Any, rows: Iterable[TrialRow]) -> list[dict[str, Any]] | None:
    """Settle the MLflow trial runs Tune's record disagrees with; return the trial runs it read
    (:meth:`tracking.runs.StudyTracker.trials`, as read: before it settled them), or ``None``
    when MLflow could not be read or written.

    * a trial Tune ended without its Trainable's knowledge (a crashed actor, a lost node), or
      one an earlier launch left ``interrupted``: its run ends as Tune's record says (ERROR:
      ``error``, FAILED; completed: ``completed``, FINISHED; stopped by the scheduler:
      ``stopped_early``, FINISHED) instead of RUNNING forever;
    * an *orphan*: a trial a killed driver had started (or even finished) after its last
      experiment snapshot. ``--resume`` cannot know it and samples a new trial instead, so its
      run is not part of the study's results: KILLED, tagged ``s2ap.outcome=orphaned`` (the
      best-trial lookup and reports read completed runs only).
    """
    ended = {r["trial_id"]: _outcome(r) for r in rows}
    try:
        runs = tracker.trials()
        for run in runs:
            outcome = run["tags"].get(TAG_OUTCOME)
            if run["trial_id"] not in ended:
                if outcome != ORPHANED:
                    _end_run(tracker, run, ORPHANED)
            elif run["status"] == "RUNNING" or outcome == INTERRUPTED:
                _end_run(tracker, run, ended[run["trial_id"]])
    except Exception as exc:  # bookkeeping only
        _log.warning("could not settle the trial runs in MLflow: %s", exc)
        return None
    return runs


def kill_interrupted_runs(tracker: Any, rows: Iterable[TrialRow]) -> int:
    """An interrupted study: the runs of its unfinished trials end KILLED, tagged
    ``interrupted`` (Tune stopped their actors, whose clean-up took them for stopped early);
    ``--resume`` reopens them. Completed and failed runs stay as they are. Returns how many."""
    left = {r["trial_id"] for r in unfinished(rows)}
    count = 0
    try:
        for run in tracker.trials():
            if run["trial_id"] not in left:
                continue
            outcome = run["tags"].get(TAG_OUTCOME)
            if run["status"] == "RUNNING" or outcome == STOPPED_EARLY:
                _end_run(tracker, run, INTERRUPTED)
                count += 1
    except Exception as exc:  # bookkeeping only
        _log.warning("could not mark the interrupted trial runs in MLflow: %s", exc)
    return count


def _outcome(row: TrialRow) -> str:
    """How Tune's record says a trial ended."""
    if row["state"] == "ERROR":
        return ERROR
    return COMPLETED if row["completed"] else STOPPED_EARLY


def _end_run(tracker: Any, run: dict[str, Any], outcome: str) -> None:
    from tracking.client import make_client

    client = make_client(tracker.tracking_uri)
    client.set_tag(run["run_id"], TAG_OUTCOME, outcome)
    client.set_terminated(run["run_id"], OUTCOMES[outcome])
