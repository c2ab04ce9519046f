"""Files the service writes whole or not at all: a crash leaves the old file or the new one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracking.artifacts import atomic_writer

if TYPE_CHECKING:
    import os

__all__ = ["save_torch", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically (never half-written)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    with atomic_writer(path) as fh:
        fh.write(text.encode("utf-8"))


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically: a crash never leaves a partial file that a later run loads."""
    import torch

    with atomic_writer(path) as fh:
        torch.save(obj, fh)
