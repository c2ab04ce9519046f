"""``s2ap run``: one pipeline end to end on digits through the command line, no Ray."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from s2ap.models import create_model
from tracking.artifacts import load_masks, load_state_dict
from tune.cli import main

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "name": "digits-tiny",
    "device": "cpu",
    "data": {"source": "digits", "batch_size": 128},
    "threat": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "pretrain": {"epochs": 2, "lr": 0.05},
    "prune": {"epochs": 2, "sparsity": 0.9, "warmup_epochs": 1},
    "finetune": {"epochs": 1},
    "validation": {"pgd_steps": 2, "sharpness_examples": 64},
    "evaluate": {"n_examples": 100, "pgd_steps": 3, "autoattack": False},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = folder / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    return config, out


def test_run_writes_every_output(finished_run):
    _, out = finished_run
    names = {p.name for p in out.iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.pt",
        "dense.safetensors",
        "mask.s2mask",
        "mask-prune.s2mask",
        "model.safetensors",
        "summary.json",
    } <= names
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["pretrain"] * 2 + ["prune"] * 2 + ["finetune"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected"]["phase"] == "finetune"
    assert 0.0 <= summary["test"]["test_pgd_acc"] <= summary["test"]["test_clean_acc"] <= 1.0

    masks, header = load_masks(out / "mask.s2mask")
    assert header["architecture"] == "small_cnn" and header["dataset"] == "digits"
    assert header["method"]["perturbation"] == "score"
    assert header["dense_checkpoint_hash"]  # the mask names the dense model it was found on
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert 1 - kept / total == pytest.approx(0.9, abs=0.005)

    state = load_state_dict(out / "model.safetensors")
    model = create_model(
        "small_cnn", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.3]
    )
    model.load_state_dict(state)  # plain architecture, no s2ap layers
    for name, mask in masks.items():
        assert (state[f"{name}.weight"][~mask] == 0).all()


def test_existing_output_is_never_overwritten(finished_run, capsys):
    config, out = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--force" in err
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_resume_after_a_kill_ends_like_the_uninterrupted_run(finished_run, tmp_path):
    config, reference = finished_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tune.cli", "run", str(config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not (out / "summary.json").exists()
    assert main(["run", str(config), "--out", str(out), "--resume", "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]  # no epoch twice, none missing
    resumed, _ = load_masks(out / "mask.s2mask")
    uninterrupted, _ = load_masks(reference / "mask.s2mask")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_resume_needs_a_checkpoint(finished_run, tmp_path, capsys):
    config, _ = finished_run
    assert main(["run", str(config), "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_bad_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "prune": {"sparsity": 1.5}}))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "tune.cli", "run", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "prune.sparsity" in result.stderr
    assert not out.exists()
