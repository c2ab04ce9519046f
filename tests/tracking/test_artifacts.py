"""The .s2mask format: round trips, size, and every way a file can be damaged."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from s2ap.config import config_hash
from tests.tracking.conftest import fake_masks
from tracking.artifacts import (
    MAGIC,
    MaskFileError,
    file_sha256,
    load_masks,
    load_state_dict,
    read_mask_header,
    save_masks,
    save_state_dict,
)

ODD_SHAPES = {
    "conv": (3, 3, 3, 5),  # 135 bits: not a multiple of 8
    "vec": (7,),
    "one": (1,),
    "empty": (0, 4),
    "fc": (10, 33),
    "all_on": (9,),
    "all_off": (2, 5),
}

# CIFAR ResNet-18 (3x3 stem, 4 stages of 2 BasicBlocks, 1x1 downsample convs) + fc.
RESNET18_CIFAR = {"conv1": (64, 3, 3, 3)}
_in = 64
for _stage, _out in enumerate((64, 128, 256, 512), start=1):
    for _block in range(2):
        _cin = _in if _block == 0 else _out
        RESNET18_CIFAR[f"layer{_stage}.{_block}.conv1"] = (_out, _cin, 3, 3)
        RESNET18_CIFAR[f"layer{_stage}.{_block}.conv2"] = (_out, _out, 3, 3)
        if _block == 0 and _cin != _out:
            RESNET18_CIFAR[f"layer{_stage}.{_block}.shortcut.0"] = (_out, _cin, 1, 1)
    _in = _out
RESNET18_CIFAR["fc"] = (10, 512)


def _odd_masks() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(s, generator=gen) > 0.5 for n, s in ODD_SHAPES.items()}
    masks["all_on"] = torch.ones(ODD_SHAPES["all_on"], dtype=torch.bool)
    masks["all_off"] = torch.zeros(ODD_SHAPES["all_off"], dtype=torch.bool)
    return masks


def _split(path: Path) -> tuple[bytes, dict, bytes]:
    data = path.read_bytes()
    _, _, hlen = struct.unpack("<8sIQ", data[:20])
    return data[:20], json.loads(data[20 : 20 + hlen]), data[20 + hlen :]


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any unpickling fail, to prove mask loading never uses it."""

    def refuse(*args, **kwargs):
        raise AssertionError("mask loading must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_round_trip_odd_shapes(tmp_path: Path, no_pickle: None) -> None:
    masks = _odd_masks()
    path = tmp_path / "m.s2mask"
    sha = save_masks(path, masks, {"architecture": "toy", "dataset": "digits", "config_hash": "ab"})
    loaded, header = load_masks(path)
    assert list(loaded) == list(masks)  # order kept
    for name, mask in masks.items():
        assert loaded[name].dtype == torch.bool
        assert loaded[name].shape == mask.shape
        assert torch.equal(loaded[name], mask)
    assert header["payload_sha256"] == sha
    assert header["architecture"] == "toy" and header["dataset"] == "digits"
    numel = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert header["numel"] == numel and header["kept"] == kept
    assert header["global_sparsity"] == pytest.approx(1 - kept / numel)
    by_name = {layer["name"]: layer for layer in header["layers"]}
    assert by_name["all_off"]["sparsity"] == 1.0 and by_name["all_on"]["sparsity"] == 0.0
    assert by_name["empty"]["nbytes"] == 0 and by_name["empty"]["sparsity"] == 0.0
    assert read_mask_header(path) == header


def test_size_is_one_bit_per_weight_plus_header(tmp_path: Path) -> None:
    masks = fake_masks(0)
    path = tmp_path / "m.s2mask"
    save_masks(path, masks, {})
    prefix, header, payload = _split(path)
    expected_payload = sum(math.ceil(m.numel() / 8) for m in masks.values())
    assert len(payload) == expected_payload == header["payload_nbytes"]
    assert prefix[:8] == MAGIC
    header_len = struct.unpack("<Q", prefix[12:20])[0]
    assert path.stat().st_size == 20 + header_len + expected_payload


def test_resnet18_sized_mask(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(s, generator=gen) > 0.9 for n, s in RESNET18_CIFAR.items()}
    numel = sum(m.numel() for m in masks.values())
    assert 11_150_000 < numel < 11_200_000
    path = tmp_path / "resnet18.s2mask"
    save_masks(path, masks, {"architecture": "resnet18", "dataset": "cifar10"})
    size = path.stat().st_size
    assert size < numel / 8 + 16_384  # one bit per weight + a few KB of header
    loaded, header = load_masks(path)
    assert header["global_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_tampered_payload_byte(tmp_path: Path) -> None:
    path = tmp_path / "m.s2mask"
    save_masks(path, fake_masks(0), {})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(MaskFileError, match="sha256 mismatch") as err:
        load_masks(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [5, 30, -1])
def test_truncated(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "m.s2mask"
    save_masks(path, fake_masks(0), {})
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(MaskFileError, match="truncated"):
        load_masks(path)
    with pytest.raises(MaskFileError):
        read_mask_header(path)


def test_trailing_bytes_and_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "m.s2mask"
    save_masks(path, fake_masks(0), {})
    data = path.read_bytes()
    path.write_bytes(data + b"\0")
    with pytest.raises(MaskFileError, match="trailing"):
        load_masks(path)
    path.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(MaskFileError, match="magic"):
        load_masks(path)
    torch.save({"a": torch.ones(2)}, path)  # a pickle-based file is refused, not loaded
    with pytest.raises(MaskFileError, match="magic"):
        load_masks(path)


def test_edited_header_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "m.s2mask"
    save_masks(path, fake_masks(0), {"architecture": "resnet18"})
    data = path.read_bytes()
    edited = data.replace(b'"resnet18"', b'"resnet50"')
    assert edited != data and len(edited) == len(data)
    path.write_bytes(edited)
    with pytest.raises(MaskFileError, match="header was modified"):
        read_mask_header(path)


def test_inconsistent_header_with_recomputed_digest(tmp_path: Path) -> None:
    """Someone rewrites a layer's shape and fixes the header hash: the layout check catches it."""
    from s2ap.config import canonical_json
    from tracking.artifacts import _header_digest

    path = tmp_path / "m.s2mask"
    save_masks(path, fake_masks(0), {})
    _, header, payload = _split(path)
    header["layers"][0]["shape"] = [7, 7]
    header["header_sha256"] = _header_digest(header)
    raw = canonical_json(header).encode()
    path.write_bytes(struct.pack("<8sIQ", MAGIC, 1, len(raw)) + raw + payload)
    with pytest.raises(MaskFileError, match="shape"):
        load_masks(path)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"torch\.bool"):
        save_masks(tmp_path / "a.s2mask", {"l": torch.ones(3)}, {})
    with pytest.raises(ValueError, match="written by the mask format"):
        save_masks(tmp_path / "a.s2mask", {"l": torch.ones(3, dtype=torch.bool)}, {"layers": 1})
    with pytest.raises(ValueError, match="no masks"):
        save_masks(tmp_path / "a.s2mask", {}, {})


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.s2mask"
    save_masks(path, fake_masks(0), {})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_masks(path, fake_masks(1), {"bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.s2mask"]  # no temp files left


def test_state_dict_round_trip(tmp_path: Path) -> None:
    sd = {"a.weight": torch.randn(3, 4), "a.bias": torch.arange(3), "m": torch.ones(2) > 0}
    path = tmp_path / "w.bin"
    sha = save_state_dict(path, sd)
    assert sha == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    with pytest.raises(TypeError, match="not a tensor"):
        save_state_dict(path, {"step": 3})


def test_config_hash() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": 0.5}}
    b = {"a": {"x": 0.5, "y": [1, 2]}, "b": 1}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash({**a, "b": 2})
    assert config_hash({"p": Path("/x"), "n": np.float32(0.5)}) == config_hash(
        {"p": "/x", "n": 0.5}
    )
    with pytest.raises(TypeError, match="cannot encode"):
        config_hash({"f": object()})
