"""The ``s2ap`` command line: run one pipeline, launch/resume/submit/inspect a study, masks, UI.

    s2ap run RUN.yaml --out DIR                      one pipeline, no Ray (tune.trial.standalone)
    s2ap tune STUDY.yaml [--resume|--overwrite] [--address auto|HOST:PORT] [--tracking-uri URI]
    s2ap submit STUDY.yaml --address http://HEAD:8265 [--wait]
    s2ap status STUDY.yaml [--json]
    s2ap evaluate STUDY.yaml [--trial ID]            test-set numbers of a trial's checkpoint
    s2ap masks pull STUDY.yaml [--metric M --mode max|min --out DIR --with-weights]
    s2ap masks apply MASK.s2mask --checkpoint DENSE.pt --out PRUNED.pt [--force]
    s2ap masks diff A.s2mask B.s2mask [--json]
    s2ap report STUDY.yaml... [--out RESULTS.md]     a page testing the paper's claims
    s2ap ui STUDY.yaml [--port N]                    MLflow UI for the study's store

One module per command (:data:`COMMANDS`, in this order): ``add_arguments(parser)`` and
``run(args) -> exit code``. Building the parser imports none of ray, mlflow or torch: each
command imports what it needs when it runs, so ``s2ap --help`` and ``s2ap run`` stay light.

Every user error prints one message to stderr and exits with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from tune.cli import evaluate, launch, masks, report, run, status, submit, ui
from tune.cli.common import Command
from tune.common.inputs import UserError

__all__ = [
    "COMMANDS",
    "EXIT_USER_ERROR",
    "Command",
    "UserError",
    "build_parser",
    "console_main",
    "main",
]

EXIT_USER_ERROR = 2

#: Every ``s2ap`` command, in the order ``s2ap --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    run.COMMAND,
    launch.COMMAND,
    submit.COMMAND,
    status.COMMAND,
    evaluate.COMMAND,
    masks.COMMAND,
    report.COMMAND,
    ui.COMMAND,
)


def _add_commands(
    parser: argparse.ArgumentParser, commands: Sequence[Command], dest: str, metavar: str
) -> None:
    sub = parser.add_subparsers(dest=dest, required=True, metavar=metavar)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help)
        if command.subcommands:
            _add_commands(p, command.subcommands, f"{command.name}_command", "ACTION")
            continue
        if command.add_arguments is not None:
            command.add_arguments(p)
        p.set_defaults(func=command.run)


def build_parser() -> argparse.ArgumentParser:
    """The ``s2ap`` parser, built from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="s2ap",
        description="Hyperparameter studies for adversarial pruning with S2AP "
        "(Ray Tune + Optuna + ASHA, tracked in MLflow).",
    )
    _add_commands(parser, COMMANDS, "command", "COMMAND")
    return parser


#: Exceptions of :mod:`tracking` that are user errors, by module. One counts only once its module
#: is imported (it can only be raised then): importing them all would import MLflow (~2 s) to
#: print a refusal that came before MLflow was needed.
_TRACKING_ERRORS: dict[str, tuple[str, ...]] = {
    "tracking.artifacts": ("MaskFileError",),
    "tracking.client": ("TrackingUnavailableError",),
    "tracking.pull": ("NoFinishedTrialError", "StudyNotFoundError"),
    "tracking.server": ("MlflowServerError",),
    "tracking.writer": ("ParamConflictError",),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the input is wrong' rather than 'the program is wrong'."""
    from s2ap.config import ConfigError

    errors: list[type[BaseException]] = [UserError, ConfigError]
    for module, names in _TRACKING_ERRORS.items():
        loaded = sys.modules.get(module)
        errors += [e for e in (getattr(loaded, n, None) for n in names) if e is not None]
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s2ap`` console script; returns the exit code."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except _user_errors() as exc:
        action = getattr(args, f"{args.command}_command", None)  # masks pull|apply|diff
        name = f"{args.command} {action}" if action else args.command
        print(f"s2ap {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("s2ap: interrupted", file=sys.stderr)
        return 130


def console_main() -> NoReturn:
    """The ``s2ap`` console script (and ``python -m tune.cli``): :func:`main`, then exit.

    Before the interpreter exits, every object alive is frozen out of the garbage collector
    (:func:`gc.freeze`): the collections during finalisation would otherwise walk all of torch's,
    Ray's and MLflow's objects, ~1.1 s of every study's exit on a 2-core machine, to free memory
    the exit returns anyway. Objects are still finalised by reference counting as before.
    """
    code = main()
    gc.freeze()
    sys.exit(code)
