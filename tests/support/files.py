"""File helpers for tests that check a command wrote nothing."""

from __future__ import annotations

from pathlib import Path

__all__ = ["snapshot"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` -> (size, mtime in ns): compare two snapshots to see whether
    a command created, removed or changed anything there."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
