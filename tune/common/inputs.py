"""What a user hands the service besides a study file, checked before any work: paths to read
or write, ``--set FIELD=VALUE`` overrides; :class:`UserError` names the flag and the fix.

Light on purpose (no ray, mlflow or torch): every command and ``s2ap run`` use it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UserError",
    "check_config_file",
    "check_free_port",
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
    if p.exists() and not p.is_file():
        raise UserError(
            f"{p}: not a regular file (a device, pipe or socket); pass the {what} (a YAML file)"
        )
    if not p.is_file():
        raise UserError(f"{p}: no such {what}")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: Kernel filesystems that hold no user files: a folder "created" there fails (as root too).
_PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "efivarfs",
        "fusectl",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "securityfs",
        "sysfs",
        "tracefs",
    }
)


def _mount_of(path: Path) -> tuple[str, str, set[str]] | None:
    """(mount point, filesystem type, mount options) of an existing ``path``, from
    ``/proc/self/mounts``; ``None`` where that is not readable (not Linux)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[str, str, set[str]] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        # The longest mount point holding the path wins; a later line for the same point
        # (mounted over the earlier one) too.
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2], set(fields[3].split(",")))
    return best


def check_writable_folder(path: str | os.PathLike[str], flag: str) -> None:
    """``path`` is a folder this command may create (or write into): not a file, not under a
    file, in a folder this user may write, on a filesystem that is neither read-only nor a
    kernel one (``/proc``, ``/sys``: root's permission bits say yes there, mkdir fails)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p}: is a file; give a folder (it is created if missing)")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{flag} {p}: {base} is a file, so the folder cannot be created there")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: {base} is not writable by this user")
    mount = _mount_of(base)
    if mount is not None and mount[1] in _PSEUDO_FILESYSTEMS:
        raise UserError(
            f"{flag} {p}: {base} is on a {mount[1]} filesystem (kernel state, no files can be "
            "created there); give a folder on a disk"
        )
    if mount is not None and "ro" in mount[2]:
        raise UserError(
            f"{flag} {p}: {base} is on a read-only filesystem ({mount[0]}); give a folder on a "
            "writable disk"
        )


def check_free_port(host: str, port: int) -> None:
    """A server of this command can listen on ``host:port``: ``--host`` is an address of this
    machine and nothing listens on ``--port`` there (binds and closes a socket; listens on
    nothing)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: unknown host ({exc.strerror or exc})") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"--port {port}: already in use on {host} (another server listens there); "
                    "pick another port, or leave --port out for a free one"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(
                    f"--host {host}: not an address of this machine; use 127.0.0.1, 0.0.0.0 or "
                    "one of its interfaces"
                ) from None
            if exc.errno == errno.EACCES:
                raise UserError(
                    f"--port {port}: ports below 1024 need root here; pick one above 1024"
                ) from None
            raise UserError(f"--host {host} --port {port}: cannot listen there ({exc})") from None


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
