"""The three training stages, one epoch at a time: pretrain, prune, finetune; and evaluate.

Each stage is built from (model, data, typed config), runs one epoch per :meth:`run_epoch` call,
returns that epoch's metrics as a flat dict, and saves/restores everything needed to resume
exactly (optimizer, schedule, data order, RNG, previous mask). The same objects drive
``s2ap run`` and the Ray Tune trials.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from s2ap import metrics
from s2ap.adversarial import AttackSettings, make_objective
from s2ap.arms import HOSTS
from s2ap.compute import Compute
from s2ap.config import (
    AugmentConfig,
    DataConfig,
    PruneConfig,
    RunConfig,
    ThreatConfig,
    _TrainConfig,
)
from s2ap.data import Augment, DatasetSplits
from s2ap.masking import HydraHost, ScoreMasking
from s2ap.perturbation import S2AP

__all__ = [
    "FinetuneStage",
    "PretrainStage",
    "PruneStage",
    "TrainingStage",
    "evaluate_test",
    "make_host",
    "validate",
]


def attack_settings(threat: ThreatConfig, steps: int | None = None) -> AttackSettings:
    return AttackSettings(eps=threat.eps, step_size=threat.step_size, steps=steps or threat.steps)


def augmentation(data_cfg: DataConfig, data: DatasetSplits) -> Augment | None:
    aug = data_cfg.augment
    if aug == "none":
        return None
    if aug == "default":
        return data.default_augment
    assert isinstance(aug, AugmentConfig)
    return Augment(crop_padding=aug.crop_padding, flip=aug.flip)


def make_host(cfg: PruneConfig) -> HydraHost:
    """The host named by ``prune.host`` (:data:`s2ap.arms.HOSTS`), for
    ``ScoreMasking(..., host=...)``."""
    return HOSTS.get(cfg.host).build(cfg)


def make_optimizer(
    params: list[nn.Parameter] | list[dict[str, Any]], cfg: _TrainConfig
) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: _TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. ``step``: x0.1 at 50% and 75% of the epochs."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "step":
        milestones = [cfg.epochs // 2, (3 * cfg.epochs) // 4]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def bn_stats_frozen(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Keep BatchNorm running statistics fixed (momentum 0) during the extra S2AP/AWP passes.

    The perturbed passes see the same batch again; letting them update the running stats
    would count that batch two or more times. ``bns``: :func:`batch_norms` of the model.
    """
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def validate(
    model: nn.Module, data: DatasetSplits, cfg: RunConfig, *, prefix: str = "val"
) -> dict[str, float]:
    """Clean and PGD accuracy of the (masked) model on the validation split."""
    split = data.val
    if cfg.validation.max_examples:
        split = split.subset(cfg.validation.max_examples)
    bs = cfg.data.eval_batch_size
    settings = attack_settings(cfg.threat, cfg.validation.pgd_steps)
    return {
        f"{prefix}_clean_acc": metrics.accuracy(model, split.batches(bs)),
        f"{prefix}_robust_acc": metrics.robust_accuracy(model, split.batches(bs), settings),
    }


def evaluate_test(model: nn.Module, data: DatasetSplits, cfg: RunConfig) -> dict[str, float]:
    """Final numbers on the test split: clean, PGD-k and (optionally) AutoAttack accuracy."""
    ev = cfg.evaluate
    split = data.test.subset(min(ev.n_examples, len(data.test)))
    bs = cfg.data.eval_batch_size
    out = {
        "test_clean_acc": metrics.accuracy(model, split.batches(bs)),
        "test_pgd_acc": metrics.robust_accuracy(
            model, split.batches(bs), attack_settings(cfg.threat, ev.pgd_steps)
        ),
        "test_examples": float(len(split)),
    }
    if ev.autoattack:
        aa = split.subset(min(ev.autoattack_examples or len(split), len(split)))
        x, y = next(iter(aa.batches(len(aa))))
        out["test_autoattack_acc"] = metrics.autoattack_accuracy(
            model, x, y, eps=cfg.threat.eps, num_classes=data.num_classes, seed=cfg.seed
        )
    return out


class TrainingStage:
    """One adversarial training stage: the loop every stage shares, read top to bottom.

    Per batch: adversarial examples once (at the current parameters), then one update through
    ``self.update`` (a :class:`~s2ap.perturbation.S2AP`, which is the plain host step when its
    perturbation is ``none``). Per epoch: schedule step, then validation.
    """

    name = "train"

    def __init__(
        self,
        model: nn.Module,
        data: DatasetSplits,
        cfg: RunConfig,
        stage_cfg: _TrainConfig,
        *,
        seed_offset: int,
    ) -> None:
        self.model, self.data, self.cfg, self.stage_cfg = model, data, cfg, stage_cfg
        self.epoch = 0
        self.compute = Compute.from_config(cfg.compute)
        self.batch_norms = batch_norms(model)
        self.augment = augmentation(cfg.data, data)
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + seed_offset)
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": trainable}, *self.extra_param_groups()]
        self.optimizer = make_optimizer(groups, stage_cfg)
        self.schedule = make_schedule(self.optimizer, stage_cfg)
        self.update = self.make_update()
        self.objective = make_objective(
            stage_cfg.objective,
            model,
            attack_settings(cfg.threat),
            **({"beta": stage_cfg.trades_beta} if stage_cfg.objective == "trades" else {}),
        )

    @property
    def done(self) -> bool:
        return self.epoch >= self.stage_cfg.epochs

    def make_update(self) -> S2AP:
        return S2AP(self.optimizer, [], rho=0.0, perturbation="none")

    def train_batch(self, x: Tensor, y: Tensor) -> Tensor:
        """One adversarial update: examples at the current parameters, then ``self.update``.

        Returns the robust loss at the unperturbed parameters, detached, on the device.
        """
        with self.compute.autocast(x.device):
            x_adv = self.objective.examples(x, y)
        return self.update.step(self._closure(x, x_adv, y))

    def _closure(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Callable[[], Tensor]:
        """Loss and gradients at the current parameters; runs once, or 1 + ascent steps times.

        Every pass after the first keeps the BatchNorm statistics fixed.
        """
        passes = 0

        def closure() -> Tensor:
            nonlocal passes
            frozen = bn_stats_frozen(self.batch_norms) if passes else contextlib.nullcontext()
            passes += 1
            with frozen:
                self.update.zero_grad()
                with self.compute.autocast(x.device):
                    loss = self.objective.loss(self.model, x, x_adv, y)
                self.with_penalty(loss).backward()
            return loss.detach()

        return closure

    def run_epoch(self) -> dict[str, Any]:
        self.update.set_epoch(self.epoch)
        self.model.train()
        start = time.perf_counter()
        total_loss: Tensor | float = 0.0
        seen = 0
        batches = self.data.train.batches(
            self.cfg.data.batch_size,
            shuffle=True,
            generator=self.generator,
            augment=self.augment,
            drop_last=len(self.data.train) > self.cfg.data.batch_size,
        )
        for x, y in batches:
            loss = self.train_batch(x, y)
            # Summed on the device: a float() here would wait for every batch to finish.
            total_loss = total_loss + loss.float() * len(y)
            seen += len(y)
        mean_loss = float(total_loss) / max(seen, 1)  # waits for the last batch
        train_time = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.schedule.step()
        self.epoch += 1
        record: dict[str, Any] = {
            "phase": self.name,
            "phase_epoch": self.epoch,
            "train_robust_loss": mean_loss,
            "lr": lr,
            "epoch_time_s": train_time,
            "images_per_s": seen / max(train_time, 1e-9),
        }
        record.update(validate(self.model, self.data, self.cfg))
        record.update(self.epoch_metrics())
        return record

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups trained besides the model's (the prune stage's host rates)."""
        return []

    def with_penalty(self, loss: Tensor) -> Tensor:
        """The loss the backward pass sees: the robust loss plus any stage penalty."""
        return loss

    def epoch_metrics(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "update": self.update.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.update.load_state_dict(state["update"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])


class PretrainStage(TrainingStage):
    """Stage (i): PGD adversarial training of the dense model."""

    name = "pretrain"

    def __init__(self, model: nn.Module, data: DatasetSplits, cfg: RunConfig) -> None:
        super().__init__(model, data, cfg, cfg.pretrain, seed_offset=1)


class PruneStage(TrainingStage):
    """Stage (ii): learn the scores with weights frozen; S2AP perturbs the scores.

    The masking's host decides how many weights each layer keeps; a host that learns more than
    the scores (HARP's per-layer rates) adds its parameters to the optimizer and its budget
    loss to the training loss. The rates are not perturbed: S2AP acts on the scores only.

    Records, besides the shared metrics, the mask's Hamming distance to the previous epoch's
    (global and per layer), the measured sparsity (global and per layer), the host's numbers
    (HARP: ``layer_rate/<layer>``) and score-space sharpness on a fixed validation batch at
    ``validation.sharpness_rho`` (one radius for every arm).
    """

    name = "prune"

    def __init__(
        self, model: nn.Module, data: DatasetSplits, cfg: RunConfig, masking: ScoreMasking
    ) -> None:
        self.masking = masking
        masking.set_stage("prune", bn_trainable=cfg.prune.bn_trainable)
        self.previous_mask = masking.masks()
        super().__init__(model, data, cfg, cfg.prune, seed_offset=2)

    def make_update(self) -> S2AP:
        p = self.cfg.prune
        return S2AP(
            self.optimizer,
            self.masking.scores(),
            rho=p.rho,
            radius=p.radius,
            ascent_steps=p.ascent_steps,
            perturbation=p.perturbation,
            warmup_epochs=p.warmup_epochs,
            seed=self.cfg.seed,
        )

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return self.masking.host.param_groups()

    def with_penalty(self, loss: Tensor) -> Tensor:
        penalty = self.masking.host.penalty(self.epoch)
        return loss if penalty is None else loss + penalty

    def epoch_metrics(self) -> dict[str, Any]:
        masks = self.masking.masks()
        hamming, per_layer = metrics.mask_hamming(self.previous_mask, masks)
        self.previous_mask = masks
        sparsity, layer_sparsity = self.masking.sparsity_report()
        out: dict[str, Any] = {
            "mask_hamming": hamming,
            "sparsity": sparsity,
            "perturbing": float(self.update.perturbing),
            **self.masking.host.end_epoch(self.epoch - 1),
        }
        out.update({f"layer_sparsity/{name}": s for name, s in layer_sparsity.items()})
        v = self.cfg.validation
        with self._fixed_batch_loss() as loss_fn:
            out["sharpness"] = metrics.score_sharpness(
                self.masking, loss_fn, rho=v.sharpness_rho, radius=self.cfg.prune.radius
            )
            if self.done and v.hessian_iters:
                out["hessian_top_eig"] = self._hessian(loss_fn, v.hessian_iters)
        out.update({f"mask_hamming/{name}": d for name, d in per_layer.items()})
        return out

    @contextlib.contextmanager
    def _fixed_batch_loss(self) -> Iterator[Callable[[], Tensor]]:
        """Loss on PGD examples of the first validation examples, model in eval mode.

        The same examples every epoch, so sharpness is comparable across epochs and trials.
        """
        v = self.cfg.validation
        split = self.data.val.subset(min(v.sharpness_examples, len(self.data.val)))
        x, y = next(iter(split.batches(len(split))))
        was_training = self.model.training
        self.model.eval()
        try:
            pgd = make_objective("pgd", self.model, attack_settings(self.cfg.threat))
            x_adv = pgd.examples(x, y)
            yield lambda: nn.functional.cross_entropy(self.model(x_adv), y)
        finally:
            self.model.train(was_training)

    def _hessian(self, loss_fn: Callable[[], Tensor], iters: int) -> float:
        scores = self.masking.scores()
        flags = [s.requires_grad for s in scores]
        for s in scores:
            s.requires_grad_(True)
        try:
            return metrics.hessian_top_eigenvalue(loss_fn, scores, iters=iters, seed=self.cfg.seed)
        finally:
            for s, flag in zip(scores, flags):
                s.requires_grad_(flag)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["previous_mask"] = self.previous_mask
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.previous_mask = state["previous_mask"]


class FinetuneStage(TrainingStage):
    """Stage (iii): adversarial training of the surviving weights with the mask fixed.

    With ``finetune.awp.enabled`` the update is AWP: the same min-max as S2AP, over the weights
    with a relative radius ``gamma`` per layer, so every arm can be finetuned identically.
    """

    name = "finetune"

    def __init__(
        self, model: nn.Module, data: DatasetSplits, cfg: RunConfig, masking: ScoreMasking
    ) -> None:
        self.masking = masking
        masking.set_stage("finetune")
        super().__init__(model, data, cfg, cfg.finetune, seed_offset=3)

    def make_update(self) -> S2AP:
        awp = self.cfg.finetune.awp
        weights = [layer.weight for layer in self.masking.layers.values()]
        return S2AP(
            self.optimizer,
            weights,
            rho=awp.gamma,
            radius="relative",
            perturbation="score" if awp.enabled else "none",
            warmup_epochs=awp.warmup_epochs,
            seed=self.cfg.seed,
        )

    def epoch_metrics(self) -> dict[str, Any]:
        sparsity, _ = self.masking.sparsity_report()
        return {"sparsity": sparsity}
