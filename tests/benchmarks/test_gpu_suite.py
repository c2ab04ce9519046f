"""Smoke tests of the benchmark scripts at toy sizes on the CPU (they print, never assert speed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "bs 16 fp32": {"dense", "hydra-cached", "s2ap-1"},
    "bs 32 bf16 + channels_last": {"dense", "hydra-cached", "s2ap-1"},
    "mask refresh, all 4 layers (ms)": {
        "refresh (default selection)",
        "thresholds by sort",
        "thresholds by kthvalue",
    },
    "sharing: total images/s": {
        "1 trial, memory fraction 1.00 each",
        "2 trials, memory fraction 0.50 each",
    },
}


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def suite() -> subprocess.CompletedProcess:
    # -X importtime: every process (the spawned trials too) lists the modules it imports.
    return run_script("-X", "importtime", "benchmarks/gpu_suite.py", "--tiny", "--device", "cpu")


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert lines[0] == "| section | row | value | x reference | target |"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_gpu_suite_tiny_prints_every_row_with_positive_numbers(suite):
    assert suite.returncode == 0, suite.stderr[-3000:]
    rows = table_rows(suite.stdout)
    found: dict[str, set[str]] = {}
    for section, row, value, ratio, _target in rows:
        found.setdefault(section, set()).add(row)
        assert float(value) > 0, (section, row, value)
        if ratio:
            assert float(ratio) > 0, (section, row, ratio)
    assert found == SECTIONS
    references = [r for r in rows if r[1] in ("dense", "1 trial, memory fraction 1.00 each")]
    assert all(float(r[3]) == 1.0 for r in references)  # each section's reference row


def test_gpu_suite_imports_neither_ray_nor_mlflow(suite):
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in suite.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "torch" in imported and "s2ap.masking" in imported  # the listing is real
    banned = {m for m in imported if m.split(".")[0] in ("ray", "mlflow")}
    assert not banned, sorted(banned)[:5]


def test_prune_step_benchmark_prints_the_ratios():
    out = run_script(
        "benchmarks/prune_step.py",
        *("--image-size", "8", "--batch-size", "8", "--steps", "1", "--rounds", "1"),
        *("--device", "cpu", "--threads", "1"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line[:1].isalpha()}
    for row in ("dense", "hydra-per-forward", "hydra-cached", "hydra+1pass", "s2ap-1", "s2ap-3"):
        assert all(float(v) > 0 for v in rows[row]), (row, rows.get(row))
    assert any(line.startswith("S2AP-1 / dense (throughput):") for line in lines)
    assert any(line.startswith("S2AP-1 / HYDRA-cached (time):") for line in lines)
