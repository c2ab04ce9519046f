"""Artifact file formats: pruning masks (``.s2mask``), state dicts, hashes.

Why a custom mask format: a mask is one bit per prunable weight. ``torch.save`` of bool tensors
spends a byte per weight and loading it means unpickling, which runs code from whoever wrote the
file. A ``.s2mask`` file is a small JSON header followed by the bit-packed masks, so a mask pulled
from a shared MLflow server can be inspected and loaded without trusting its author, and a
ResNet-18 mask is ~1.4 MB instead of ~11 MB.

Layout (all integers little-endian)::

    8 bytes   magic  b"S2APMASK"
    4 bytes   uint32 format version (1)
    8 bytes   uint64 header length H
    H bytes   UTF-8 JSON header
    payload   per layer, in header order: np.packbits(mask.flatten()) (big bit order, zero padded)

The header records every layer's name, shape, byte offset/length in the payload, kept count and
sparsity; the global sparsity; the payload's sha256; a sha256 of the header itself (so an edited
header is detected); and whatever metadata the caller passes (architecture, dataset, method,
config_hash, dense_checkpoint_hash, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s2ap.config import canonical_json

if TYPE_CHECKING:
    import torch

# torch is imported where a tensor is made or read, not here: reading a mask file's bits and
# header (``masks pull``, ``status``, the report) needs numpy only, and importing torch costs
# seconds that a read command would otherwise spend before doing anything.

MAGIC = b"S2APMASK"
FORMAT_VERSION = 1
MASK_SUFFIX = ".s2mask"
_PREFIX = struct.Struct("<8sIQ")  # magic, version, header length
_MAX_HEADER_BYTES = 64 * 1024 * 1024

#: Header keys written by :func:`save_masks`; a caller's metadata may not use them.
RESERVED_HEADER_KEYS = frozenset(
    {
        "format",
        "format_version",
        "bit_order",
        "layers",
        "numel",
        "kept",
        "global_sparsity",
        "payload_nbytes",
        "payload_sha256",
        "header_sha256",
    }
)

Masks = dict[str, "torch.Tensor"]


class MaskFileError(ValueError):
    """A ``.s2mask`` file is damaged, truncated, tampered with or not a mask file."""


# --------------------------------------------------------------------------------------------
# hashing helpers


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Return the sha256 hex digest of a file's bytes (streamed, so large checkpoints are fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield a binary file handle whose content replaces ``path`` only once fully written.

    The temporary file lives in the destination folder, so ``os.replace`` is atomic: a crash leaves
    either the old file or the new one, never half a file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name opened O_EXCL as mkstemp does, but with mode 0o666 so that the umask applies
    # as for open(): mkstemp's 0o600 would hide a mask or a results page from other users.
    tmp = dest.with_name(f".{dest.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# masks


def _header_digest(header: Mapping[str, Any]) -> str:
    body = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def _mask_to_numpy(name: str, mask: Any) -> np.ndarray:
    import torch

    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"save_masks: mask for layer {name!r} is a {type(mask).__name__}; "
            "expected a torch.Tensor of dtype torch.bool"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"save_masks: mask for layer {name!r} has dtype {mask.dtype}; expected torch.bool "
            "(convert with mask.bool() or mask != 0)"
        )
    return mask.detach().to("cpu").contiguous().numpy().reshape(-1)


def _pack_layers(
    masks: Mapping[str, torch.Tensor],
) -> tuple[list[dict[str, Any]], list[bytes], str]:
    """Bit-pack each layer's mask: (header entries, packed bytes per layer, payload sha256)."""
    layers: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    digest = hashlib.sha256()
    for name, mask in masks.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save_masks: layer names must be non-empty strings, got {name!r}")
        flat = _mask_to_numpy(name, mask)
        packed = np.packbits(flat).tobytes()
        numel = int(flat.size)
        kept = int(np.count_nonzero(flat))
        layers.append(
            {
                "name": name,
                "shape": [int(s) for s in mask.shape],
                "offset": offset,
                "nbytes": len(packed),
                "numel": numel,
                "kept": kept,
                "sparsity": (1.0 - kept / numel) if numel else 0.0,
            }
        )
        chunks.append(packed)
        digest.update(packed)
        offset += len(packed)
    return layers, chunks, digest.hexdigest()


def save_masks(
    path: str | os.PathLike[str],
    masks: Mapping[str, torch.Tensor],
    header: Mapping[str, Any] | None = None,
) -> str:
    """Write ``masks`` (layer name -> bool tensor) to a ``.s2mask`` file; return the payload sha256.

    Layers are stored in the mapping's order. ``header`` is caller metadata merged into the JSON
    header (it must be JSON-serialisable and must not use :data:`RESERVED_HEADER_KEYS`). The write
    is atomic.
    """
    meta = dict(header or {})
    clash = sorted(RESERVED_HEADER_KEYS & meta.keys())
    if clash:
        raise ValueError(
            f"save_masks: header keys {clash} are written by the mask format itself; "
            "rename them in the metadata you pass"
        )
    if not masks:
        raise ValueError("save_masks: no masks given; pass a dict of layer name -> bool tensor")

    layers, chunks, payload_sha = _pack_layers(masks)
    total_numel = sum(layer["numel"] for layer in layers)
    total_kept = sum(layer["kept"] for layer in layers)
    full: dict[str, Any] = {
        "format": "s2ap-mask",
        "format_version": FORMAT_VERSION,
        "bit_order": "big",
        "layers": layers,
        "numel": total_numel,
        "kept": total_kept,
        "global_sparsity": (1.0 - total_kept / total_numel) if total_numel else 0.0,
        "payload_nbytes": sum(len(c) for c in chunks),
        "payload_sha256": payload_sha,
    }
    full.update(meta)
    try:
        full["header_sha256"] = _header_digest(full)
        header_bytes = canonical_json(full).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_masks: header metadata is not JSON-serialisable: {exc}") from exc

    with atomic_writer(path) as fh:
        fh.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)))
        fh.write(header_bytes)
        for chunk in chunks:
            fh.write(chunk)
    return payload_sha


def _fail(path: str | os.PathLike[str], problem: str) -> MaskFileError:
    return MaskFileError(f"mask file {os.fspath(path)!r}: {problem}")


def _read_header(fh: Any, path: str | os.PathLike[str], file_size: int) -> tuple[dict, int]:
    """Read and validate the prefix and header; return (header, payload start offset)."""
    prefix = fh.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
        if len(prefix) >= 8 and prefix[:8] != MAGIC:
            raise _fail(path, "not an s2ap mask file (wrong magic bytes)")
        raise _fail(path, f"truncated: {file_size} bytes is shorter than the file prefix")
    _, version, header_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {version} is not supported by this s2ap (reads {FORMAT_VERSION}); "
            "upgrade s2ap to read it",
        )
    if header_len > _MAX_HEADER_BYTES or _PREFIX.size + header_len > file_size:
        raise _fail(path, f"truncated or corrupt: header length {header_len} exceeds the file")
    raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    try:
        digest = _header_digest(header)
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"header holds values that are not plain JSON ({exc})") from exc
    if header.get("header_sha256") != digest:
        raise _fail(path, "header was modified after writing (header_sha256 does not match)")
    _validate_layout(header, path)
    payload_start = _PREFIX.size + header_len
    expected = payload_start + header["payload_nbytes"]
    if file_size < expected:
        raise _fail(path, f"truncated: {file_size} bytes, header promises {expected}")
    if file_size > expected:
        raise _fail(path, f"{file_size - expected} unexpected trailing bytes after the payload")
    return header, payload_start


def _validate_layout(header: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    layers = header.get("layers")
    if header.get("format") != "s2ap-mask" or not isinstance(layers, list):
        raise _fail(path, "header lacks the s2ap-mask format fields")
    offset = 0
    names: set[str] = set()
    for i, layer in enumerate(layers):
        try:
            name, shape = layer["name"], [int(s) for s in layer["shape"]]
            numel, nbytes, lay_off = int(layer["numel"]), int(layer["nbytes"]), int(layer["offset"])
            kept = int(layer["kept"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(path, f"layer entry {i} is malformed ({exc!r})") from exc
        if name in names:
            raise _fail(path, f"layer {name!r} appears twice")
        names.add(name)
        if any(s < 0 for s in shape) or math.prod(shape) != numel:
            raise _fail(path, f"layer {name!r}: shape {shape} does not hold {numel} elements")
        if nbytes != (numel + 7) // 8 or lay_off != offset:
            raise _fail(path, f"layer {name!r}: offset/nbytes inconsistent with its shape")
        if not 0 <= kept <= numel:
            raise _fail(path, f"layer {name!r}: kept={kept} outside [0, {numel}]")
        offset += nbytes
    if header.get("payload_nbytes") != offset:
        raise _fail(path, "payload_nbytes does not equal the sum of the layers' sizes")


def read_mask_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return a mask file's header without reading the payload (cheap inspection).

    Checks the magic, version, header integrity and file length; the payload hash is only
    checked by :func:`load_masks`.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header, _ = _read_header(fh, path, size)
    return header


def read_mask_bits(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify a ``.s2mask`` file: return (layer name -> bool array, header).

    Every check of :func:`load_masks` (payload sha256, each layer's kept count), in numpy only:
    what a command that verifies or inspects a mask without building a model needs.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header, _ = _read_header(fh, path, size)
        payload = fh.read(header["payload_nbytes"])
    if len(payload) != header["payload_nbytes"]:
        raise _fail(path, "truncated payload")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise _fail(path, "payload sha256 mismatch: the mask bits were modified or corrupted")
    buf = np.frombuffer(payload, dtype=np.uint8)
    bits: dict[str, np.ndarray] = {}
    for layer in header["layers"]:
        start, nbytes, numel = layer["offset"], layer["nbytes"], layer["numel"]
        layer_bits = np.unpackbits(buf[start : start + nbytes], count=numel).astype(bool)
        kept = int(np.count_nonzero(layer_bits))
        if kept != layer["kept"]:
            raise _fail(
                path, f"layer {layer['name']!r}: {kept} kept bits, header says {layer['kept']}"
            )
        bits[layer["name"]] = layer_bits.reshape(layer["shape"])
    return bits, header


def load_masks(path: str | os.PathLike[str]) -> tuple[Masks, dict[str, Any]]:
    """Load a ``.s2mask`` file: return (layer name -> bool tensor, header).

    Never unpickles. Raises :class:`MaskFileError` if the file is truncated, not a mask file, its
    header was edited, or its payload does not match the recorded sha256.
    """
    import torch

    bits, header = read_mask_bits(path)
    return {name: torch.from_numpy(layer) for name, layer in bits.items()}, header


# --------------------------------------------------------------------------------------------
# state dicts

# safetensors is a dependency, but a state dict written where it is missing falls back to
# torch.save (read back with weights_only=True); find_spec says which without importing torch.
_HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
STATE_DICT_SUFFIX = ".safetensors" if _HAS_SAFETENSORS else ".pt"
_ZIP_MAGIC = b"PK\x03\x04"


def save_state_dict(path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor]) -> str:
    """Atomically write a state dict (safetensors if installed, else ``torch.save``); return sha256.

    Only tensors are stored. Use :data:`STATE_DICT_SUFFIX` for the file name's extension.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"save_state_dict: entry {key!r} is a {type(value).__name__}, not a tensor; "
                "store non-tensor state in the run's params or tags instead"
            )
        # clone: safetensors refuses shared storage, and a copy detaches from autograd/devices.
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    with atomic_writer(path) as fh:
        if _HAS_SAFETENSORS:
            import safetensors.torch

            fh.write(safetensors.torch.save(tensors))
        else:
            torch.save(tensors, fh)
    return file_sha256(path)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict written by :func:`save_state_dict` without executing pickled code.

    ``torch.save`` files (zip) are read with ``weights_only=True``; others as safetensors.
    """
    import torch

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == _ZIP_MAGIC:
        return dict(torch.load(path, map_location="cpu", weights_only=True))
    if not _HAS_SAFETENSORS:
        raise ValueError(
            f"state dict {os.fspath(path)!r} is not a torch.save archive and safetensors is not "
            "installed; pip install safetensors to read it"
        )
    import safetensors.torch

    return dict(safetensors.torch.load_file(os.fspath(path), device="cpu"))
