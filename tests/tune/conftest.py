"""Shared pieces of the study-service tests: a tiny study, a local Ray runtime, CLI helpers."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
S2AP = str(Path(sys.executable).with_name("s2ap"))

#: A study that finishes in seconds on one CPU: 8x8 synthetic images, an MLP, PGD-2.
TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "source": "synthetic",
        "val_size": 60,
        "batch_size": 60,
        "eval_batch_size": 128,
        "options": {
            "n_train": 240,
            "n_test": 60,
            "image_size": 8,
            "channels": 1,
            "num_classes": 4,
            "noise": 0.15,
        },
    },
    "model": {"arch": "mlp"},
    "threat": {"eps": 0.03, "step_size": 0.015, "steps": 2},
    "pretrain": {"epochs": 2, "lr": 0.05},
    "prune": {"epochs": 3, "warmup_epochs": 1, "sparsity": 0.8, "lr": 0.1},
    "finetune": {"epochs": 1, "lr": 0.01},
    "validation": {"pgd_steps": 2, "sharpness_examples": 32},
    "evaluate": {"n_examples": 40, "pgd_steps": 2, "autoattack": False},
    "study": {
        "name": "tiny",
        "storage_root": "studies",
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "searcher": {"kind": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
    },
    "search_space": {
        "prune.rho": {"type": "loguniform", "low": 0.01, "high": 0.5},
        "prune.ascent_steps": {"type": "int", "low": 1, "high": 2},
    },
}


def write_study(
    folder: Path, updates: dict[str, Any] | None = None, name: str = "study.yaml"
) -> Path:
    """Write TINY_STUDY with updates to folder/name.

    ``updates`` maps a path to a value (None deletes): ``"prune.epochs"`` (dotted), or with
    ``/`` as separator where keys contain dots: ``"search_space/prune.rho/low"``.
    """
    data = copy.deepcopy(TINY_STUDY)
    for dotted, value in (updates or {}).items():
        *parents, leaf = dotted.split("/") if "/" in dotted else dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trial_config(folder: Path, **sampled: object) -> dict[str, Any]:
    """A trial's config as Ray Tune hands it to the Trainable: the sampled values (rho 0.1, one
    ascent step, then ``sampled``) and the study's context, for TINY_STUDY with 2 finetune
    epochs written to ``folder``."""
    from tune.study.file import load_study
    from tune.trial.context import CONTEXT_KEY, make_trial_context

    study = load_study(write_study(folder, {"finetune.epochs": 2}))
    ctx = make_trial_context(
        study_name=study.name,
        base=study.base_dict(),
        phases=study.phases,
        seeds=study.settings.seeds,
    )
    return {"prune.rho": 0.1, "prune.ascent_steps": 1, **sampled, CONTEXT_KEY: ctx}


def short_tmp(prefix: str = "r") -> str:
    """A short temp dir (Ray's unix socket paths must stay under 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def run_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``s2ap`` console script."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [S2AP, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


@contextlib.contextmanager
def _local_ray() -> Iterator[Any]:
    """A local Ray runtime with 2 CPUs under a short temp dir; shut down on leaving."""
    import ray

    temp = short_tmp()
    ray.init(
        address="local", _temp_dir=temp, num_cpus=2, include_dashboard=False, log_to_driver=False
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_local() -> Iterator[Any]:
    """A local Ray runtime for one test."""
    with _local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def ray_module() -> Iterator[Any]:
    """A local Ray runtime shared by a module's tests (ones that only need it to exist)."""
    with _local_ray() as ray:
        yield ray
