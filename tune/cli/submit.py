"""``s2ap submit STUDY.yaml --address http://HEAD:8265``: the study as a Ray Job
(:mod:`tune.cluster.submit`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tune.cli.common import Command, add_study_arguments, load_study_args
from tune.common.inputs import UserError

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study_arguments(p)
    p.add_argument("--address", required=True, help="the head's dashboard URL, http://HEAD:8265")
    p.add_argument(
        "--working-dir", help="folder uploaded with the job (default: the study's folder)"
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI the job uses")
    p.add_argument("--resume", action="store_true", help="the job resumes the study")
    p.add_argument("--overwrite", action="store_true", help="the job starts the study over")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 iff it succeeded")


def _tune_args(args: argparse.Namespace) -> list[str]:
    """The ``s2ap tune`` flags the job passes on."""
    extra: list[str] = []
    if args.resume:
        extra.append("--resume")
    if args.overwrite:
        extra.append("--overwrite")
    if args.tracking_uri:
        extra += ["--tracking-uri", args.tracking_uri]
    for item in args.set or []:
        extra += ["--set", item]
    return extra


def run(args: argparse.Namespace) -> int:
    from tune.cluster.submit import submit_study
    from tune.driver.preflight import preflight_submit

    study = load_study_args(args)
    if args.working_dir and not Path(args.working_dir).is_dir():
        raise UserError(f"--working-dir {args.working_dir}: no such folder")
    preflight_submit(study, args.address)  # the data split, the dashboard: in seconds
    _job_id, status = submit_study(
        study,
        args.address,
        tune_args=_tune_args(args),
        working_dir=args.working_dir,
        wait=args.wait,
    )
    if args.wait:
        return 0 if status == "SUCCEEDED" else 1
    return 0


COMMAND = Command("submit", "submit a study to a Ray cluster as a Ray Job", add_arguments, run)
