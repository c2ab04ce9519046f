"""HARP host: per-layer pruning rates learned with the scores under one global budget.

HARP (Zhao & Wressnegger, "Holistic Adversarially Robust Pruning", ICLR 2023) learns *how many*
weights each layer keeps besides *which* ones. What we follow, from the paper and its reference
code (github.com/intellisec/harp, commit 9f343c0):

- Rates (``utils/utils.py``: ``rate_act_func``, ``rate_init_func``): layer ``l`` has one
  learnable rate score ``r_l``; it keeps the fraction ``a_l = a_min + (1 - a_min) * sigmoid(r_l)``
  with ``a_min = alpha * (1 - sparsity)`` (HARP's ``k_min = alpha * k``, alpha 0.1 by default).
- Masks and gradients (``models/layers.py``: ``GetSubnet``): layer ``l`` keeps the top ``k_l``
  of ``|s_l|``; the straight-through backward gives the scores HYDRA's gradient and the rate
  ``dL/da_l = sum(dL/dm_l)`` (``g_r = torch.sum(g)``), as if a higher rate raised every entry.
- Budget loss (``utils/hw.py``: ``hw_loss``): ``L_hw = max(sum_l n_l a_l / K - 1, 0)`` joins the
  robust loss with weight ``gamma * (t + 1)`` in prune epoch ``t``, frozen at its value once an
  epoch ends with the budget met (``gamma_dynamic`` and ``frozen_gamma`` in ``train.py``): the
  paper's step-wise incremental regularisation.
- One optimizer for scores and rates (``utils/schedules.py``); ``rate_lr`` and
  ``rate_weight_decay`` optionally give the rates their own learning rate and weight decay.
- ``init="ten_percent"`` starts every layer at 10% kept, as HARP's shipped strategies do
  (``configs/strategies.json``: the weight strategies are all ``010_*``; ``010_uni`` is 0.1 in
  every layer, and the README prunes to ``--k 0.01`` from it).

Where we depart, and why (docs/METHOD.md, "HARP", lists each difference):

- The global budget is exact at every mask, not only approached through the budget loss: the
  rates become integer kept counts ``1 <= k_l <= n_l`` with ``sum_l k_l = K = round((1 -
  sparsity) * N)`` (:func:`allocate_kept_counts`: proportional to ``a_l * n_l``, scaled onto the
  budget, largest-remainder rounding), so every HARP mask is comparable with a HYDRA mask of the
  same sparsity. HARP rounds each layer on its own (it prunes ``int((1 - a_l) * n_l)``). The
  straight-through gradient passes this projection unchanged. The budget loss still matters: it
  keeps the raw rates calibrated (``sum_l n_l a_l`` near ``K``); without it a robust loss pushes
  every rate towards 1 and the split drifts back to uniform. It divides by the rounded ``K``
  where HARP divides by ``k * N`` (at most half a weight apart).
- ``init="target"`` (the default) starts every layer at the target keep rate ``1 - sparsity``;
  the two starts agree at 90% sparsity.
- The rates take ``prune.weight_decay`` (1e-4, HYDRA's) unless ``rate_weight_decay`` is set;
  HARP's CIFAR-10 and SVHN configs decay every parameter, rates included, with 5e-4.
- S2AP perturbs the scores only, as the paper does; the rates are ordinary parameters of the
  host optimizer and step with the gradient taken at ``s + z``, like the scores.
- Unstructured (weight) pruning only: HARP's channel granularity and FLOPs budget are not offered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from s2ap.masking import HydraHost, MaskedLayer, ScoreMasking, kept_count

__all__ = ["REFERENCE_START_RATE", "HarpHost", "RateInit", "allocate_kept_counts", "keep_rates"]

_BISECTION_STEPS = 100  # halvings of the scale interval: far below one weight's worth

#: Where the rates start: ``target`` keeps ``1 - sparsity`` in every layer; ``ten_percent`` keeps
#: :data:`REFERENCE_START_RATE` in every layer, as HARP's shipped strategies do.
RateInit = Literal["target", "ten_percent"]

#: HARP's shipped weight strategies (``configs/strategies.json``) are all ``010_*`` strategies
#: (``010_uni``: 10% kept in every layer), used whatever the target ``--k``.
REFERENCE_START_RATE = 0.1


def keep_rates(logits: Tensor, min_rate: float) -> Tensor:
    """HARP's rate activation: ``min_rate + (1 - min_rate) * sigmoid(logits)``, in (min_rate, 1)."""
    return min_rate + (1.0 - min_rate) * torch.sigmoid(logits)


def _rate_logit(rate: float, min_rate: float) -> float:
    """Inverse of :func:`keep_rates` (HARP's ``rate_init_func``), kept finite."""
    u = min(max((rate - min_rate) / (1.0 - min_rate), 1e-6), 1.0 - 1e-6)
    return math.log(u / (1.0 - u))


def _scaled_to_budget(desired: Sequence[float], sizes: Sequence[int], budget: int) -> list[float]:
    """Real counts ``clip(t * desired_l, 1, n_l)`` whose sum is ``budget``.

    The sum is continuous and nondecreasing in ``t`` (``L`` at ``t = 0``, ``N`` once every layer
    is capped), so bisection finds ``t``; any residual is left to the rounding.
    """
    d = [max(float(v), 1e-12) for v in desired]

    def counts(t: float) -> list[float]:
        return [min(max(t * di, 1.0), float(n)) for di, n in zip(d, sizes)]

    lo, hi = 0.0, max(n / di for di, n in zip(d, sizes))
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sum(counts(mid)) < budget else (lo, mid)
    return counts(hi)


def _largest_remainder(real: Sequence[float], sizes: Sequence[int], budget: int) -> list[int]:
    """Round ``real`` to integers in ``[1, n_l]`` that sum to ``budget``.

    Floors first; the missing units go one each to the largest fractional parts (ties to the
    earlier layer), any surplus comes off the smallest ones.
    """
    counts = [min(max(math.floor(v), 1), n) for v, n in zip(real, sizes)]
    order = sorted(range(len(real)), key=lambda i: (counts[i] - real[i], i))
    short = budget - sum(counts)
    while short:
        step = 1 if short > 0 else -1
        for i in order[::step]:  # largest remainders first when adding, smallest when removing
            if short and 1 <= counts[i] + step <= sizes[i]:
                counts[i] += step
                short -= step
    return counts


def allocate_kept_counts(desired: Sequence[float], sizes: Sequence[int], budget: int) -> list[int]:
    """Per-layer kept counts proportional to ``desired`` that meet ``budget`` exactly.

    Every layer keeps between 1 and all of its ``sizes[l]`` weights. Deterministic: the same
    inputs give the same counts on every machine.
    """
    if len(desired) != len(sizes) or not sizes:
        raise ValueError("desired and sizes must be non-empty and of the same length")
    if not len(sizes) <= budget <= sum(sizes):
        raise ValueError(
            f"a budget of {budget} weights cannot keep between one and all weights of "
            f"{len(sizes)} layers with {sum(sizes)} weights"
        )
    return _largest_remainder(_scaled_to_budget(desired, sizes, budget), sizes, budget)


class _RatedMaskedWeight(torch.autograd.Function):
    """``weight * mask``; straight-through gradients to the scores and to the layer's rate."""

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, rate: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(weight, scores, mask)
        ctx.rate_dtype = rate.dtype
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, scores, mask = ctx.saved_tensors
        grad_mask = grad * weight  # dL/dm, for kept and pruned entries alike
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad_mask * torch.sign(scores) if ctx.needs_input_grad[1] else None
        grad_rate = grad_mask.sum().to(ctx.rate_dtype) if ctx.needs_input_grad[2] else None
        return grad_weight, grad_scores, grad_rate, None


def _check_option(name: str, value: float, low: float, high: float = math.inf) -> float:
    value = float(value)
    if not (math.isfinite(value) and low <= value < high):
        raise ValueError(f"{name} must be finite and in [{low}, {high}), got {value}")
    return value


class HarpHost(HydraHost):
    """HARP: one learned keep rate per layer; the masks meet the global budget exactly.

    Args:
        alpha: floor of a layer's rate as a fraction of the global keep rate,
            ``a_min = alpha * (1 - sparsity)``; in [0, 1).
        gamma: budget-loss weight step: ``gamma * (epoch + 1)`` until the budget is met.
        rate_lr: the rates' learning rate; ``None`` uses the optimizer's (as HARP does).
        init: where the rates start: ``"target"`` keeps ``1 - sparsity`` in every layer;
            ``"ten_percent"`` keeps 10% in every layer (HARP's shipped ``010_uni`` strategy).
            The first mask is the same for both (the exact split is proportional to
            ``a_l * n_l``); the budget loss and the rates' sigmoid slope are not.
        rate_weight_decay: the rates' weight decay; ``None`` uses the optimizer's.

    Attach it with ``ScoreMasking(model, sparsity=..., host=HarpHost())`` (``layer`` scope).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        gamma: float = 0.01,
        rate_lr: float | None = None,
        init: RateInit = "target",
        rate_weight_decay: float | None = None,
    ) -> None:
        self.alpha = _check_option("alpha", alpha, 0.0, 1.0)
        self.gamma = _check_option("gamma", gamma, 0.0)
        if rate_lr is not None and _check_option("rate_lr", rate_lr, 0.0) == 0.0:
            raise ValueError("rate_lr must be > 0 (or None for the optimizer's learning rate)")
        self.rate_lr = rate_lr
        if init not in ("target", "ten_percent"):
            raise ValueError(f"init must be 'target' or 'ten_percent', got {init!r}")
        self.init: RateInit = init
        if rate_weight_decay is not None:
            rate_weight_decay = _check_option("rate_weight_decay", rate_weight_decay, 0.0)
        self.rate_weight_decay = rate_weight_decay
        self.frozen_weight: float | None = None
        self.masking: ScoreMasking | None = None

    # --- mask-facing --------------------------------------------------------------------------
    def attach(self, masking: ScoreMasking) -> None:
        if self.masking is not None:
            raise ValueError("this HarpHost already serves a ScoreMasking; create one per model")
        if masking.scope != "layer":
            raise ValueError("HARP splits one budget across layers: use scope='layer'")
        layers = list(masking.layers.values())
        self.names = list(masking.layers)
        self.sizes = [layer.weight.numel() for layer in layers]
        self.budget = kept_count(sum(self.sizes), masking.sparsity)
        if self.budget < len(layers):
            raise ValueError(
                f"sparsity {masking.sparsity} keeps {self.budget} weights but HARP keeps at "
                f"least one in each of the {len(layers)} layers; lower the sparsity"
            )
        keep = 1.0 - masking.sparsity
        self.min_rate = self.alpha * keep
        start = keep if self.init == "target" else REFERENCE_START_RATE
        if start <= self.min_rate:  # HARP's rate_init_func would take the log of 0 or less
            raise ValueError(
                f"init {self.init!r} starts every layer at {start:g} kept, not above the floor "
                f"alpha * (1 - sparsity) = {self.min_rate:g}; lower alpha or use init 'target'"
            )
        weight = layers[0].weight
        dtype = torch.promote_types(weight.dtype, torch.float32)
        init = torch.full((len(layers),), _rate_logit(start, self.min_rate), dtype=dtype)
        self.logits = nn.Parameter(init.to(weight.device))
        self._sizes = torch.tensor(self.sizes, dtype=dtype, device=weight.device)
        self._index = {layer: i for i, layer in enumerate(layers)}
        self._counts: dict[str, int] = {}
        self._counts_key: tuple | None = None
        self.masking = masking

    def counts_version(self) -> tuple[int, int]:
        return (self.logits.data_ptr(), self.logits._version)  # rates change in place only

    def learns_counts(self) -> bool:
        return self.logits.requires_grad

    def kept_counts(self, masking: ScoreMasking) -> dict[str, int]:
        key = self.counts_version()
        if key != self._counts_key:
            rates = self.rates().detach().cpu().tolist()
            desired = [a * n for a, n in zip(rates, self.sizes)]
            counts = allocate_kept_counts(desired, self.sizes, self.budget)
            self._counts, self._counts_key = dict(zip(self.names, counts)), key
        return self._counts

    def straight_through(self, layer: MaskedLayer, mask: Tensor) -> Tensor:
        rate = keep_rates(self.logits[self._index[layer]], self.min_rate)
        return _RatedMaskedWeight.apply(layer.weight, layer.scores, rate, mask)

    # --- the rates and the budget loss --------------------------------------------------------
    def rates(self) -> Tensor:
        """The raw keep rates ``a_l`` in layer order (differentiable)."""
        return keep_rates(self.logits, self.min_rate)

    def budget_excess(self) -> Tensor:
        """HARP's budget loss ``max(sum_l n_l a_l / K - 1, 0)`` of the raw rates."""
        return torch.clamp_min((self._sizes * self.rates()).sum() / self.budget - 1.0, 0.0)

    def penalty_weight(self, epoch: int) -> float:
        """``gamma * (epoch + 1)``, or the frozen value once the budget has been met."""
        return self.frozen_weight if self.frozen_weight is not None else self.gamma * (epoch + 1)

    # --- training-facing ----------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": [self.logits]}
        if self.rate_lr is not None:
            group["lr"] = self.rate_lr
        if self.rate_weight_decay is not None:
            group["weight_decay"] = self.rate_weight_decay
        return [group]

    def penalty(self, epoch: int) -> Tensor:
        return self.penalty_weight(epoch) * self.budget_excess()

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Freeze the budget-loss weight once the budget is met; report rates and weight."""
        with torch.no_grad():
            excess = float(self.budget_excess())
            rates = self.rates().cpu().tolist()
        weight = self.penalty_weight(epoch)
        if round(excess, 4) == 0.0:  # HARP's test: np.round(loss_hw, 4) == 0
            self.frozen_weight = weight
        out = {f"layer_rate/{name}": a for name, a in zip(self.names, rates)}
        out.update({"rate_budget_excess": excess, "rate_penalty_weight": weight})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits.detach().cpu().clone(), "frozen_weight": self.frozen_weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        logits = state["logits"]
        if tuple(logits.shape) != tuple(self.logits.shape):
            raise ValueError(
                f"HARP state has {tuple(logits.shape)} rates, the model {len(self.names)} layers"
            )
        with torch.no_grad():
            self.logits.copy_(logits)
        frozen = state["frozen_weight"]
        self.frozen_weight = None if frozen is None else float(frozen)
        # No invalidate: copy_ bumps the rates' version, so the masks follow at the next use.
