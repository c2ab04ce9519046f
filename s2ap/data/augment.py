"""Augmentation for adversarial training: random crop and horizontal flip, on the device.

Applied to a whole float batch at once, vectorised over the batch, after the batch reaches the
training device: no per-example Python and no worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Augment", "crop_rows", "flip_rows"]


def crop_rows(x: Tensor, padding: int, offsets: Tensor, padding_mode: str = "constant") -> Tensor:
    """Crop every image of ``x`` ([B,C,H,W]) after padding by ``padding`` pixels on each side.

    ``offsets`` ([B, 2], integers in ``[0, 2 * padding]``) give each image's top-left corner in the
    padded image; an offset of ``(padding, padding)`` returns the image unchanged. The output keeps
    the input's shape. ``padding_mode`` is ``"constant"`` (zeros) or ``"reflect"``.
    """
    b, _, h, w = x.shape
    if padding == 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding), mode=padding_mode)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # Advanced indices around a slice put the indexed dims first: [B, H, W, C].
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def flip_rows(x: Tensor, mask: Tensor) -> Tensor:
    """Flip horizontally the images of ``x`` ([B,C,H,W]) whose ``mask`` ([B] bool) entry is set."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


@dataclass(frozen=True)
class Augment:
    """Standard light augmentation for adversarial training: random crop and horizontal flip.

    Applied on the device to a whole float batch at once; random numbers come from the
    ``generator`` handed to :meth:`apply` (on its own device, so a CPU generator gives the same
    augmentation whether the data lives on the CPU or a GPU).
    """

    crop_padding: int = 0
    """Pad by this many pixels on each side, then crop back at a random offset per example."""
    flip: bool = False
    """Flip each example horizontally with probability 1/2."""
    padding_mode: str = "constant"
    """``"constant"`` (zero padding, as torchvision's RandomCrop) or ``"reflect"``."""

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"augment.crop_padding must be >= 0, got {self.crop_padding}")
        if self.padding_mode not in ("constant", "reflect"):
            raise ValueError(
                f"augment.padding_mode must be 'constant' or 'reflect', got {self.padding_mode!r}"
            )

    @property
    def enabled(self) -> bool:
        """Whether applying it changes anything."""
        return self.crop_padding > 0 or self.flip

    def apply(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return an augmented copy of the float batch ``x`` ([B,C,H,W]) on ``x``'s device."""
        if not self.enabled or x.shape[0] == 0:
            return x
        b = x.shape[0]
        rng_device = generator.device if generator is not None else x.device
        if self.crop_padding > 0:
            offsets = torch.randint(
                0, 2 * self.crop_padding + 1, (b, 2), generator=generator, device=rng_device
            )
            x = crop_rows(
                x, self.crop_padding, offsets.to(x.device, non_blocking=True), self.padding_mode
            )
        if self.flip:
            mask = torch.rand(b, generator=generator, device=rng_device) < 0.5
            x = flip_rows(x, mask.to(x.device, non_blocking=True))
        return x
