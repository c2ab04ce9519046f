"""What the paper measures: accuracy under attack, mask stability, score-space sharpness."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from s2ap.adversarial import AttackSettings, pgd_attack
from s2ap.masking import ScoreMasking, effective_weights
from s2ap.perturbation import RadiusMode, ascent_perturbation, scores_perturbed

__all__ = [
    "accuracy",
    "autoattack_accuracy",
    "hessian_top_eigenvalue",
    "mask_hamming",
    "robust_accuracy",
    "score_sharpness",
]

Batches = Iterable[tuple[Tensor, Tensor]]


def mask_hamming(a: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Normalised Hamming distance between two masks: (global, per layer), each in [0, 1].

    The global figure counts flipped weights over all weights (larger layers weigh more).
    """
    if set(a) != set(b):
        raise ValueError(f"masks cover different layers: {sorted(set(a) ^ set(b))}")
    per_layer: dict[str, float] = {}
    flipped = total = 0
    for name in a:
        ma, mb = a[name], b[name].to(a[name].device)
        if ma.shape != mb.shape:
            raise ValueError(f"layer {name!r}: shapes {tuple(ma.shape)} and {tuple(mb.shape)}")
        diff = int((ma != mb).sum())
        per_layer[name] = diff / ma.numel()
        flipped += diff
        total += ma.numel()
    return flipped / max(total, 1), per_layer


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> float:
    """Clean top-1 accuracy (the model is put in eval mode and restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def robust_accuracy(model: nn.Module, batches: Batches, settings: AttackSettings) -> float:
    """Accuracy on PGD examples (L-inf) made against ``model`` itself."""
    attack = pgd_attack(model, settings)
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        with effective_weights():
            x_adv = attack(x, y).detach()
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 8 / 255,
    num_classes: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Robust accuracy under AutoAttack (standard, L-inf) on the given examples, fixed seed."""
    import torchattacks  # on use, like s2ap.adversarial.pgd_attack

    was_training = model.training
    model.eval()
    attack = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed
    )
    # The targeted attacks default to 9 target classes (CIFAR-10); fewer classes need fewer.
    for sub in attack._autoattack.attacks:
        if hasattr(sub, "n_target_classes"):
            sub.n_target_classes = min(sub.n_target_classes, num_classes - 1)
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with effective_weights():
            x_adv = attack(xb, yb).detach()  # APGD keeps a graph on its output
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def score_sharpness(
    masking: ScoreMasking,
    loss_fn: Callable[[], Tensor],
    *,
    rho: float,
    radius: RadiusMode = "relative",
    ascent_steps: int = 1,
) -> float:
    """Score-space sharpness ``L(s + z*) - L(s)`` on one fixed batch.

    ``loss_fn`` computes the loss on that batch (e.g. cross-entropy on fixed adversarial
    examples, model in eval mode). ``z*`` is the S2AP ascent at the given radius. The scores and
    their gradients are left as they were.
    """
    scores = masking.scores()
    saved_flags = [s.requires_grad for s in scores]
    saved_grads = [s.grad for s in scores]
    for s in scores:
        s.requires_grad_(True)
        s.grad = None

    def closure() -> Tensor:
        for s in scores:
            s.grad = None
        loss = loss_fn()
        torch.autograd.backward(loss, inputs=scores)
        return loss.detach()

    try:
        base = closure()
        z = ascent_perturbation(scores, closure, rho=rho, radius=radius, ascent_steps=ascent_steps)
        with scores_perturbed(scores, z), torch.no_grad():
            perturbed = loss_fn().detach()
    finally:
        for s, flag, grad in zip(scores, saved_flags, saved_grads):
            s.requires_grad_(flag)
            s.grad = grad
    return float(perturbed - base)


def _joint_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of non-empty ``tensors`` taken as one vector."""
    return torch.sqrt(cast(Tensor, sum((t * t).sum() for t in tensors)))


def hessian_top_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn`` w.r.t. ``params``.

    Power iteration on Hessian-vector products (double backward). For the scores of a masked
    model the products go through the straight-through estimator, i.e. the Hessian of the loss
    as the STE sees it. Stops when the estimate changes by less than ``tol`` (relative).
    """
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = _joint_norm(v)
    v = [t / norm for t in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = _joint_norm(hv)
        if float(norm) == 0.0:
            return 0.0
        v = [t.detach() / norm for t in hv]
        if abs(new - eig) <= tol * max(abs(new), 1e-12):
            return new
        eig = new
    return eig
