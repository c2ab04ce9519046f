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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NON_NEGATIVE_INT",
    "PORT",
    "POSITIVE_INT",
    "Command",
    "UserError",
    "add_study_arguments",
    "check_config_file",
    "check_output_file",
    "check_writable_folder",
    "int_in_range",
    "load_study_args",
    "method_text",
    "parse_set",
    "refuse_existing",
    "require_store",
    "study_or_name",
    "tracking_uri_for",
]


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


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
def check_config_file(path: str | os.PathLike[str], what: str = "study file") -> None:
    """``path`` is an existing file (not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a folder; pass the {what} (a YAML file)")
    if not p.is_file():
        raise UserError(f"{p}: no such {what}")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike[str], flag: str) -> None:
    """``path`` is a folder this command may create (or write into)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p}: is a file; give a folder (it is created if missing)")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{flag} {p}: {base} is a file, so the folder cannot be created there")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: {base} is not writable by this user")


def check_output_file(path: str | os.PathLike[str], flag: str, *, force: bool = False) -> None:
    """``path`` is a file this command may write: not a folder, not there yet (unless
    ``force``), in a folder it can create."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder; give a file name")
    refuse_existing(p, force, flag)
    check_writable_folder(p.parent, flag)


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


def parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set prune.epochs=3`` -> ``{"prune.epochs": 3}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set prune.epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(
                f"--set {item!r}: the value is not valid YAML ({problem}); e.g. "
                "--set prune.rho=0.05, --set 'study.seeds=[0, 1]', quote strings with ':' in them"
            ) from None
    return out


def load_study_args(args: argparse.Namespace) -> Any:
    """The validated study of ``args.study`` with ``--set``/``--storage-root``/``--num-samples``."""
    from tune.study import load_study

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
    :meth:`tune.study.Study.resolve_tracking_uri`)."""
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


def method_text(header: dict[str, Any]) -> str:
    """``S2AP (rho 0.1, 1 step)``, ``S2AP on HARP (...)``, ``HYDRA``, ``HARP``,
    ``HYDRA + random perturbation (rho 0.1)`` from a mask header's ``method`` entry."""
    method = header.get("method")
    if not isinstance(method, dict):
        return str(method or "?")
    kind, host = method.get("perturbation"), str(method.get("host", "hydra")).upper()
    if kind == "none":
        return host
    rho = method.get("rho")
    radius = f"rho {rho:.3g}" if isinstance(rho, int | float) else "rho ?"
    if kind != "score":
        return f"{host} + {kind} perturbation ({radius})"
    steps = method.get("ascent_steps")
    name = "S2AP" if host == "HYDRA" else f"S2AP on {host}"
    return f"{name} ({radius}, {steps} step{'s' if steps != 1 else ''})"


def refuse_existing(path: Path, force: bool, what: str = "--out") -> None:
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists; pass --force to replace it")
