"""How a study is launched (the ``s2ap tune`` flags) and what a launch returns."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["LaunchOptions", "StudyOutcome"]


@dataclasses.dataclass
class LaunchOptions:
    """How :func:`tune.driver.launch.run_study` runs a study (the ``s2ap tune`` flags)."""

    address: str | None = None
    """``None``: a local Ray runtime; ``auto`` or ``HOST:PORT``: join that cluster."""
    resume: bool = False
    overwrite: bool = False
    tracking_uri: str | None = None
    wait_for_tracking: float = 0.0
    """Seconds an http(s) tracking server that does not answer yet is given before the
    launch is refused (:mod:`tune.driver.preflight`); 0: one check."""
    num_cpus: int | None = None
    """Local runtime only: CPUs (default: all) and logical GPUs (default: detected)."""
    num_gpus: int | None = None
    ray_temp_dir: str | None = None
    skip_resource_check: bool = False
    shared_storage: bool = False
    """The storage root is shared storage on every node (silences the multi-node warning)."""
    test_eval: bool | None = None
    """Override ``study.test_eval.enabled``."""
    verbose: int = 1


@dataclasses.dataclass
class StudyOutcome:
    """What a finished ``run_study`` returns (the summary is also written to ``summary.json``)."""

    exit_code: int
    summary: dict[str, Any]
