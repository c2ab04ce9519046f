"""``s2ap status``: a study's trials and best configuration, read from its experiment folder
without starting Ray or any trial (the same rows and the same best trial as the summary)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from tune.results.trials import best_trial, read_trial_rows
from tune.study.file import Study

__all__ = ["print_status", "study_status"]


def study_status(study: Study) -> dict[str, Any]:
    """Trials (config, state, metrics), the best one, and the test numbers of the summary."""
    rows = read_trial_rows(study)
    summary = json.loads(study.summary_json.read_text()) if study.summary_json.is_file() else {}
    from tune.results.comparison import compare_with_baselines

    return {
        "study": study.name,
        "experiment_dir": str(study.experiment_dir),
        "trials": rows,
        "best": best_trial(study, rows),
        "baselines": compare_with_baselines(study, rows),
        "test": summary.get("test"),
        "tracking_uri": summary.get("tracking_uri"),
    }


def print_status(study: Study, status: dict[str, Any], out: IO[str] | None = None) -> None:
    """The trials table and the best trial (with its test numbers, once evaluated)."""
    from tune.results.summary import format_trials_table

    out = out or sys.stdout
    rows = status["trials"]
    print(f"study {study.name}: {len(rows)} trials in {status['experiment_dir']}", file=out)
    print(format_trials_table(study, rows), file=out)
    retried = [f"{r['trial_id']} {r['retries']}" for r in rows if r.get("retries")]
    if retried:
        print(f"retries (restarts from the last checkpoint): {', '.join(retried)}", file=out)
    from tune.results.comparison import format_comparisons

    best = status["best"]
    if not best:
        print("\nno completed trial yet", file=out)
        return
    lines = format_comparisons(status.get("baselines") or [])
    if lines:
        print("", file=out)
        print("\n".join(lines), file=out)
    obj = study.objective
    print(
        f"\nbest trial: {best['trial_id']} ({obj.metric} {obj.mode} = "
        f"{best['metrics'].get(obj.metric)})",
        file=out,
    )
    for k, v in best["config"].items():
        print(f"  {k} = {v!r}", file=out)
    test = status.get("test")
    if test:
        shown = ", ".join(
            f"{k.removeprefix('test_')} {test[k]:.4f}"
            for k in ("test_clean_acc", "test_pgd_acc", "test_autoattack_acc")
            if isinstance(test.get(k), float)
        )
        print(f"  test: {shown}", file=out)
