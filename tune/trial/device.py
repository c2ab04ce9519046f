"""The device of a trial: CUDA iff Ray assigned it GPUs, and a loud failure when torch cannot
use them (a trial silently training on the CPU would distort every timing of the study)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["TrialDeviceError", "trial_device"]

_R = TypeVar("_R")
_log = logging.getLogger(__name__)


class TrialDeviceError(RuntimeError):
    """A trial was given a GPU by Ray but cannot use it."""


def _no_cuda_message(gpu_request: float, info: dict[str, str]) -> str:
    return (
        f"this trial asked for {gpu_request:g} GPU and Ray assigned GPU id(s) "
        f"[{info['gpu_ids']}] (CUDA_VISIBLE_DEVICES={info['cuda_visible_devices']!r}) on "
        f"{socket.gethostname()}, but torch {torch.__version__} sees no CUDA device "
        f"(torch.version.cuda={torch.version.cuda}). Fix the node's NVIDIA driver/CUDA set-up "
        "or the torch build; to train on the CPU anyway set study.allow_cpu_fallback: true, or "
        "ask for no GPU with study.resources.gpu: 0"
    )


def trial_device(
    gpu_request: float, allow_cpu_fallback: bool, *, in_driver: bool = False
) -> tuple[torch.device, dict[str, str]]:
    """The device of a trial: CUDA iff Ray assigned it GPUs; fail loudly if torch cannot see them.

    Ray sets ``CUDA_VISIBLE_DEVICES`` of the trial's process to its GPUs, so ``cuda:0`` is the
    first assigned GPU. A fractional request caps this process's CUDA memory to its share.
    ``in_driver``: work a local runtime's driver does itself (the dense model, the test
    evaluation), which holds no Ray assignment and must not ask Ray (it may be shutting down
    beside it): the request alone decides. Returns the device and a description (``device``,
    ``device_name``, ``gpu_ids``, ``cuda_visible_devices``) for the trial's results and tags.
    """
    import ray

    # ray.get_gpu_ids() would start a Ray runtime when called outside one (a local test).
    in_worker = not in_driver and ray.is_initialized()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()] if in_worker else []
    info = {
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    if gpu_request <= 0 and not gpu_ids:
        return torch.device("cpu"), {**info, "device": "cpu", "device_name": "cpu"}
    if not torch.cuda.is_available():
        message = _no_cuda_message(gpu_request, info)
        if not allow_cpu_fallback:
            raise TrialDeviceError(message)
        _log.warning("%s -- falling back to the CPU (study.allow_cpu_fallback)", message)
        return torch.device("cpu"), {**info, "device": "cpu", "device_name": "cpu (GPU fallback)"}
    device = torch.device("cuda", 0)
    if 0 < gpu_request < 1:
        torch.cuda.set_per_process_memory_fraction(float(gpu_request), device)
    info["device"] = str(device)
    info["device_name"] = torch.cuda.get_device_name(device)
    return device, info


def run_in_driver(cpus: float, work: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``work(*args, **kwargs, in_driver=True)`` in this process with ``cpus`` torch threads
    (then restored): what a local runtime's driver does itself (the dense model, the test
    evaluation), with the CPUs its idle runtime holds (Ray sets a worker's own), asking Ray
    nothing (:func:`trial_device`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus)))
    try:
        return work(*args, **kwargs, in_driver=True)
    finally:
        torch.set_num_threads(threads)
