"""The S2AP score-space min-max: perturb the scores within a ball, descend from there.

``min_s max_{||z_l|| <= r_l} L(w * M(s + z))`` with ``r_l = rho * ||s_l||`` (relative radius, per
layer, the default) or one global ball ``||z|| <= rho`` (absolute radius, SAM-style).

One update (:meth:`S2AP.step`): gradient at ``s`` -> perturbation ``z`` -> gradient at ``s + z``
on the same adversarial batch -> restore ``s`` -> step the wrapped optimizer with that gradient.
The ascent never touches the optimizer's state (momentum, Adam moments): only the final step does.

Which perturbation an update takes is its arm (:data:`s2ap.arms.ARMS`): ``score`` (S2AP),
``random`` (a random direction of the same norm: the control arm), ``none`` (plain host update).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "S2AP",
    "RadiusMode",
    "ascent_perturbation",
    "perturbation_radii",
    "random_perturbation",
    "scores_perturbed",
]

RadiusMode = Literal["relative", "absolute"]
Closure = Callable[[], Tensor]

_EPS = 1e-12


def _detached(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [t.detach() for t in tensors]


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """L2 norm of each tensor as a 0-d tensor, accumulated in at least float32.

    One fused kernel for all tensors on CUDA, and no host synchronisation: radii and scales
    stay on the device, so the ascent queues up behind the backward pass without a stall.
    """
    dtype = _accumulation_dtype(tensors[0])
    return list(torch._foreach_norm(_detached(tensors), 2, dtype=dtype))


def _check_radius(radius: str) -> None:
    if radius not in get_args(RadiusMode):
        raise ValueError(f"radius must be 'relative' or 'absolute', got {radius!r}")


def perturbation_radii(scores: Sequence[Tensor], rho: float, radius: RadiusMode) -> list[Tensor]:
    """Radii as 0-d tensors: ``rho * ||s_l||`` per tensor (relative), or ``[rho]`` (absolute)."""
    _check_radius(radius)
    if radius == "relative":
        return [rho * n for n in _norms(scores)]
    s = scores[0]
    return [torch.tensor(float(rho), dtype=_accumulation_dtype(s), device=s.device)]


def _norms_and_radii(
    tensors: Sequence[Tensor], radii: Sequence[Tensor], radius: RadiusMode
) -> tuple[Tensor, Tensor]:
    """Per tensor: the norm of its ball and the ball's radius, as two vectors.

    Relative: every tensor is its own ball. Absolute: one ball, the joint norm of all tensors.
    """
    norms = torch.stack(_norms(tensors))
    if radius == "relative":
        return norms, torch.stack(list(radii)).to(norms)
    joint = torch.linalg.vector_norm(norms)
    return joint.expand(len(tensors)), radii[0].to(norms).expand(len(tensors))


def _scaled_directions(
    directions: Sequence[Tensor], radii: Sequence[Tensor], radius: RadiusMode
) -> list[Tensor]:
    """Scale each ball's directions to its radius (a zero direction stays zero)."""
    norms, r = _norms_and_radii(directions, radii, radius)
    scales = (r / (norms + _EPS)).to(directions[0].dtype).unbind()
    return list(torch._foreach_mul(_detached(directions), scales))


def _project(z: Sequence[Tensor], radii: Sequence[Tensor], radius: RadiusMode) -> list[Tensor]:
    """Project ``z`` back onto its ball(s); a ``z`` inside its ball is returned unchanged."""
    norms, r = _norms_and_radii(z, radii, radius)
    scales = torch.where(norms > r, r / norms, torch.ones_like(norms))  # no host sync
    return list(torch._foreach_mul(list(z), scales.to(z[0].dtype).unbind()))


def _grads(scores: Sequence[Tensor]) -> list[Tensor]:
    """The current gradients (not copies: every use below makes new tensors from them)."""
    return [s.grad if s.grad is not None else torch.zeros_like(s) for s in scores]


class scores_perturbed:
    """Temporarily add ``z`` to the scores in place; restore them exactly on exit.

    The restore copies the saved tensors back (not ``s - z``) so ``rho = 0`` and floating-point
    round-off can never drift the scores. Both writes bump the version counters, which is how
    the masks notice (:mod:`s2ap.masking`).
    """

    def __init__(self, scores: Sequence[Tensor], z: Sequence[Tensor]) -> None:
        self.scores, self.z = _detached(scores), list(z)

    def __enter__(self) -> None:
        self.saved = [s.clone() for s in self.scores]
        with torch.no_grad():
            torch._foreach_add_(self.scores, self.z)

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.scores, self.saved)
        del self.saved


def ascent_perturbation(
    scores: Sequence[Tensor],
    closure: Closure,
    *,
    rho: float,
    radius: RadiusMode = "relative",
    ascent_steps: int = 1,
) -> list[Tensor]:
    """The S2AP inner maximisation: ``z`` on the ball(s) after ``ascent_steps`` normalised steps.

    Expects the gradient at ``s`` in ``scores[i].grad`` (the host update's backward pass already
    computed it, so step one costs nothing). Each later step re-evaluates ``closure`` at
    ``s + z``, takes a normalised gradient step of the radius' length and projects back onto
    the ball. The scores are unchanged on return; their ``.grad`` holds the last gradient seen.
    """
    if ascent_steps < 1:
        raise ValueError(f"ascent_steps must be >= 1, got {ascent_steps}")
    radii = perturbation_radii(scores, rho, radius)
    z = _scaled_directions(_grads(scores), radii, radius)
    for _ in range(ascent_steps - 1):
        with scores_perturbed(scores, z):
            closure()
        step = _scaled_directions(_grads(scores), radii, radius)
        z = _project(torch._foreach_add(z, step), radii, radius)
    return z


def random_perturbation(
    scores: Sequence[Tensor],
    *,
    rho: float,
    radius: RadiusMode = "relative",
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """A Gaussian direction scaled to the same radius as the S2AP perturbation (control arm)."""
    radii = perturbation_radii(scores, rho, radius)
    directions = [
        torch.randn(s.shape, generator=generator, dtype=s.dtype).to(s.device) for s in scores
    ]
    return _scaled_directions(directions, radii, radius)


class S2AP:
    """Wraps any torch optimizer with the S2AP update of the score parameters.

    Args:
        optimizer: the host optimizer over the trainable parameters (scores, and BatchNorm
            affine parameters when they train). Its state is only touched by its own ``step``.
        scores: the tensors to perturb: the scores (``ScoreMasking.scores()``) for S2AP. The
            same update over the weights, with a relative radius, is AWP (finetune stage).
        rho: the radius: relative (``||z_l|| <= rho * ||s_l||``) or absolute (``||z|| <= rho``).
        radius: ``"relative"`` (default) or ``"absolute"``.
        ascent_steps: number of normalised ascent steps (>= 1).
        perturbation: the arm (:data:`s2ap.arms.ARMS`): ``"score"`` (S2AP), ``"random"``
            (same norm, random direction) or ``"none"`` (the host update, HYDRA).
        warmup_epochs: epochs of plain host updates before the perturbation starts; set the
            epoch with :meth:`set_epoch`.
        seed: for the random perturbation.

    Usage::

        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss = objective.loss(model, x, x_adv, y)
            loss.backward()
            return loss

        loss = s2ap.step(closure)   # closure runs 1 + ascent_steps times when perturbing
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scores: Sequence[Tensor],
        *,
        rho: float,
        radius: RadiusMode = "relative",
        ascent_steps: int = 1,
        perturbation: str = "score",
        warmup_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        from s2ap.arms import ARMS  # the arm table points at this module's directions

        self.direction = ARMS.get(perturbation).direction  # ValueError lists the arms
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if ascent_steps < 1:
            raise ValueError(f"ascent_steps must be >= 1, got {ascent_steps}")
        _check_radius(radius)
        self.optimizer = optimizer
        self.scores = list(scores)
        self.rho = float(rho)
        self.radius: RadiusMode = radius
        self.ascent_steps = int(ascent_steps)
        self.perturbation = perturbation
        self.warmup_epochs = int(warmup_epochs)
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def perturbing(self) -> bool:
        """Whether this epoch perturbs (past warm-up, with a kind other than none)."""
        return self.direction is not None and self.epoch >= self.warmup_epochs

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Closure) -> Tensor:
        """One min-max update. Returns the loss at the unperturbed scores."""
        loss = closure()
        if self.direction is not None and self.perturbing:
            z = self.direction(self, closure)
            with scores_perturbed(self.scores, z):
                closure()  # the descent gradient, taken at s + z
        self.optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])
