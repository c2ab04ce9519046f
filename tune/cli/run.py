"""``s2ap run RUN.yaml --out DIR``: one pipeline, in-process, no Ray
(:mod:`tune.trial.standalone`)."""

from __future__ import annotations

import argparse

from tune.cli.common import Command

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run file (YAML), e.g. configs/run-digits.yaml")
    parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field, e.g. --set prune.rho=0.05 (repeatable; VALUE is YAML)",
    )
    parser.add_argument("--device", help="override the config's device (cpu, cuda, cuda:1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tune.trial.standalone import run_command

    return int(run_command(args))


COMMAND = Command(
    "run",
    "run one pipeline (pretrain -> prune -> finetune) without Ray",
    add_arguments,
    run,
)
