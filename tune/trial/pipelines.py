"""A trial's pipelines: one :class:`~s2ap.pipeline.Pipeline` per seed, run in lockstep.

With ``study.seeds`` a trial runs each sampled configuration once per seed (replicates) and
reports the mean over seeds, plus ``*_std`` and ``mask_hamming_seeds`` (the mean pairwise Hamming
distance between the seeds' masks: the paper's across-seed stability). Without it, one pipeline.

Per worker process (Ray reuses actors, ``reuse_actors: true``) datasets are cached by their data
config and device, dense state dicts by path: loaded once per process, not once per trial. On a
multi-node cluster every node loads its own copy: ``data.root`` must exist on every node (or
``data.download: true``) and the storage root must be shared storage at the same path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import torch

from s2ap.arms import mask_header
from s2ap.config import RunConfig, config_hash
from s2ap.data import DatasetSplits
from s2ap.masking import get_masking
from s2ap.metrics import mask_hamming
from s2ap.pipeline import Pipeline, load_data
from tune.common.timings import StepTimes

__all__ = [
    "SelectedMasks",
    "build_pipelines",
    "cached_data",
    "cached_dense",
    "merge_records",
    "seed_mask_header",
    "selected_masks_and_weights",
]

_DATA_CACHE: dict[tuple[str, str], DatasetSplits] = {}
_DENSE_CACHE: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}
_DATA_FIELDS = {"source", "root", "download", "val_size", "split_seed", "in_memory", "options"}


def cached_data(cfg: RunConfig, device: torch.device) -> DatasetSplits:
    """The dataset of ``cfg`` on ``device``, loaded once per worker process."""
    data_key = config_hash(cfg.data.model_dump(mode="json", include=_DATA_FIELDS))
    key = (data_key, str(device))
    if key not in _DATA_CACHE:
        cpu_key = (data_key, "cpu")
        if cpu_key not in _DATA_CACHE:
            _DATA_CACHE[cpu_key] = load_data(cfg, "cpu")
        if key != cpu_key:
            _DATA_CACHE[key] = _DATA_CACHE[cpu_key].to(device)
    return _DATA_CACHE[key]


def cached_dense(path: str | None) -> dict[str, torch.Tensor] | None:
    """The dense state dict at ``path`` (torch.save or safetensors), loaded once per process."""
    if not path:
        return None
    from tracking.artifacts import load_state_dict

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _DENSE_CACHE:
        _DENSE_CACHE.clear()  # one dense model per study; do not pile them up
        _DENSE_CACHE[key] = load_state_dict(path)
    return _DENSE_CACHE[key]


def build_pipelines(
    cfg: RunConfig,
    seeds: Sequence[int],
    *,
    phases: Sequence[str],
    device: torch.device,
    dense_path: str | None,
    times: StepTimes | None = None,
) -> list[Pipeline]:
    """One pipeline per seed on the cached dataset, all starting from the study's dense model;
    ``times`` gets the seconds of the ``dataset``, ``dense`` and ``pipelines`` steps."""
    times = times if times is not None else StepTimes()
    with times.step("dataset"):
        data = cached_data(cfg, device)
    with times.step("dense"):
        dense = cached_dense(dense_path)
    with times.step("pipelines"):
        return [
            Pipeline(
                cfg.model_copy(update={"seed": seed}),
                data=data,
                dense_state=dense,
                device=device,
                phases=tuple(phases),
            )
            for seed in seeds
        ]


def _mean_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers averaged over seeds; other values (phase, flags) from the first seed."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in records for k in r):
        values = [r[key] for r in records if key in r]
        if isinstance(values[0], bool) or not isinstance(values[0], int | float):
            out[key] = values[0] if key != "done" else all(values)
        else:
            out[key] = float(sum(values)) / len(values)
    for key in ("val_robust_acc", "val_clean_acc"):
        vals = torch.tensor([float(r[key]) for r in records if key in r])
        if len(vals) > 1:
            out[f"{key}_std"] = float(vals.std(unbiased=False))
    return out


def merge_records(records: list[dict[str, Any]], pipelines: list[Pipeline]) -> dict[str, Any]:
    """One epoch's result of a trial from its seeds' records (see the module docstring)."""
    out = dict(records[0]) if len(records) == 1 else _mean_record(records)
    masked = [p for p in pipelines if p.masking is not None]
    if len(records) > 1 and len(masked) > 1:
        masks = [p.masks() for p in masked]
        pairs = [mask_hamming(a, b)[0] for a, b in itertools.combinations(masks, 2)]
        out["mask_hamming_seeds"] = sum(pairs) / len(pairs)
    best = [p.best.get("val_robust_acc", -1.0) for p in pipelines]
    if all(b >= 0 for b in best):
        out["best_val_robust_acc"] = sum(best) / len(best)
    return out


class SelectedMasks:
    """The masks of a pipeline's selected model (what a checkpoint's mask file holds), each
    epoch at the cost of a mask copy rather than of a model copy.

    The selection changes only at an epoch that improves on it, and then the live model *is* the
    selected one: its masks are the selected masks. Between improvements the ones found then are
    kept. Only a restore (:meth:`clear`) makes the next call copy the model once.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        self._masks: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self._epoch = None

    def __call__(self, pipeline: Pipeline) -> dict[str, torch.Tensor]:
        best = pipeline.best
        epoch = int(best.get("epoch", -1))
        if best.get("state") is None or epoch == pipeline.global_epoch:
            self._epoch, self._masks = epoch, pipeline.masks()
        elif epoch != self._epoch:
            self._epoch, self._masks = epoch, pipeline.selected_masks()
        return self._masks


def selected_masks_and_weights(
    pipeline: Pipeline,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(masks, plain-architecture state dict) of the model selected on validation."""
    model = pipeline.selected_model()
    masking = get_masking(model)
    if masking is None:
        raise RuntimeError("the selected model has no mask (the prune phase did not run)")
    masks = masking.masks()
    dense = {k: v.detach().cpu() for k, v in masking.to_dense().state_dict().items()}
    return masks, dense


def seed_mask_header(
    cfg: RunConfig,
    seed: int,
    *,
    dense_hash: str | None,
    name: str,
    epoch: int,
    sampled: dict[str, Any],
) -> dict[str, Any]:
    """The header ``s2ap run`` writes beside a mask (architecture, dataset, method, config and
    dense hashes), plus where in the study the mask comes from."""
    header = mask_header(cfg.model_copy(update={"seed": seed}), dense_hash)
    header.update({"seed": seed, "epoch": epoch, "mask": name, "searched": sampled})
    return header
