"""What a user hands the service besides a study file, checked before any work: paths to read
or write, ``--set FIELD=VALUE`` overrides; :class:`UserError` names the flag and the fix.

Light on purpose (no ray, mlflow or torch): every command and ``s2ap run`` use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UserError",
    "check_config_file",
    "check_output_file",
    "check_writable_folder",
    "parse_set",
    "refuse_existing",
]


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


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


def refuse_existing(path: Path, force: bool, what: str = "--out") -> None:
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists; pass --force to replace it")


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
