"""One adversarial-pruning run: pretrain (or load a dense model) -> prune -> finetune -> evaluate.

:class:`Pipeline` advances one epoch per :meth:`Pipeline.step`, whatever the phase, so a driver
(the ``s2ap run`` loop, a Ray Tune Trainable) reports after every epoch and can checkpoint
anywhere. Its state dict restores the run exactly: a run interrupted after epoch k and resumed
ends with the same scores as one that was never interrupted.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from s2ap.architectures import create_model
from s2ap.compute import Compute
from s2ap.config import RunConfig
from s2ap.data import DatasetSplits, load_dataset
from s2ap.masking import ScoreMasking, get_masking
from s2ap.stages import (
    FinetuneStage,
    PretrainStage,
    PruneStage,
    TrainingStage,
    evaluate_test,
    make_host,
)

__all__ = ["PHASES", "Pipeline", "load_data", "load_state_file", "resolve_device"]

PHASES = ("pretrain", "prune", "finetune")


def _cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    """Detached, contiguous CPU copy of a state dict (channels-last weights come back NCHW;
    masked layers also carry a small ``_extra_state``)."""
    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        if torch.is_tensor(v)
        else v
        for k, v in state.items()
    }


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or a ``torch.save`` file, never running pickled code."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"PK" or magic[:1] == b"\x80":  # torch.save: zip archive, or legacy pickle
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(path)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but torch sees no CUDA GPU; set device: cpu to run on CPU"
        )
    return torch.device(device)


def load_data(cfg: RunConfig, device: torch.device | str = "cpu") -> DatasetSplits:
    d = cfg.data
    return load_dataset(
        d.source,
        root=d.root,
        download=d.download,
        val_size=d.val_size,
        split_seed=d.split_seed,
        device=device,
        in_memory=d.in_memory,
        options=d.options,
    )


def build_model(cfg: RunConfig, data: DatasetSplits) -> nn.Module:
    return create_model(
        cfg.model.arch,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        mean=data.mean,
        std=data.std,
    )


class Pipeline:
    """Drives the stages of one run, one epoch per :meth:`step`.

    Args:
        cfg: the validated run configuration.
        data: already-loaded splits (a study loads them once per node); loaded from ``cfg``
            when omitted.
        dense_state: state dict of the dense robust model; skips the pretrain phase. Otherwise
            ``cfg.dense.checkpoint`` is loaded, or the pretrain phase runs first.
        device: overrides ``cfg.device``.
        phases: run only these phases (e.g. ``("pretrain",)`` to build a shared dense model).
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        data: DatasetSplits | None = None,
        dense_state: dict[str, torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        phases: tuple[str, ...] = PHASES,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = (data or load_data(cfg, self.device)).to(self.device)
        self.model = build_model(cfg, self.data).to(self.device)
        if dense_state is None and cfg.dense.checkpoint:
            dense_state = load_state_file(cfg.dense.checkpoint)
        if dense_state is not None:
            self.model.load_state_dict(dense_state)
        compute = Compute.from_config(cfg.compute)
        compute.check_device(self.device)
        compute.prepare(self.model)  # before the masks exist: scores and masks follow the layout
        self.phases = [
            p
            for p in phases
            if getattr(cfg, p).epochs > 0 and not (p == "pretrain" and dense_state is not None)
        ]
        self.masking: ScoreMasking | None = None
        self.phase_index = 0
        self.global_epoch = 0
        self.best: dict[str, Any] = {"val_robust_acc": -1.0, "epoch": -1, "state": None}
        self.stage: TrainingStage | None = None
        self.prune_masks: dict[str, torch.Tensor] | None = None  # the mask at the end of prune
        self._enter_phase()

    # --- phases -------------------------------------------------------------------------------
    @property
    def phase(self) -> str | None:
        return self.phases[self.phase_index] if self.phase_index < len(self.phases) else None

    @property
    def done(self) -> bool:
        return self.phase is None

    def _ensure_masking(self) -> ScoreMasking:
        if self.masking is None:
            p = self.cfg.prune
            self.masking = ScoreMasking(
                self.model,
                sparsity=p.sparsity,
                scope=p.scope,
                score_init=p.score_init,
                include=p.include,
                exclude=p.exclude,
                seed=self.cfg.seed,
                host=make_host(p),
            )
        return self.masking

    def _enter_phase(self) -> None:
        phase = self.phase
        if phase == "pretrain":
            self.stage = PretrainStage(self.model, self.data, self.cfg)
        elif phase == "prune":
            self.stage = PruneStage(self.model, self.data, self.cfg, self._ensure_masking())
        elif phase == "finetune":
            self.stage = FinetuneStage(self.model, self.data, self.cfg, self._ensure_masking())
        else:
            self.stage = None

    def step(self) -> dict[str, Any]:
        """Run one epoch of the current phase; returns its metrics (``phase``, ``epoch``, ...)."""
        if self.stage is None:
            raise RuntimeError("the pipeline is done; nothing left to run")
        record = self.stage.run_epoch()
        self.global_epoch += 1
        record["epoch"] = self.global_epoch
        if (
            self.phase in ("prune", "finetune")
            and record["val_robust_acc"] > self.best["val_robust_acc"]
        ):
            # Model selection on validation only (HYDRA/HARP select on test; we do not).
            self.best = {
                "val_robust_acc": record["val_robust_acc"],
                "epoch": self.global_epoch,
                "phase": self.phase,
                "state": _cpu_copy(self.model.state_dict()),
            }
        if self.stage.done:
            if self.phase == "prune":
                self.prune_masks = self.masks()
            self.phase_index += 1
            self._enter_phase()
            if self.phase is not None:
                # Select within the last phase: the final model is the finetuned one.
                self.best = {"val_robust_acc": -1.0, "epoch": -1, "state": None}
        record["done"] = self.done
        return record

    def run(self) -> list[dict[str, Any]]:
        """Run every remaining epoch; returns the records."""
        records = []
        while not self.done:
            records.append(self.step())
        return records

    # --- results ------------------------------------------------------------------------------
    def masks(self) -> dict[str, torch.Tensor]:
        """The current mask (``{layer: bool tensor}``); raises before the prune phase."""
        if self.masking is None:
            raise RuntimeError("no mask yet: the prune phase has not started")
        return self.masking.masks()

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The current model in the plain architecture (pruned weights zeroed, if masked)."""
        model = self.masking.to_dense() if self.masking else self.model
        return _cpu_copy(model.state_dict())

    def selected_model(self) -> nn.Module:
        """The model chosen on validation robust accuracy in the last phase (a masked copy)."""
        model = copy.deepcopy(self.model)
        if self.best["state"] is not None:
            model.load_state_dict(self.best["state"])
        return model

    def selected_dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The selected model in the plain architecture, pruned weights zeroed (no s2ap needed)."""
        model = self.selected_model()
        masking = get_masking(model)
        if masking is not None:
            model = masking.to_dense()
        return _cpu_copy(model.state_dict())

    def selected_masks(self) -> dict[str, torch.Tensor]:
        """The mask the selected model uses."""
        masking = get_masking(self.selected_model())
        if masking is None:
            raise RuntimeError("no mask yet: the prune phase has not started")
        return masking.masks()

    def evaluate_test(self) -> dict[str, float]:
        """Clean, PGD and AutoAttack accuracy of the selected model on the test split."""
        return evaluate_test(self.selected_model(), self.data, self.cfg)

    # --- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "phase_index": self.phase_index,
            "global_epoch": self.global_epoch,
            "model": self.model.state_dict(),
            "masked": self.masking is not None,
            "host": self.masking.host.state_dict() if self.masking else None,
            "stage": self.stage.state_dict() if self.stage else None,
            "best": self.best,
            "prune_masks": self.prune_masks,
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_index = int(state["phase_index"])
        self.global_epoch = int(state["global_epoch"])
        if state["masked"]:
            self._ensure_masking()
        self.model.load_state_dict(state["model"])
        if self.masking is not None and state.get("host") is not None:
            self.masking.host.load_state_dict(state["host"])  # HARP's rates
        self._enter_phase()
        if self.stage is not None and state["stage"] is not None:
            self.stage.load_state_dict(state["stage"])
        self.best = state["best"]
        self.prune_masks = state.get("prune_masks")
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
