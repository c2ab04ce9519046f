"""Files a study folder holds, loaded as data and never as code.

A study folder is often copied, shared or downloaded, so every ``torch.save`` file the service
reads back (a trial's ``state.pt``, the study's dense cache ``<storage_root>/dense/<hash>.pt``,
``s2ap run``'s ``checkpoint.pt``, a ``dense.checkpoint``) is loaded with
``torch.load(weights_only=True)``: tensors and plain Python data only. A file that holds any
other pickled object (the way a crafted file runs a command when it is unpickled) is refused
with :class:`UntrustedFileError`, naming the file; nothing in it runs.

:func:`check_tensor_file` does the same check cheaply (the tensors are memory-mapped, not read),
so commands refuse a bad file before they start any work.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from s2ap.config import ConfigError

__all__ = ["TensorFileError", "UntrustedFileError", "check_tensor_file", "load_tensor_file"]

_ZIP_MAGIC = b"PK"  # torch.save's default format is a zip archive (memory-mappable)
_PICKLE_MAGIC = b"\x80"  # torch.save's legacy format: a bare pickle
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class TensorFileError(ConfigError):
    """A file that should hold tensors cannot be read as such (damaged, or not a torch file);
    exit code 2."""


class UntrustedFileError(TensorFileError):
    """A file that should hold tensors and plain data holds other pickled objects; exit code 2."""


def _untrusted(path: Path, exc: BaseException) -> UntrustedFileError:
    found = _GLOBAL.search(str(exc))
    what = f" (it references {found.group(1)})" if found else f" ({_reason(exc)})"
    return UntrustedFileError(
        f"{path}: holds pickled objects other than tensors and plain data{what}; it may have "
        "been tampered with — refusing to load it. Delete the file (or the study folder) if "
        "you did not write it yourself"
    )


def load_tensor_file(
    path: str | os.PathLike[str], *, map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)``, refusing a file that holds anything else.

    Raises :class:`UntrustedFileError` for pickled objects other than tensors and plain data,
    :class:`TensorFileError` for a missing, damaged or non-torch file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler met something else
        raise _untrusted(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TensorFileError(
            f"{path}: not a readable torch file, damaged or truncated ({_reason(exc)})"
        ) from None


def check_tensor_file(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` as :func:`load_tensor_file` would, without reading its tensors.

    A safetensors file (which cannot hold code) passes once its header reads.
    """
    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == _ZIP_MAGIC or magic[:1] == _PICKLE_MAGIC:
        # mmap maps the tensors instead of reading them; only the zip format supports it.
        load_tensor_file(path, mmap=magic == _ZIP_MAGIC)
        return
    _check_safetensors(path)


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own error types
        raise TensorFileError(
            f"{path}: neither a torch.save nor a safetensors file ({_reason(exc)})"
        ) from None


def _reason(exc: BaseException) -> str:
    """The line of torch's message that says what was wrong (it ends with a docs link)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Check the documentation")] or lines
    return lines[-1][:200] if lines else type(exc).__name__
