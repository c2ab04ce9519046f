"""The MLflow model of a study's best pruned network, as code (MLflow's models-from-code).

:mod:`tracking.registry` logs this file as the model's code with three artifacts; loading the
model runs it, so nothing is pickled and the artifacts are plain data:

* ``weights``: the selected model's weights in the plain architecture, pruned entries zero
  (the trial's ``weights/final.safetensors``);
* ``mask``: the trial's ``masks/final.s2mask`` (bit-packed, its payload sha256 checked on load);
* ``config``: JSON with the architecture name, the input spec (classes, channels, image size,
  normalisation) and the trial's run config.

The architecture is rebuilt through s2ap's model registry (:func:`s2ap.models.create_model`),
so the environment that loads the model needs s2ap installed (``--env-manager local`` for
``mlflow models serve``). The mask is applied to the weights again on load: a weights file that
does not fit the mask is refused instead of served.

``predict(images)``: ``images`` is a float32 numpy array of shape ``(N, C, H, W)`` with pixels
in ``[0, 1]`` (the model normalises internally, as in training and attacks). MLflow checks it
against the model's signature, which is strict about the dtype: pass
``np.asarray(images, dtype=np.float32)``; over HTTP (``mlflow models serve``) nested lists in
``{"inputs": ...}`` are converted by the server. It returns
``{"class": int64 (N,), "logits": float32 (N, classes)}`` (served as
``{"predictions": {"class": [...], "logits": [[...]]}}``). ``model_config``
``{"device": "cuda"}`` at load time runs it on a GPU (default: CPU), ``{"batch_size": n}``
sets the forward batch (default 256).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

__all__ = ["PrunedModel", "check_images"]

_BATCH = 256


def check_images(images: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """``images`` as a float32 ``(N, C, H, W)`` array in ``[0, 1]``; a ``ValueError`` that
    says what was expected otherwise."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == len(shape):  # one image
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(
            f"images of shape {tuple(x.shape)}: this model takes (N, {', '.join(map(str, shape))})"
            " float32 pixels in [0, 1]"
        )
    if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(
            "pixels must be finite and in [0, 1] (the model normalises internally); got "
            f"values in [{float(np.nanmin(x)):.3g}, {float(np.nanmax(x)):.3g}]"
        )
    return x


class PrunedModel(PythonModel):
    """A pruned network rebuilt from its weights, mask and config (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import torch

        from s2ap.architectures import create_model
        from s2ap.masking import apply_masks_to_state_dict
        from tracking.artifacts import load_masks, load_state_dict

        config = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        spec = config["input"]
        masks, header = load_masks(context.artifacts["mask"])  # checks the payload sha256
        if header["payload_sha256"] != config["mask_sha256"]:
            raise ValueError(
                f"the model's mask has payload sha256 {header['payload_sha256']}, its config "
                f"records {config['mask_sha256']}: the artifacts do not belong together"
            )
        state = apply_masks_to_state_dict(load_state_dict(context.artifacts["weights"]), masks)
        model = create_model(
            config["architecture"],
            num_classes=int(spec["num_classes"]),
            in_channels=int(spec["in_channels"]),
            image_size=int(spec["image_size"]),
            mean=spec["mean"],
            std=spec["std"],
        )
        model.load_state_dict(state)
        options = dict(getattr(context, "model_config", None) or {})
        self.device = torch.device(str(options.get("device", "cpu")))
        self.batch_size = int(options.get("batch_size", _BATCH))
        self.model = model.to(self.device).eval()
        self.shape = (int(spec["in_channels"]), int(spec["image_size"]), int(spec["image_size"]))
        self.classes = int(spec["num_classes"])

    # ``np.ndarray``: a hint MLflow accepts without inferring a schema from it (the model's
    # signature, set by tracking.registry, says what it takes and returns).
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """``{"class": (N,) int64, "logits": (N, classes) float32}`` of ``(N, C, H, W)``
        float32 images in [0, 1] (see the module docstring)."""
        import torch

        x = check_images(model_input, self.shape)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                batch = torch.from_numpy(x[start : start + self.batch_size]).to(self.device)
                chunks.append(self.model(batch).float().cpu().numpy())
        logits = np.concatenate(chunks) if chunks else np.zeros((0, self.classes), np.float32)
        return {"class": logits.argmax(axis=1).astype(np.int64), "logits": logits}


mlflow.models.set_model(PrunedModel())
