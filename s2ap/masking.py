"""Score-based masks: HYDRA-style top-k over learned importance scores.

Every prunable ``Conv2d``/``Linear`` layer gets a ``scores`` parameter shaped like its weight.
The mask keeps the ``k`` weights with the largest ``|scores|`` (per layer, the same fraction in
every layer as in HYDRA, or over all layers at once) and the forward pass uses ``weight * mask``.
How many weights each layer keeps is the host's decision (:class:`HydraHost`; HARP's learned
per-layer rates in :mod:`s2ap.harp`).
The backward pass is a straight-through estimator: ``dm/d|s| := 1``, so
``dL/ds = dL/d(w*m) * w * sign(s)``.

Masks are cached: PGD runs ~11 forward/backward passes per batch with unchanged scores, so the
top-k selection happens once per change of the scores or of the kept counts (HARP's rates), not
once per forward pass. Changes are detected through the tensor version counter, which every
in-place write bumps (optimizer steps, ``copy_`` in ``load_state_dict``, the S2AP perturbation and
its restore); the host reports its own counter (:meth:`HydraHost.counts_version`). Code that
rewrites scores or rates through ``.data`` bypasses the counter and must call
:meth:`ScoreMasking.invalidate`.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "THRESHOLD_SELECTORS",
    "HydraHost",
    "MaskedConv2d",
    "MaskedLayer",
    "MaskedLinear",
    "Scope",
    "ScoreInit",
    "ScoreMasking",
    "Stage",
    "apply_masks_to_state_dict",
    "effective_weights",
    "get_masking",
    "kept_count",
    "kth_largest_by_selection",
    "kth_largest_by_sort",
]

Scope = Literal["layer", "global"]
ScoreInit = Literal["scaled", "magnitude", "random"]
Stage = Literal["prune", "finetune", "dense"]


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` with the straight-through gradient to the scores."""

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, scores, mask = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad * weight * torch.sign(scores) if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


def kept_count(numel: int, sparsity: float) -> int:
    """Number of weights a scope keeps: exactly ``round((1 - sparsity) * numel)``, at least 1."""
    return max(1, min(numel, round((1.0 - sparsity) * numel)))


def kth_largest_by_sort(flat: Tensor, k: int) -> Tensor:
    """The ``k``-th largest entry of a 1-D tensor, by a full sort (0-d tensor, no host sync)."""
    return torch.sort(flat, descending=True).values[k - 1]


def kth_largest_by_selection(flat: Tensor, k: int) -> Tensor:
    """The ``k``-th largest entry of a 1-D tensor, by selection (``torch.kthvalue``)."""
    return torch.kthvalue(flat, flat.numel() - k + 1).values


#: Device type -> how the mask threshold is found; any other device sorts. Measured: refreshing
#: all ResNet-18 masks on an H100 took 4.1 ms by sort and 54 ms by kthvalue (one thread block per
#: tensor); on a 2-core CPU, 131k scores take 1.1 ms by kthvalue (quickselect) and 10 ms by sort.
THRESHOLD_SELECTORS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "cpu": kth_largest_by_selection,
}


def _top_k_mask(magnitudes: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries; ties go to the lower flat index.

    The mask of a stable descending sort cut at ``k``, found from one threshold ``t`` (the k-th
    largest value): every entry above ``t``, then the entries equal to ``t`` in index order
    until ``k`` are kept.
    """
    flat = magnitudes.reshape(-1)
    t = THRESHOLD_SELECTORS.get(flat.device.type, kth_largest_by_sort)(flat, k)
    above, tied = flat > t, flat == t
    keep = above | (tied & (tied.cumsum(0) <= k - above.sum()))
    return keep.view_as(magnitudes)


class MaskedLayer(nn.Module):
    """Mixin for a layer whose weight is multiplied by a top-k mask of its ``scores``.

    Holds the dense ``weight`` unchanged; ``mask`` is a persistent bool buffer so checkpoints
    and exported masks agree. ``_masking`` points at the :class:`ScoreMasking` that owns the
    layer (not a submodule: it is shared by every masked layer of a model).
    """

    weight: Tensor
    scores: nn.Parameter
    mask: Tensor

    def _init_masked(self) -> None:
        self.scores = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.mask_frozen = False
        self._masking: ScoreMasking | None = None
        self._mask_key: tuple | None = None
        self._mask_float: Tensor | None = None
        self._effective: Tensor | None = None
        self._effective_key: tuple | None = None

    # --- cache keys ---------------------------------------------------------------------------
    def _scores_key(self) -> tuple:
        s = self.scores
        return (s.data_ptr(), s._version, s.device, s.dtype)

    def _weight_key(self) -> tuple:
        w = self.weight
        return (w.data_ptr(), w._version, w.device, w.dtype)

    def _stale(self) -> bool:
        if self.mask_frozen:
            return self._mask_float is None or self._mask_float.device != self.weight.device
        if self._mask_key != self._scores_key():
            return True
        # The kept count may change without the scores (a step of HARP's rates alone).
        masking = self._masking
        return masking is not None and masking._counts_stale()

    def masked_weight(self) -> Tensor:
        """The weight the forward pass uses (the straight-through path when scores or rates train).

        Eager under ``torch.compile`` (:func:`select_weights_eagerly`).
        """
        if self._stale():
            if self._masking is None:
                raise RuntimeError("masked layer is not attached to a ScoreMasking")
            self._masking.refresh()
        mask = self._mask_float
        assert mask is not None and self._masking is not None
        if _EFFECTIVE_ONLY.active or not torch.is_grad_enabled():
            return self._cached_effective_weight(mask)
        host = self._masking.host
        # Learned kept counts (HARP's rates) take their gradient through the straight-through
        # path too, so it is needed while they train even with the scores frozen.
        if self.scores.requires_grad or (not self.mask_frozen and host.learns_counts()):
            return host.straight_through(self, mask)
        if self.weight.requires_grad:
            return self.weight * mask
        return self._cached_effective_weight(mask)

    def _cached_effective_weight(self, mask: Tensor) -> Tensor:
        """``weight * mask`` without a graph, cached; ``mask`` is the current ``_mask_float``."""
        key = (self._weight_key(), self._mask_key, id(mask))
        if self._effective is None or self._effective_key != key:
            with torch.no_grad():
                self._effective = self.weight * mask
            self._effective_key = key
        return self._effective

    def _set_mask(self, mask: Tensor) -> None:
        with torch.no_grad():
            if self.mask.shape == mask.shape and self.mask.device == mask.device:
                self.mask.copy_(mask)
            else:
                self.mask = mask.clone()
        self._mask_float = self.mask.to(self.weight.dtype)
        self._mask_key = self._scores_key()
        self._effective = None

    def get_extra_state(self) -> dict:
        return {"mask_frozen": bool(self.mask_frozen)}

    def set_extra_state(self, state: dict) -> None:
        self.mask_frozen = bool(state.get("mask_frozen", False))
        self._mask_float = None
        self._mask_key = None


class _EffectiveOnly(contextlib.ContextDecorator):
    """Re-entrant flag: attack passes need no gradient to the scores."""

    depth = 0

    @property
    def active(self) -> bool:
        return _EffectiveOnly.depth > 0

    def __enter__(self) -> _EffectiveOnly:
        _EffectiveOnly.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        _EffectiveOnly.depth -= 1


_EFFECTIVE_ONLY = _EffectiveOnly()


def effective_weights() -> contextlib.AbstractContextManager:
    """Run masked layers on cached ``weight * mask`` tensors, like a dense model.

    Use it around attack generation: PGD needs gradients with respect to the input only, so
    the straight-through path to the scores (and its backward) is wasted work there.
    """
    return _EffectiveOnly()


def select_weights_eagerly() -> None:
    """Keep :meth:`MaskedLayer.masked_weight` eager under ``torch.compile`` (idempotent).

    Its cache checks (version counters, data pointers) are Python state dynamo would guard on
    or break at anyway; the graph breaks there, once per layer. Applied when a model is first
    compiled (:meth:`s2ap.compute.Compute.prepare`), not as a decorator at import:
    ``torch.compiler.disable`` imports ``torch._dynamo`` (~1.5 s), which an eager run never needs.
    """
    global _weights_selected_eagerly
    if not _weights_selected_eagerly:
        # A deliberate patch of the method with its wrapped self (mypy forbids it by default).
        MaskedLayer.masked_weight = torch.compiler.disable(  # type: ignore[method-assign]
            MaskedLayer.masked_weight
        )
        _weights_selected_eagerly = True


_weights_selected_eagerly = False


class MaskedConv2d(nn.Conv2d, MaskedLayer):
    """``nn.Conv2d`` whose weight is masked by the top-k of its scores."""

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.masked_weight(), self.bias)


class MaskedLinear(nn.Linear, MaskedLayer):
    """``nn.Linear`` whose weight is masked by the top-k of its scores."""

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.masked_weight(), self.bias)


_MASKED_TYPES: dict[type[nn.Module], type[MaskedLayer]] = {
    nn.Conv2d: MaskedConv2d,
    nn.Linear: MaskedLinear,
}


def _to_masked(layer: nn.Module) -> MaskedLayer:
    """Swap the class of ``layer`` in place: same parameters, same hooks, plus scores."""
    layer.__class__ = _MASKED_TYPES[type(layer)]
    masked = cast(MaskedLayer, layer)  # what the class swap made it
    masked._init_masked()
    return masked


def _fan_in(weight: Tensor) -> int:
    return weight[0].numel()


# Score initialisations: name -> fn(weight, generator) -> scores. HYDRA's "scaled" init makes
# the first mask exactly the magnitude-pruning mask at the scale of Kaiming-uniform scores.
_SCORE_INITS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "scaled": lambda w, g: math.sqrt(6.0 / _fan_in(w)) * w / w.abs().max().clamp_min(1e-12),
    "magnitude": lambda w, g: w.abs().clone(),
    "random": lambda w, g: (
        (torch.rand(w.shape, generator=g, dtype=w.dtype) * 2 - 1).to(w.device)
        * math.sqrt(6.0 / _fan_in(w))
    ),
}


class HydraHost:
    """The host pruning method: how many weights each layer keeps, and what else it learns.

    This base class is HYDRA (Sehwag et al., NeurIPS 2020): every layer keeps the same fraction,
    ``kept_count(numel, sparsity)``, and only the scores learn. Another host subclasses it and
    overrides what differs (HARP learns per-layer rates: :class:`s2ap.harp.HarpHost`).
    :class:`ScoreMasking` calls the mask-facing methods; the prune stage and the pipeline call
    the training-facing ones (extra parameters, a loss term, epoch hook, checkpoint state).
    """

    def attach(self, masking: ScoreMasking) -> None:
        """Called once by ``masking`` with its layers in place, before the first mask."""

    def kept_counts(self, masking: ScoreMasking) -> dict[str, int]:
        """Weights each layer keeps (``layer`` scope); a layer whose count changes is re-masked."""
        return {
            name: kept_count(layer.scores.numel(), masking.sparsity)
            for name, layer in masking.layers.items()
        }

    def counts_version(self) -> Hashable:
        """A value that changes whenever :meth:`kept_counts` may (checked before every forward).

        HYDRA's counts are fixed by the sparsity: a constant.
        """
        return None

    def learns_counts(self) -> bool:
        """Whether the kept counts take a gradient now (HARP's rates); HYDRA's never do."""
        return False

    def straight_through(self, layer: MaskedLayer, mask: Tensor) -> Tensor:
        """The weight of a training forward pass: ``weight * mask``, STE gradient to the scores."""
        return _MaskedWeight.apply(layer.weight, layer.scores, mask)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups the host trains besides the scores."""
        return []

    def penalty(self, epoch: int) -> Tensor | None:
        """A term the host adds to the training loss in prune epoch ``epoch`` (from 0)."""
        return None

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after prune epoch ``epoch``; returns host numbers for the epoch's record."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the model's state dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


class ScoreMasking:
    """Owns the masked layers of one model: sparsity, scope, the mask cache and stage switches.

    Args:
        model: converted in place; every selected ``Conv2d``/``Linear`` becomes masked.
        sparsity: fraction of weights removed in each scope, in (0, 1).
        scope: ``"layer"`` keeps the same fraction in every layer (HYDRA); ``"global"`` ranks
            all scores together.
        score_init: ``"scaled"`` (HYDRA), ``"magnitude"`` or ``"random"``.
        include / exclude: glob patterns over module names (``"layer4.*"``); default all
            conv and linear layers.
        seed: for the random score initialisation.
        host: the host pruning method (how many weights each layer keeps); default HYDRA,
            :class:`HydraHost`. HARP: :class:`s2ap.harp.HarpHost`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float,
        scope: Scope = "layer",
        score_init: ScoreInit = "scaled",
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        seed: int = 0,
        host: HydraHost | None = None,
    ) -> None:
        if not 0.0 < sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if score_init not in _SCORE_INITS:
            raise ValueError(
                f"score_init must be one of {sorted(_SCORE_INITS)}, got {score_init!r}"
            )
        self.sparsity = float(sparsity)
        self.scope: Scope = scope
        include = list(include or ["*"])
        exclude = list(exclude or [])
        self.layers: dict[str, MaskedLayer] = {}
        for name, module in model.named_modules():
            if isinstance(module, MaskedLayer):
                raise ValueError(f"layer {name!r} is already masked; attach ScoreMasking once")
            if type(module) not in _MASKED_TYPES:
                continue
            if not any(fnmatch.fnmatchcase(name, p) for p in include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in exclude):
                continue
            self.layers[name] = _to_masked(module)
        if not self.layers:
            raise ValueError("no prunable Conv2d/Linear layer matched include/exclude patterns")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.layers.values():
                layer.scores.copy_(_SCORE_INITS[score_init](layer.weight.detach(), generator))
                object.__setattr__(layer, "_masking", self)
        self.model = model
        # torch annotates Module.__setattr__'s value as Tensor | Module; any object is stored.
        model._s2ap_masking = self  # type: ignore[assignment]
        self.host = host if host is not None else HydraHost()
        self._kept: dict[str, int] = {}  # the kept count each live layer's mask was made with
        self._counts_version: Hashable = None  # the host's counts_version() at the last refresh
        self.host.attach(self)
        self.refresh()

    # --- masks --------------------------------------------------------------------------------
    def _counts_stale(self) -> bool:
        """Whether the host's kept counts may have changed since the last refresh."""
        return self.scope == "layer" and self.host.counts_version() != self._counts_version

    def refresh(self) -> None:
        """Recompute the masks whose scores or kept counts changed (all of them in global scope)."""
        layers = self.layers
        stale = [n for n, layer in layers.items() if layer._stale()]
        if not stale:
            return
        live = {n: layer for n, layer in layers.items() if not layer.mask_frozen}
        frozen = [layers[n] for n in stale if layers[n].mask_frozen]
        for layer in frozen:  # a frozen mask only needs its float copy on the right device
            layer._set_mask(layer.mask.to(layer.weight.device))
        if not live or not any(n in live for n in stale):
            return
        with torch.no_grad():
            if self.scope == "global":
                mags = [layer.scores.detach().abs().reshape(-1) for layer in live.values()]
                flat = torch.cat([m.to(mags[0].device) for m in mags])
                keep = _top_k_mask(flat, kept_count(flat.numel(), self.sparsity))
                for layer, part in zip(live.values(), keep.split([m.numel() for m in mags])):
                    layer._set_mask(part.view_as(layer.weight).to(layer.weight.device))
            else:
                version = self.host.counts_version()
                counts = self.host.kept_counts(self)
                for name, layer in live.items():
                    # A layer stale only because the counts may have moved keeps its mask when
                    # its own count did not: same scores, same k, same top-k.
                    scores_moved = layer._mask_key != layer._scores_key()
                    if scores_moved or counts[name] != self._kept.get(name):
                        layer._set_mask(_top_k_mask(layer.scores.detach().abs(), counts[name]))
                        self._kept[name] = counts[name]
                self._counts_version = version

    def invalidate(self, names: Iterable[str] | None = None) -> None:
        """Force a recomputation at the next forward (after writes through ``.data``).

        ``names``: only these layers (default all); the others keep their cached masks.
        """
        layers = self.layers.values() if names is None else [self.layers[n] for n in names]
        for layer in layers:
            layer._mask_key = None
            if layer.mask_frozen:
                layer._mask_float = None

    def masks(self) -> dict[str, Tensor]:
        """The current masks as ``{layer name: bool tensor}`` (detached copies, on the CPU)."""
        self.refresh()
        return {
            name: layer.mask.detach().cpu().clone(memory_format=torch.contiguous_format)
            for name, layer in self.layers.items()
        }

    def load_masks(self, masks: dict[str, Tensor]) -> None:
        """Use the given masks and freeze them (the scores no longer select anything)."""
        missing = sorted(set(self.layers) - set(masks))
        extra = sorted(set(masks) - set(self.layers))
        if missing or extra:
            raise ValueError(
                f"mask layers do not match the model: missing {missing}, extra {extra}"
            )
        for name, layer in self.layers.items():
            m = masks[name]
            if tuple(m.shape) != tuple(layer.weight.shape):
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(m.shape)}, weight is "
                    f"{tuple(layer.weight.shape)}"
                )
            layer.mask_frozen = True
            layer._set_mask(m.to(device=layer.weight.device, dtype=torch.bool))

    def scores(self) -> list[nn.Parameter]:
        """Score parameters in layer order (what the S2AP perturbation acts on)."""
        return [layer.scores for layer in self.layers.values()]

    # --- sparsity -----------------------------------------------------------------------------
    def sparsity_report(self) -> tuple[float, dict[str, float]]:
        """Measured (global, per-layer) sparsity of the current masks."""
        self.refresh()
        per_layer: dict[str, float] = {}
        kept = total = 0
        for name, layer in self.layers.items():
            n = layer.mask.numel()
            k = int(layer.mask.sum())
            per_layer[name] = 1.0 - k / n
            kept += k
            total += n
        return 1.0 - kept / total, per_layer

    # --- stages -------------------------------------------------------------------------------
    def set_stage(self, stage: Stage, *, bn_trainable: bool = True) -> None:
        """Switch which parameters train.

        - ``prune``: scores train, weights and biases frozen; BatchNorm affine trains when
          ``bn_trainable`` (HYDRA's default).
        - ``finetune``: the current mask is frozen, scores frozen, every weight trains (pruned
          weights get zero gradient through the mask).
        - ``dense``: scores frozen, mask unfrozen, everything else trains (plain training of the
          masked model is rarely wanted; provided for completeness).
        """
        if stage not in ("prune", "finetune", "dense"):
            raise ValueError(f"stage must be 'prune', 'finetune' or 'dense', got {stage!r}")
        for module in self.model.modules():
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            for pname, p in module.named_parameters(recurse=False):
                if pname == "scores":
                    p.requires_grad_(stage == "prune")
                elif stage == "prune":
                    p.requires_grad_(is_bn and bn_trainable)
                else:
                    p.requires_grad_(True)
        if stage == "finetune":
            self.refresh()
            for layer in self.layers.values():
                layer.mask_frozen = True
        elif stage == "prune":
            for layer in self.layers.values():
                layer.mask_frozen = False
            self.invalidate()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # --- export -------------------------------------------------------------------------------
    def to_dense(self) -> nn.Module:
        """A copy of the model with plain ``Conv2d``/``Linear`` layers and pruned weights zeroed.

        The result loads and runs without s2ap: its state dict has the keys of the unmasked
        architecture.
        """
        self.refresh()
        dense = copy.deepcopy(self.model)
        for module in dense.modules():
            if isinstance(module, MaskedLayer):
                with torch.no_grad():
                    module.weight.mul_(module.mask.to(module.weight.dtype))
                for attr in ("scores", "mask"):
                    delattr(module, attr)
                for attr in ("mask_frozen", "_mask_key", "_mask_float", "_effective"):
                    module.__dict__.pop(attr, None)
                module.__dict__.pop("_effective_key", None)
                module.__dict__.pop("_masking", None)
                plain: nn.Module = module  # the class swap leaves MaskedLayer
                plain.__class__ = next(k for k, v in _MASKED_TYPES.items() if v is type(module))
        dense.__dict__.pop("_s2ap_masking", None)
        for p in dense.parameters():
            p.requires_grad_(True)
        return dense


def get_masking(model: nn.Module) -> ScoreMasking | None:
    """The :class:`ScoreMasking` attached to ``model``, if any."""
    return getattr(model, "_s2ap_masking", None)


def apply_masks_to_state_dict(
    state_dict: dict[str, Tensor], masks: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Zero the pruned entries of ``<layer>.weight`` in a dense state dict (returns a copy).

    Raises a ``ValueError`` naming the layer when a mask has no matching weight or its shape
    differs, so a mask from another architecture is never applied silently.
    """
    out = dict(state_dict)
    for name, mask in masks.items():
        key = f"{name}.weight"
        if key not in out:
            raise ValueError(f"mask layer {name!r} has no weight {key!r} in the checkpoint")
        weight = out[key]
        if tuple(weight.shape) != tuple(mask.shape):
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)} but {key!r} is {tuple(weight.shape)}"
            )
        out[key] = weight * mask.to(device=weight.device, dtype=weight.dtype)
    return out
