"""Adversarial examples and robust training objectives.

Inputs are images in [0, 1]; normalisation is a layer inside the model, as torchattacks expects.
Examples are generated with the masked layers on cached effective weights
(:func:`s2ap.masking.effective_weights`): the attack needs gradients with respect to the input
only. torchattacks switches the model to eval mode during the attack and restores it after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2ap.masking import effective_weights

if TYPE_CHECKING:
    import torchattacks

__all__ = [
    "OBJECTIVES",
    "AttackSettings",
    "PGDObjective",
    "RobustObjective",
    "TradesObjective",
    "make_objective",
    "pgd_attack",
]


@dataclass(frozen=True)
class AttackSettings:
    """L-inf PGD threat model. Defaults: the papers' CIFAR-10 setting (PGD-10, 8/255, 2/255)."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True


def pgd_attack(model: nn.Module, settings: AttackSettings) -> torchattacks.PGD:
    """A torchattacks PGD bound to ``model``; build it after moving the model to its device."""
    # Imported here: the package imports all its attacks, scipy.stats with them (~1 s), and a
    # process that only reads configs, masks or results never attacks.
    import torchattacks

    return torchattacks.PGD(
        model,
        eps=settings.eps,
        alpha=settings.step_size,
        steps=settings.steps,
        random_start=settings.random_start,
    )


class RobustObjective(Protocol):
    """A robust training loss: adversarial examples, then a loss on them."""

    def examples(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for (x, y), detached (computed once per batch)."""
        ...

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """The training loss at the current parameters (differentiable)."""
        ...


class PGDObjective:
    """Madry et al. adversarial training: cross-entropy on PGD examples."""

    def __init__(self, model: nn.Module, settings: AttackSettings) -> None:
        self.attack = pgd_attack(model, settings)

    def examples(self, x: Tensor, y: Tensor) -> Tensor:
        with effective_weights():
            return self.attack(x, y).detach()

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv), y)


class TradesObjective:
    """TRADES (Zhang et al., 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``.

    The examples maximise the KL term with PGD from a small random start, as in the reference
    implementation (model in eval mode while attacking).
    """

    def __init__(self, model: nn.Module, settings: AttackSettings, beta: float = 6.0) -> None:
        self.model, self.settings, self.beta = model, settings, beta

    def examples(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.settings
        was_training = self.model.training
        self.model.eval()
        try:
            with effective_weights():
                with torch.no_grad():
                    p_clean = F.softmax(self.model(x), dim=1)
                x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).detach()
                for _ in range(s.steps):
                    x_adv.requires_grad_(True)
                    kl = F.kl_div(F.log_softmax(self.model(x_adv), dim=1), p_clean, reduction="sum")
                    (grad,) = torch.autograd.grad(kl, x_adv)
                    x_adv = x_adv.detach() + s.step_size * grad.sign()
                    x_adv = torch.min(torch.max(x_adv, x - s.eps), x + s.eps).clamp(0, 1)
        finally:
            self.model.train(was_training)
        return x_adv.detach()

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        # Two passes, as in the reference code: one concatenated batch would mix BN statistics.
        clean, adv = model(x), model(x_adv)
        kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
        return F.cross_entropy(clean, y) + self.beta * kl


# name -> fn(model, settings, **options)
OBJECTIVES: dict[str, Callable[..., RobustObjective]] = {
    "pgd": PGDObjective,
    "trades": TradesObjective,
}


def make_objective(
    name: str, model: nn.Module, settings: AttackSettings, **options: float
) -> RobustObjective:
    """Build a registered robust objective (``pgd`` or ``trades``) for ``model``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](model, settings, **options)
