"""What the ``s2ap`` commands share: the command record, user errors, loading a study from
the command line, checks of numbers and paths given on the command line, and small formatting
helpers.

Every number and path a command takes is checked before the command does any work: numbers by
their argparse ``type`` (:data:`POSITIVE_INT`, :data:`PORT`, ...: argparse names the flag and
exits with code 2), paths by :func:`check_config_file`, :func:`check_writable_folder` and
:func:`check_output_file` (a :class:`UserError` naming the flag or the file).

Light on purpose: building the parser imports this module and the command modules only, never
ray, mlflow or torch (each command imports what it needs when it runs).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune.common.inputs import UserError, parse_set

__all__ = [
    "NON_NEGATIVE_INT",
    "PORT",
    "POSITIVE_INT",
    "Command",
    "add_study_arguments",
    "int_in_range",
    "load_study_args",
    "require_store",
    "study_or_name",
    "tracking_uri_for",
]


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``s2ap`` command: its arguments and what it runs (``run(args)`` -> exit code).

    A command with ``subcommands`` is a group (``s2ap masks pull|apply|diff``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    subcommands: tuple[Command, ...] = ()


# --- numbers ------------------------------------------------------------------------------------
def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[low, high]``; argparse names the flag."""
    bounds = f"at least {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number {bounds}, got {text!r}"
            ) from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


POSITIVE_INT = int_in_range(1)
NON_NEGATIVE_INT = int_in_range(0)
#: A TCP port to listen on (leave the flag out for a free one).
PORT = int_in_range(1, 65535)


# --- paths --------------------------------------------------------------------------------------
def require_store(tracking_uri: str, study: str) -> None:
    """A read-only command needs the study's MLflow store to exist: opening a missing sqlite
    store would create an empty one."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise UserError(
                f"no MLflow store at {db}: study {study!r} has not run yet (start it with "
                "`s2ap tune STUDY.yaml`), or pass the store it logged to with --tracking-uri"
            )


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The study file, ``--set`` overrides and ``--storage-root`` (most commands take them)."""
    p.add_argument("study", help="the study file (YAML: run config + study: + search_space:)")
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a field of the study file (repeatable), e.g. --set study.num_samples=4",
    )
    p.add_argument("--storage-root", help="override study.storage_root (relative to the cwd)")


def load_study_args(args: argparse.Namespace) -> Any:
    """The validated study of ``args.study`` with ``--set``/``--storage-root``/``--num-samples``."""
    from tune.study.file import load_study

    overrides = parse_set(getattr(args, "set", None))
    if getattr(args, "storage_root", None):
        root = Path(args.storage_root).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise UserError(f"--storage-root {root}: is a file; give a folder")
        overrides["study.storage_root"] = str(root)
    if getattr(args, "num_samples", None) is not None:
        overrides["study.num_samples"] = args.num_samples
    study = load_study(args.study, overrides=overrides)
    if study.storage_root.exists() and not study.storage_root.is_dir():
        raise UserError(f"study.storage_root: {study.storage_root} is a file; give a folder")
    return study


def tracking_uri_for(study: Any, override: str | None) -> str:
    """The study's MLflow tracking URI (``--tracking-uri`` first, then ``study.tracking_uri``;
    :meth:`tune.study.file.Study.resolve_tracking_uri`)."""
    return study.resolve_tracking_uri(override)


def study_or_name(
    arg: str, tracking_uri: str | None, storage_root: str | None = None
) -> tuple[str, str, Any]:
    """(study name, tracking URI, Study or None) from a study file, or a name + --tracking-uri."""
    if Path(arg).is_dir():
        raise UserError(f"{arg}: is a folder; give the study's YAML file (or its name)")
    if Path(arg).is_file():
        study = load_study_args(argparse.Namespace(study=arg, storage_root=storage_root))
        return study.name, tracking_uri_for(study, tracking_uri), study
    if not tracking_uri:
        raise UserError(
            f"{arg}: no such study file; give the study's YAML file, or its name together with "
            "--tracking-uri"
        )
    from tracking.client import resolve_tracking_uri

    try:
        return arg, resolve_tracking_uri(tracking_uri, "."), None
    except ValueError as exc:
        raise UserError(f"--tracking-uri: {exc}") from None
