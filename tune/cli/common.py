"""What the ``s2ap`` commands share: the command record, user errors, loading a study from
the command line, and small formatting helpers.

Light on purpose: building the parser imports this module and the command modules only, never
ray, mlflow or torch (each command imports what it needs when it runs).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Command",
    "UserError",
    "add_study_arguments",
    "load_study_args",
    "method_text",
    "refuse_existing",
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


def _parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set prune.epochs=3`` -> ``{"prune.epochs": 3}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set prune.epochs=3")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_study_args(args: argparse.Namespace) -> Any:
    """The validated study of ``args.study`` with ``--set``/``--storage-root``/``--num-samples``."""
    from tune.study import load_study

    overrides = _parse_set(getattr(args, "set", None))
    if getattr(args, "storage_root", None):
        overrides["study.storage_root"] = str(Path(args.storage_root).expanduser().absolute())
    if getattr(args, "num_samples", None):
        overrides["study.num_samples"] = args.num_samples
    return load_study(args.study, overrides=overrides)


def tracking_uri_for(study: Any, override: str | None) -> str:
    """The study's MLflow tracking URI (``--tracking-uri`` first, then ``study.tracking_uri``)."""
    from tracking.runs import resolve_tracking_uri

    try:
        return resolve_tracking_uri(override or study.settings.tracking_uri, study.storage_root)
    except ValueError as exc:
        raise UserError(f"tracking_uri: {exc}") from None


def study_or_name(
    arg: str, tracking_uri: str | None, storage_root: str | None = None
) -> tuple[str, str, Any]:
    """(study name, tracking URI, Study or None) from a study file, or a name + --tracking-uri."""
    if Path(arg).is_file():
        study = load_study_args(argparse.Namespace(study=arg, storage_root=storage_root))
        return study.name, tracking_uri_for(study, tracking_uri), study
    if not tracking_uri:
        raise UserError(
            f"{arg}: no such study file; give the study's YAML file, or its name together with "
            "--tracking-uri"
        )
    from tracking.runs import resolve_tracking_uri

    try:
        return arg, resolve_tracking_uri(tracking_uri, "."), None
    except ValueError as exc:
        raise UserError(f"--tracking-uri: {exc}") from None


def method_text(header: dict[str, Any]) -> str:
    """``S2AP (rho 0.1, 1 step)`` / ``HYDRA`` from a mask header's ``method`` entry."""
    method = header.get("method")
    if not isinstance(method, dict):
        return str(method or "?")
    kind = method.get("perturbation")
    if kind == "none":
        return "HYDRA"
    name = "S2AP" if kind == "score" else f"HYDRA + {kind} perturbation"
    steps = method.get("ascent_steps")
    return f"{name} (rho {method.get('rho'):.3g}, {steps} step{'s' if steps != 1 else ''})"


def refuse_existing(path: Path, force: bool, what: str = "--out") -> None:
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists; pass --force to replace it")
