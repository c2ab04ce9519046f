"""Nothing in a study folder runs code: every file the service reads back is loaded as data.

A real pickle payload (an object whose ``__reduce__`` runs a shell command that creates a
marker file) is planted in each tensor file s2ap loads: a trial's ``state.pt``, the study's
dense cache ``<storage_root>/dense/<hash>.pt``, ``s2ap run``'s ``checkpoint.pt`` and a
``dense.checkpoint``. ``s2ap evaluate``, ``s2ap tune --resume`` (which restores the trials),
``s2ap run`` and ``s2ap masks apply`` refuse each with an error naming the file (exit 2); the
marker never appears and nothing new is written. Ray's own trial record is read without
unpickling by ``s2ap status`` and ``s2ap evaluate`` too, even when it holds a payload.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.files import snapshot
from tests.tune.conftest import run_cli, short_tmp, write_study
from tune.cli import main
from tune.common.untrusted import UntrustedFileError
from tune.study.file import load_study
from tune.trial.checkpoint import read_trial_state

REFUSAL = "holds pickled objects other than tensors and plain data"


class Payload:
    """Unpickling this runs ``touch <marker>`` (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@contextlib.contextmanager
def planted(path: Path, marker: Path) -> Iterator[None]:
    """``path`` replaced by a torch.save file holding a payload, then put back."""
    original = path.read_bytes()
    torch.save({"format": 1, "seeds": [0], "pipelines": [Payload(marker)]}, path)
    try:
        yield
    finally:
        path.write_bytes(original)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-trial study (with a pretrained dense cache); its study file."""
    folder = tmp_path_factory.mktemp("untrusted")
    path = write_study(
        folder,
        {
            "study.num_samples": 1,
            "study.scheduler": {"kind": "none"},
            "study.test_eval": {"enabled": False},
            "prune.epochs": 2,
        },
    )
    temp = short_tmp()
    try:
        res = run_cli("tune", str(path), "--ray-temp-dir", temp, "--num-cpus", "2", "-q")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return path


def _trial_checkpoint(study_file: Path) -> Path:
    (state,) = load_study(study_file).experiment_dir.glob("trial_*/checkpoint_*/state.pt")
    return state.parent


def _dense_cache(study_file: Path) -> Path:
    (dense,) = load_study(study_file).dense_dir.glob("*.pt")
    return dense


def _refused(
    args: list[str],
    planted_file: Path,
    marker: Path,
    capsys: pytest.CaptureFixture[str],
    folder: Path,
) -> None:
    """Run ``s2ap ARGS`` in-process: exit 2, the file named, no traceback, no marker, and no
    file written or changed under ``folder``."""
    before = snapshot(folder)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(planted_file) in err and REFUSAL in err, err
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    assert snapshot(folder) == before


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The planted file runs its command when unpickled the unsafe way: the refusals below
    are what keeps it from running."""
    marker, file = tmp_path / "ran", tmp_path / "state.pt"
    file.write_bytes(b"")
    with planted(file, marker):
        torch.load(file, weights_only=False)
    assert marker.exists()


def test_evaluate_refuses_a_tampered_trial_state(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    checkpoint = _trial_checkpoint(study)
    with planted(checkpoint / "state.pt", marker):
        args = ["evaluate", str(study), "--cpu"]
        _refused(args, checkpoint / "state.pt", marker, capsys, study.parent)
        # What a restored trial reads (in its Ray worker) refuses it the same way.
        with pytest.raises(UntrustedFileError, match=REFUSAL):
            read_trial_state(checkpoint)
    assert not marker.exists()


def test_evaluate_refuses_a_tampered_dense_cache(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker, dense = tmp_path / "ran", _dense_cache(study)
    info = json.loads((_trial_checkpoint(study) / "trial.json").read_text())
    assert info["run_config"]["dense"]["checkpoint"] == str(dense)  # what evaluate loads
    with planted(dense, marker):
        _refused(["evaluate", str(study), "--cpu"], dense, marker, capsys, study.parent)


@pytest.mark.parametrize("target", ["trial state", "dense cache"])
def test_resume_refuses_a_tampered_study_before_ray_starts(
    study: Path, tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    file = _trial_checkpoint(study) / "state.pt" if target == "trial state" else _dense_cache(study)
    temp = tmp_path / "ray"  # Ray would create it: the refusal comes first
    with planted(file, marker):
        args = ["tune", "--resume", str(study), "--ray-temp-dir", str(temp)]
        _refused(args, file, marker, capsys, study.parent)
    assert not temp.exists()


def test_status_and_evaluate_never_unpickle_rays_record(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray's experiment state embeds cloudpickle blobs (which ``ExperimentAnalysis`` would
    unpickle): reading the trials for status/evaluate leaves them undecoded."""
    import ray.cloudpickle as cloudpickle

    marker = tmp_path / "ran"
    experiment = load_study(study).experiment_dir
    (state_file,) = experiment.glob("experiment_state-*.json")
    original = state_file.read_text()
    data = json.loads(original)
    trial_state = json.loads(data["trial_data"][0][0])
    trial_state["placement_group_factory"] = cloudpickle.dumps(Payload(marker)).hex()
    data["trial_data"][0][0] = json.dumps(trial_state)
    state_file.write_text(json.dumps(data))
    try:
        assert main(["status", str(study), "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["trials"]
        assert row["state"] == "TERMINATED" and row["checkpoint"] and row["retries"] == 0
        assert not marker.exists()
        assert main(["evaluate", str(study), "--cpu"]) == 0
        assert json.loads(capsys.readouterr().out)["trial_id"] == row["trial_id"]
        assert not marker.exists()
        # The same record through Ray's reader runs the payload: status must not use it.
        from ray.tune import ExperimentAnalysis

        with contextlib.suppress(Exception):  # what Ray makes of the result does not matter
            ExperimentAnalysis(str(experiment))
        assert marker.exists()
    finally:
        state_file.write_text(original)


def test_run_refuses_a_tampered_checkpoint_and_dense_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker, config, out = tmp_path / "ran", tmp_path / "run.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump({"data": {"source": "digits"}, "device": "cpu"}))
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    with planted(out / "checkpoint.pt", marker):
        args = ["run", str(config), "--out", str(out), "--resume"]
        _refused(args, out / "checkpoint.pt", marker, capsys, tmp_path)

    dense = tmp_path / "dense.pt"
    dense.write_bytes(b"")
    config.write_text(
        yaml.safe_dump({"data": {"source": "digits"}, "dense": {"checkpoint": str(dense)}})
    )
    fresh = tmp_path / "fresh"
    with planted(dense, marker):
        _refused(["run", str(config), "--out", str(fresh)], dense, marker, capsys, tmp_path)
        # s2ap masks apply reads a dense checkpoint too.
        mask = tmp_path / "m.s2mask"
        mask.write_bytes(b"")
        code = main(["masks", "apply", str(mask), "--checkpoint", str(dense), "--out", str(fresh)])
        err = capsys.readouterr().err
        assert code == 2 and str(dense) in err and REFUSAL in err, err
        assert not marker.exists() and not fresh.exists()


def test_the_refusal_through_the_console_script(study: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    checkpoint = _trial_checkpoint(study)
    with planted(checkpoint / "state.pt", marker):
        res = run_cli("evaluate", str(study), "--cpu", timeout=180)
    assert res.returncode == 2, res.stderr
    assert REFUSAL in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()
