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

from tune.results.trials import TrialRow
from tune.study.file import Study

__all__ = ["close_dangling_runs", "fail_orphan_optuna_trials"]

_log = logging.getLogger(__name__)

#: ``s2ap.outcome`` of a trial run that is not part of the study's results.
ORPHANED = "orphaned"


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
        ostudy = optuna.load_study(study_name=study.name, storage=study.optuna_url)
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

    * a trial Tune ended without its Trainable's knowledge (a crashed actor, a lost node):
      its run is FAILED/KILLED instead of RUNNING forever;
    * an *orphan*: a trial a killed driver had started (or even finished) after its last
      experiment snapshot. ``--resume`` cannot know it and samples a new trial instead, so its
      run is not part of the study's results: KILLED, tagged ``s2ap.outcome=orphaned`` (the
      best-trial lookup and reports read FINISHED runs only).
    """
    from tracking.client import make_client

    state = {r["trial_id"]: r["state"] for r in rows}
    try:
        client = make_client(tracker.tracking_uri)
        runs = tracker.trials()
        for run in runs:
            if run["trial_id"] not in state:
                if run["tags"].get("s2ap.outcome") != ORPHANED:
                    client.set_tag(run["run_id"], "s2ap.outcome", ORPHANED)
                    client.set_terminated(run["run_id"], "KILLED")
            elif run["status"] == "RUNNING":
                status = "FAILED" if state[run["trial_id"]] == "ERROR" else "KILLED"
                client.set_terminated(run["run_id"], status)
    except Exception as exc:  # bookkeeping only
        _log.warning("could not settle the trial runs in MLflow: %s", exc)
        return None
    return runs
