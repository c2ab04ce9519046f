"""``s2ap status STUDY.yaml [--json]``: trials and best configuration
(:mod:`tune.results.status`)."""

from __future__ import annotations

import argparse

from tune.cli.common import Command, add_study_arguments, load_study_args

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study_arguments(p)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json

    from tune.results.status import print_status, study_status

    study = load_study_args(args)
    status = study_status(study)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        print_status(study, status)
    return 0


COMMAND = Command(
    "status", "trials and best configuration of a study (starts nothing)", add_arguments, run
)
