"""How the training passes run on their device: bf16 autocast, channels-last, torch.compile.

None of this changes the method, only its speed and (bf16) its rounding:

- ``amp: bf16`` runs the attack and the update under autocast: convolutions and matrix products
  in bfloat16; losses, norms, BatchNorm statistics, the scores, the S2AP perturbation and the
  optimizer in float32. bfloat16 has float32's range, so no loss scaling is needed (float16
  would need a GradScaler and is not offered). Validation and test evaluation stay in float32,
  so a reported robust accuracy is never an artefact of reduced precision.
- ``channels_last`` stores 4-D weights (and the scores and masks made from them) NHWC, the
  layout cuDNN's tensor-core kernels and oneDNN prefer; a convolution with NHWC weights returns
  NHWC activations, so everything after the first layer runs NHWC. The input batches stay
  NCHW: converting them gains nothing (three channels) and would change which random number
  lands on which pixel in PGD's random start. Masks are selected, compared and exported in the
  logical (NCHW) order either way.
- ``compile`` compiles the model's forward in place (``nn.Module.compile``: the same module, the
  same state-dict keys). The masked layers' weight selection (mask cache, version counters)
  stays eager: dynamo breaks the graph there and compiles what lies between.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from s2ap.config import ComputeConfig

__all__ = ["AMP_DTYPES", "Compute"]

#: ``compute.amp`` -> the autocast dtype (``None``: no autocast).
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Compute:
    """The ``compute:`` section as the stages use it.

    Args:
        amp: ``"none"`` or ``"bf16"`` (autocast of the training passes).
        channels_last: NHWC weights (and so activations).
        compile: compile the model's forward.
        compile_backend: the ``torch.compile`` backend; ``inductor`` generates kernels, and
            ``aot_eager`` traces the same graphs without code generation (fast to test).
    """

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")

    @classmethod
    def from_config(cls, cfg: ComputeConfig) -> Compute:
        return cls(amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile)

    def check_device(self, device: torch.device) -> None:
        """Refuse settings the device cannot run, naming the field to change."""
        if self.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(
                f"compute.amp is bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 "
                "support; set compute.amp: none"
            )

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to the ``amp`` dtype on ``device``; a no-op context for ``amp: none``."""
        dtype = AMP_DTYPES[self.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` (in place) in the configured layout and compile it; returns it.

        Call it once, after the model is on its device and before the masks are attached:
        scores and masks are created like the weights, so they inherit the layout.
        """
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            from s2ap.masking import select_weights_eagerly

            select_weights_eagerly()
            model.compile(backend=self.compile_backend)
        return model
