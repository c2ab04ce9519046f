"""``s2ap evaluate STUDY.yaml [--trial ID]``: test-set numbers of a trial's checkpoint
(default: the best trial), measured here (:mod:`tune.trial.evaluation`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from tune.cli.common import POSITIVE_INT, Command, add_study_arguments, load_study_args
from tune.common.inputs import UserError

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study_arguments(p)
    p.add_argument("--trial", help="trial id (default: the best completed trial)")
    p.add_argument(
        "--n-examples", type=POSITIVE_INT, help="test images to evaluate (default: the study's)"
    )
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--cpu", action="store_true", help="evaluate on the CPU even with a GPU")


def _pick(study: Any, trial: str | None) -> Mapping[str, Any]:
    """The row of ``--trial``, or the best trial's; it must have a checkpoint."""
    from tune.results.trials import best_trial, read_trial_rows

    rows = read_trial_rows(study)
    if trial:
        chosen = [r for r in rows if r["trial_id"] == trial]
        if not chosen:
            ids = ", ".join(r["trial_id"] for r in rows)
            raise UserError(f"--trial {trial}: no such trial in {study.name} ({ids})")
        row = chosen[0]
    else:
        best = best_trial(study, rows)
        if best is None:
            raise UserError(f"study {study.name} has no completed trial; pass --trial ID")
        row = best
    if not row.get("checkpoint"):
        raise UserError(f"trial {row['trial_id']} has no checkpoint")
    return row


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from tune.trial.evaluation import evaluate_trial_checkpoint

    study = load_study_args(args)
    row = _pick(study, args.trial)
    overrides: dict[str, Any] = {}
    if args.n_examples is not None:
        overrides["n_examples"] = args.n_examples
    if args.no_autoattack:
        overrides["autoattack"] = False
    gpu = 1.0 if torch.cuda.is_available() and not args.cpu else 0.0
    result = evaluate_trial_checkpoint(row["checkpoint"], evaluate_overrides=overrides, gpu=gpu)
    print(json.dumps({"trial_id": row["trial_id"], **result}, indent=2, default=str))
    return 0


COMMAND = Command(
    "evaluate", "test-set evaluation of a trial's checkpoint (default: best)", add_arguments, run
)
