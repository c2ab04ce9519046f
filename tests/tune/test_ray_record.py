"""Ray Tune's record, read as plain JSON, against the pinned Ray: a real experiment's trials read
back with their ids, statuses, configs, last results, retries, checkpoints and error files, and a
record in another layout refused with a message that names the Ray version and the fix."""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tune.results.ray_record import (
    RAY_FORMAT_VERSION,
    RayRecordFormatError,
    read_trial_records,
)


def _trainable(config: dict[str, Any]) -> None:
    """Three results with a checkpoint each; ``fail`` raises after the second."""
    from ray import tune

    for it in range(3):
        if config["fail"] and it == 2:
            raise ValueError("planned failure")
        with tempfile.TemporaryDirectory() as d:
            # Stands in for an s2ap trial checkpoint (the reader looks for these two files).
            (Path(d) / "state.pt").write_bytes(b"x")
            (Path(d) / "trial.json").write_text("{}")
            tune.report({"score": config["x"] * (it + 1)}, checkpoint=tune.Checkpoint(d))


@pytest.mark.ray
def test_the_pinned_rays_record_reads_back_as_its_results(ray_local: Any, tmp_path: Path) -> None:
    from ray import tune

    assert importlib.metadata.version("ray") == RAY_FORMAT_VERSION, (
        "the installed Ray is not the one tune/results/ray_record.py reads: update "
        "RAY_FORMAT_VERSION only after this test passes on the new Ray"
    )
    tuner = tune.Tuner(
        _trainable,
        param_space={"x": tune.grid_search([1, 2, 3]), "fail": tune.grid_search([False, True])},
        run_config=tune.RunConfig(
            name="record", storage_path=str(tmp_path), failure_config=tune.FailureConfig(1)
        ),
    )
    grid = tuner.fit()
    records = {r.trial_id: r for r in read_trial_records(grid.experiment_path)}
    results = {r.path.rsplit("/", 1)[-1]: r for r in grid}
    assert len(records) == len(results) == 6, "every trial of the experiment is in the record"
    for record in records.values():
        result = next(r for name, r in results.items() if record.trial_id in name)
        failed = record.config["fail"]
        assert record.status == ("ERROR" if failed else "TERMINATED")
        assert record.config == result.config
        assert record.last_result["score"] == result.metrics["score"]
        iterations = result.metrics["training_iteration"]
        assert record.last_result["training_iteration"] == iterations
        assert iterations == 3 or failed  # a retried trial counts on from its checkpoint
        assert record.num_failures == (2 if failed else 0)  # first try + one retry
        assert record.checkpoint is not None and Path(record.checkpoint).is_dir()
        assert (record.error_file is not None) == failed
        if failed:
            assert "planned failure" in Path(record.error_file).read_text()


def _write_state(folder: Path, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment_state-2026-12-04_00-00-00.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"trials": []}, "no 'trial_data' list"),
        ({"trial_data": [["{}"]]}, "not a [state, metadata] pair"),
        (
            {"trial_data": [[json.dumps({"trial_id": "a"}), json.dumps({})]]},
            "state has no status, relative_logdir, config",
        ),
        (
            {
                "trial_data": [
                    [
                        json.dumps(
                            {"trial_id": "a", "status": "X", "relative_logdir": "a", "config": {}}
                        ),
                        json.dumps({"last_result": {}}),
                    ]
                ]
            },
            "metadata has no num_failures",
        ),
    ],
)
def test_a_moved_format_names_the_ray_version_and_the_fix(
    tmp_path: Path, data: Any, problem: str
) -> None:
    state = _write_state(tmp_path / "exp", data)
    with pytest.raises(RayRecordFormatError) as info:
        read_trial_records(tmp_path / "exp")
    text = str(info.value)
    assert str(state) in text and problem in text
    assert f"Ray {RAY_FORMAT_VERSION}" in text and "ray_record.py" in text
