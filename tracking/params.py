"""What a run records besides metrics: flattened params, tag values, version tags.

MLflow params and tags are strings of limited length; configs are nested dicts. This module turns
one into the other the same way everywhere, so a resumed trial compares like with like.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from s2ap.config import flatten

__all__ = ["check_name", "flatten_params", "now_ms", "tag_value", "to_number", "version_tags"]


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value), default=str)
    else:
        text = str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params: ``{"a": {"b": 1}} -> {"a.b": "1"}``.

    Lists become JSON (``"[1, 2]"``), scalars ``str(value)``; empty dicts ``"{}"``.
    """
    start = f"{prefix}." if prefix else ""
    return {name: _param_value(value) for name, value in flatten(config, start).items()}


def tag_value(value: Any) -> str:
    """A tag value: ``str(value)`` cut to MLflow's limit."""
    return (value if isinstance(value, str) else str(value))[:MAX_TAG_VAL_LENGTH]


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def _machine() -> str:
    """The machine a run ran on, for result pages: CPUs this process may use, the CPU model
    (``/proc/cpuinfo`` on Linux), the OS: ``2 CPUs (AMD EPYC), Linux x86_64``. A GPU run's
    device is in the trial's own tags."""
    try:
        cpus = len(os.sched_getaffinity(0))  # what a container or taskset grants, not the host's
    except AttributeError:
        cpus = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
            )
    except OSError:
        model = platform.processor()
    cpu = f" ({model})" if model else ""
    return f"{cpus} CPUs{cpu}, {platform.system()} {platform.machine()}".strip()


@functools.lru_cache(maxsize=1)
def version_tags() -> dict[str, str]:
    """Tags recording what produced a run: s2ap/torch/mlflow/python versions, the git commit and
    the machine (``s2ap.machine``)."""
    import torch  # here, not at the top: the run writers have it, the read commands need not

    try:
        s2ap_version = importlib.metadata.version("s2ap")
    except importlib.metadata.PackageNotFoundError:
        s2ap_version = "unknown"
    tags = {
        "s2ap.version": s2ap_version,
        "s2ap.torch_version": torch.__version__,
        "s2ap.mlflow_version": mlflow.__version__,
        "s2ap.python_version": platform.python_version(),
        "s2ap.machine": tag_value(_machine()),
    }
    commit = _git_commit()
    if commit:
        tags["s2ap.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def to_number(value: Any) -> float | None:
    """``value`` as a float if it is a number (bool, int, float, 1-element tensor or array)."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # 1-element tensors and arrays
        try:
            item = value.item()
        except (ValueError, TypeError, RuntimeError):  # torch raises RuntimeError
            return None
        return float(item) if isinstance(item, (bool, int, float)) else None
    return None


def now_ms() -> int:
    return int(time.time() * 1000)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(name: str, what: str) -> None:
    """Artifact names become file names: letters, digits, ``_``, ``.``, ``-`` only."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '.' or '-' only")
