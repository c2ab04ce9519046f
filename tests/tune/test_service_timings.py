"""Where a study's time goes: the timing record (tune.common.timings), the trial's timing
results, the checkpoint's selected-mask cache, and the overhead benchmark's argument handling
and breakdown."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

from tests.tune.conftest import REPO, TINY_STUDY, trial_config, write_study
from tune.common.timings import (
    TIMING_KEY,
    StepTimes,
    epoch_timings,
    process_start_time,
    study_timings,
)
from tune.study.file import load_study
from tune.trial.pipelines import SelectedMasks, build_pipelines
from tune.trial.trainable import S2APTrainable


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "service_overhead", REPO / "benchmarks" / "service_overhead.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- tune.common.timings ----------------------------------------------------------------------
def test_step_times_add_up_per_step_and_count_a_raising_step() -> None:
    times = StepTimes()
    for _ in range(2):
        with times.step("sleep"):
            time.sleep(0.02)
    with pytest.raises(ValueError), times.step("fails"):
        time.sleep(0.01)
        raise ValueError("boom")
    times.since("from_a_second_ago", time.time() - 1.0)
    times.since("unknown", None)
    assert list(times) == ["sleep_s", "fails_s", "from_a_second_ago_s"]
    assert 0.04 <= times["sleep_s"] < 1.0
    assert times["fails_s"] >= 0.01
    assert 1.0 <= times["from_a_second_ago_s"] < 2.0


def test_process_start_time_is_this_process_start() -> None:
    start = process_start_time()
    if start is None:
        pytest.skip("no /proc on this system")
    # This test process started before now, and (pytest's imports) not minutes in the future.
    assert start <= time.time()
    assert time.time() - start < 24 * 3600


def _result(t: float, **timing: Any) -> dict[str, Any]:
    return {"result_time": t, TIMING_KEY: timing}


def test_epoch_timings_split_the_gap_between_results() -> None:
    results = [
        _result(100.0, step_s=9.0, setup={"dataset_s": 1.0}),
        _result(110.5, step_s=10.0, log_s=0.1, checkpoint_s=0.2),
        _result(121.0, step_s=10.0, log_s=0.1, checkpoint_s=0.2, end_s=0.3),
    ]
    split = epoch_timings(results)
    assert [round(e["epoch"], 6) for e in split] == [10.5, 10.5]
    assert split[0]["ray"] == pytest.approx(10.5 - 10.0 - 0.1 - 0.2)
    assert split[1]["ray"] == pytest.approx(10.5 - 10.0 - 0.1 - 0.2 - 0.3)
    # A result without a timing record (an older trial) is skipped, not guessed.
    assert epoch_timings([{"result_time": 1.0}, {"result_time": 2.0}]) == []


def test_study_timings_merge_the_driver_steps_and_the_trials_records(tmp_path: Path) -> None:
    first, later = tmp_path / "trial_b", tmp_path / "trial_a"
    for folder, start in ((first, 50.0), (later, 80.0)):
        folder.mkdir()
        lines = [
            {**_result(start + 10, step_s=9.0, setup={"dataset_s": start / 100}),
             "trial_start_time": start},
            {**_result(start + 20, step_s=9.0, checkpoint_s=0.5), "trial_start_time": start},
            {**_result(start + 30, step_s=9.0, checkpoint_s=0.5, end_s=0.4),
             "trial_start_time": start},
        ]  # fmt: skip
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    timings = study_timings({"ray_start_s": 2.0}, tmp_path, fit_start=45.0)
    assert timings["ray_start_s"] == 2.0
    assert timings["fit_start_to_first_trial_setup_s"] == 5.0  # the earliest trial
    assert timings["trial_setup/dataset_s"] == 0.5
    assert timings["epoch/count"] == 4.0
    assert timings["epoch/epoch_s"] == 10.0
    assert timings["epoch/checkpoint_s"] == 0.5
    assert timings["trial_end_s"] == 0.4


# --- the trial's timing results and the checkpoint's selected masks ----------------------------
def test_a_trial_reports_its_set_up_once_and_each_epoch_split(tmp_path: Path) -> None:
    trainable = S2APTrainable(config=trial_config(tmp_path))
    first = trainable.train()[TIMING_KEY]
    assert {"worker_start_s", "dataset_s", "dense_s", "pipelines_s", "mlflow_run_s"} <= set(
        first["setup"]
    )
    assert first["step_s"] > 0 and first["checkpoint_s"] == 0.0
    with tempfile.TemporaryDirectory() as ckpt:
        trainable.save_checkpoint(ckpt)
    second = trainable.train()[TIMING_KEY]
    assert "setup" not in second
    assert second["checkpoint_s"] > 0  # the checkpoint written after the first epoch


def test_selected_masks_match_a_copy_of_the_selected_model_every_epoch(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, {"prune.epochs": 4, "finetune.epochs": 3}))
    (pipeline,) = build_pipelines(
        study.run_config, [0], phases=study.phases, device=torch.device("cpu"), dense_path=None
    )
    cached = SelectedMasks()
    selections = set()
    while not pipeline.done:
        pipeline.step()
        selections.add(pipeline.best.get("epoch"))
        got, want = cached(pipeline), pipeline.selected_masks()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), pipeline.global_epoch
    cached.clear()  # as after a restore: found again from a model copy
    got = cached(pipeline)
    assert all(torch.equal(got[k], v) for k, v in pipeline.selected_masks().items())
    assert len(selections) > 1  # the selection moved at least once along the way


# --- the MLflow store prepared while Ray starts ---------------------------------------------------
def test_a_new_store_is_built_aside_and_installed_only_when_asked(tmp_path: Path) -> None:
    from tracking.client import make_client
    from tune.driver.warmup import StoreWarmup

    target = tmp_path / "root" / "mlflow.db"
    refused = StoreWarmup(f"sqlite:///{target}")
    refused.discard()  # a launch refused after Ray started: nothing written
    assert not target.parent.exists()

    target.parent.mkdir()
    warmup = StoreWarmup(f"sqlite:///{target}")
    warmup.install()
    assert target.is_file() and sorted(p.name for p in target.parent.iterdir()) == ["mlflow.db"]
    client = make_client(f"sqlite:///{target}")
    experiment = client.create_experiment("works")
    assert client.get_experiment(experiment).name == "works"


def test_an_existing_store_is_never_replaced(tmp_path: Path) -> None:
    from tune.driver.warmup import StoreWarmup

    target = tmp_path / "mlflow.db"
    warmup = StoreWarmup(f"sqlite:///{target}")  # missing now: built aside ...
    target.write_bytes(b"made by another launch meanwhile")
    warmup.install()  # ... but by now another launch made one: kept as it is
    assert target.read_bytes() == b"made by another launch meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


# --- the benchmark's arguments and breakdown ------------------------------------------------------
def test_benchmark_arguments_are_checked() -> None:
    bench = _benchmark()
    args = bench.parse_args(["--repeats", "3"])
    assert args.repeats == 3 and args.config == Path("configs/run-digits.yaml")
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--repeats", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        bench.parse_args(["--dense", "/nonexistent/model.safetensors"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--records", "/nonexistent/records.json"])


def test_benchmark_prints_saved_records_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _benchmark()
    run, tune = _records()
    saved = tmp_path / "records.json"
    saved.write_text(json.dumps({"runs": [run], "tunes": [tune]}))
    bench.main(["--records", str(saved)])
    assert "ratio tune/run  [target <= 1.05]" in capsys.readouterr().out


def _records() -> tuple[dict[str, Any], dict[str, Any]]:
    run = {"start": 0.0, "end": 40.0, "epoch_ends": [12.0, 14.0, 16.0, 18.0], "summary_at": 39.0}
    tune = {
        "start": 0.0,
        "end": 60.0,
        "study_run": (5.0, 58.0),
        "trial_setup_start": 10.0,
        "first_step_start": 14.0,
        "epoch_ends": [16.2, 18.4, 20.6, 22.8],
        "step_s": [2.2, 2.0, 2.0, 2.0],
        "train_s": [1.5, 1.5, 1.5, 1.5],
        "test_logged": 30.0,
        "timings": {"ray_start_s": 3.0, "epoch/checkpoint_s": 0.1},
    }
    return run, tune


def test_benchmark_breakdown_covers_each_command_wall_time() -> None:
    bench = _benchmark()
    run, tune = _records()
    assert bench.median_epoch(run["epoch_ends"]) == 2.0
    with pytest.raises(ValueError):
        bench.median_epoch([1.0])
    parts = bench.run_breakdown(run)
    assert sum(parts.values()) == pytest.approx(run["end"] - run["start"])
    assert parts["start_to_first_epoch"] == 10.0
    steps = bench.tune_breakdown(tune)
    assert sum(steps.values()) == pytest.approx(tune["end"] - tune["start"])
    assert steps["trial_setup"] == 4.0 and steps["end_of_trial_to_test"] == pytest.approx(7.2)
    split = bench.epoch_split(tune)
    assert split["train"] == 1.5
    assert split["validate_and_log"] == pytest.approx(0.5)
    assert split["checkpoint_and_ray"] == pytest.approx(0.2)


def test_benchmark_report_prints_the_ratio_the_fixed_seconds_and_the_timings() -> None:
    bench = _benchmark()
    run, tune = _records()
    text = "\n".join(bench.report([run, run], [tune, tune]))
    ratio = next(line for line in text.splitlines() if "ratio tune/run  [target" in line)
    assert ratio.split()[-1] == "1.10"  # 2.2 s vs 2.0 s per epoch
    added = next(line for line in text.splitlines() if "added by the service" in line)
    # Fixed: wall less the epochs' span (tune: 14 -> 22.8; run: 12 - 2 -> 18).
    assert float(added.split()[-1]) == pytest.approx((60 - 8.8) - (40 - 8.0), abs=0.01)
    assert "ray_start_s" in text and "epoch/checkpoint_s" in text
    tune_without = {**tune, "timings": None}
    assert "no 'timings' section" in "\n".join(bench.report([run], [tune_without]))


def test_benchmark_configs_keep_the_run_config(tmp_path: Path) -> None:
    bench = _benchmark()
    config = tmp_path / "run.yaml"
    base = {k: v for k, v in TINY_STUDY.items() if k not in ("study", "search_space")}
    base["prune"] = {**base["prune"], "rho": 0.05}
    config.write_text(json.dumps(base))  # JSON is YAML
    dense = tmp_path / "dense.safetensors"
    run_cfg, study_cfg = bench.make_configs(tmp_path, config, dense)
    run, study = yaml.safe_load(run_cfg.read_text()), yaml.safe_load(study_cfg.read_text())
    assert run["prune"] == base["prune"] and run["finetune"] == base["finetune"]
    assert run["dense"]["checkpoint"] == str(dense.absolute())
    assert study["study"]["num_samples"] == 1 and study["study"]["scheduler"] == {"kind": "none"}
    assert study["search_space"]["prune.rho"]["values"] == [base["prune"]["rho"]]
