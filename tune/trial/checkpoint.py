"""A trial's checkpoint folder: what restores a trial exactly, and what describes it.

    state.pt      every seed's pipeline state dict (model, scores, masks, optimizer, schedule,
                  data order, RNG, the model selected so far) and the trial's own progress
    trial.json    sampled values, run config, seeds, phases, the MLflow params, epoch, done
    mask.s2mask   the first seed's selected mask (``s2ap masks diff`` reads it)
    test.json     test-set numbers, when the trial evaluated itself (``test_eval.every_trial``)

One module owns the format, so that changing it (e.g. to safetensors + JSON) touches nothing
else. ``state.pt`` holds tensors and plain data only and is read with
``torch.load(weights_only=True)`` (:mod:`tune.common.untrusted`): a checkpoint folder copied from
elsewhere can hold data, never code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2ap.config import RunConfig

# torch comes with the functions that write or load a state: status and results read a
# checkpoint folder's files and JSON without it (seconds per command).
if TYPE_CHECKING:
    import torch

    from s2ap.data import DatasetSplits
    from s2ap.pipeline import Pipeline

__all__ = [
    "TrialState",
    "is_complete_checkpoint",
    "load_trial_checkpoint",
    "read_test_numbers",
    "read_trial_info",
    "read_trial_state",
    "write_trial_checkpoint",
]

_STATE_FILE = "state.pt"
_TRIAL_FILE = "trial.json"
_MASK_FILE = "mask.s2mask"
_TEST_FILE = "test.json"
_FORMAT = 1


def is_complete_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint folder holds a whole trial checkpoint (both files written)."""
    return all(Path(directory, name).is_file() for name in (_STATE_FILE, _TRIAL_FILE))


@dataclasses.dataclass
class TrialState:
    """What a checkpoint restores: the pipelines and the trial's progress around them."""

    seeds: list[int]
    pipelines: list[dict[str, Any]]
    last_prune: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The last prune-epoch values of the prune-only metrics (carried into finetune results)."""


def write_trial_checkpoint(
    directory: str | os.PathLike[str],
    state: TrialState,
    info: dict[str, Any],
    *,
    test: dict[str, Any] | None = None,
    mask: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> None:
    """Write a checkpoint folder (see the module docstring); ``mask`` is (masks, header)."""
    import torch

    # Not dataclasses.asdict: it would deep-copy every tensor.
    raw = {"format": _FORMAT, **{f.name: getattr(state, f.name) for f in dataclasses.fields(state)}}
    torch.save(raw, os.path.join(directory, _STATE_FILE))
    Path(directory, _TRIAL_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    if test is not None:
        Path(directory, _TEST_FILE).write_text(json.dumps(test, indent=2))
    if mask is not None:
        from tracking.artifacts import save_masks

        save_masks(os.path.join(directory, _MASK_FILE), *mask)


def read_trial_state(directory: str | os.PathLike[str]) -> TrialState:
    """``state.pt``; :class:`~tune.common.untrusted.UntrustedFileError` if it holds anything but
    tensors and plain data."""
    from tune.common.untrusted import load_tensor_file

    path = Path(directory, _STATE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {_STATE_FILE}; not an s2ap trial checkpoint")
    raw = load_tensor_file(path)
    # Keys of older checkpoints that nothing reads any more (``logged_prune_end``) are ignored.
    return TrialState(
        seeds=list(raw["seeds"]),
        pipelines=list(raw["pipelines"]),
        last_prune=dict(raw.get("last_prune", {})),
    )


def read_trial_info(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``trial.json``: sampled values, run config, seeds, phases, MLflow params, epoch, done."""
    return json.loads(Path(directory, _TRIAL_FILE).read_text())


def read_test_numbers(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The test-set numbers the trial recorded at its end, if it evaluated itself."""
    path = Path(directory, _TEST_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def _dense_file(info: dict[str, Any]) -> str | None:
    """The dense model a checkpoint's trial started from, if it is still there."""
    path = ((info.get("run_config") or {}).get("dense") or {}).get("checkpoint")
    return path if isinstance(path, str) and Path(path).is_file() else None


def load_trial_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    data: DatasetSplits | None = None,
) -> list[Pipeline]:
    """Rebuild a trial's pipelines (one per seed) from its checkpoint folder.

    ``pipelines[i].model`` is the masked model at the checkpoint, ``.selected_model()`` the one
    selected on validation, ``.masking.sparsity_report()`` its measured sparsity.
    """
    import torch

    from s2ap.pipeline import Pipeline
    from tune.common.untrusted import check_tensor_file
    from tune.trial.pipelines import cached_data, cached_dense

    # Before any work (reading no tensor): nothing runs on a refused state.pt or dense model.
    check_tensor_file(Path(checkpoint_dir, _STATE_FILE))
    info = read_trial_info(checkpoint_dir)
    dense_file = _dense_file(info)
    if dense_file is not None:
        check_tensor_file(dense_file)
    state = read_trial_state(checkpoint_dir)
    cfg = RunConfig.model_validate(info["run_config"])
    device = torch.device(device)
    data = data if data is not None else cached_data(cfg, device)
    dense = cached_dense(dense_file) if dense_file else None
    pipelines = []
    for seed, pstate in zip(info["seeds"], state.pipelines):
        seeded = cfg.model_copy(
            update={"seed": seed, "dense": cfg.dense.model_copy(update={"checkpoint": None})}
        )
        p = Pipeline(
            seeded, data=data, dense_state=dense, device=device, phases=tuple(info["phases"])
        )
        p.load_state_dict(pstate)
        pipelines.append(p)
    return pipelines
