"""The study file is validated before anything runs: errors name the dotted field, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tune.conftest import run_cli, write_study
from tune.study.file import StudyError, load_study


def test_tiny_study_loads_with_absolute_paths(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    assert study.name == "tiny"
    assert study.storage_root == (tmp_path / "studies").resolve()
    assert study.storage_root.is_absolute()
    assert study.space.keys == ["prune.rho", "prune.ascent_steps"]
    assert study.phases == ("prune", "finetune")
    assert study.epochs_per_trial == 4
    assert study.seeds == [0]
    assert not (tmp_path / "studies").exists(), "loading a study must create nothing"


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        ({"prune.rhoo": 0.1}, "prune.rhoo"),
        ({"study.num_samples": 0}, "study.num_samples"),
        ({"study.scheduler.kind": "hyperband"}, "study.scheduler.kind"),
        ({"study.objectives": [{"metric": "test_autoattack_acc", "mode": "max"}]}, "test set"),
        ({"study.objectives": [{"metric": "val_robust", "mode": "max"}]}, "unknown metric"),
        ({"study.resources.gpu": 1.5}, "study.resources.gpu"),
        ({"search_space/prune.rho/low": -1.0}, "prune.rho"),
        ({"search_space/prune.rho/type": "gaussian"}, "prune.rho"),
        # A value inside the space that makes an invalid run config (sparsity must be < 1).
        (
            {"search_space/prune.sparsity": {"type": "uniform", "low": 0.5, "high": 1.0}},
            "prune.sparsity",
        ),
        # warmup >= epochs at a corner of the space.
        (
            {"search_space/prune.warmup_epochs": {"type": "int", "low": 0, "high": 3}},
            "prune.warmup_epochs",
        ),
        (
            {"search_space/pretrain.lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
            "pretrain.lr",
        ),
        ({"search_space/prune": {"type": "choice", "values": [1]}}, "is a section"),
        ({"study.searcher.points_to_evaluate": [{"prune.rho": 0.1}]}, "points_to_evaluate"),
        ({"dense.checkpoint": "missing.pt"}, "dense.checkpoint"),
        # The grid searcher needs finite ranges; CMA-ES one objective.
        ({"study.searcher": {"kind": "grid"}}, "prune.rho: a float range has no grid"),
        (
            {
                "study.searcher": {"kind": "cmaes"},
                "study.objectives": [
                    {"metric": "val_robust_acc", "mode": "max"},
                    {"metric": "sharpness", "mode": "min"},
                ],
            },
            "single objective",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, updates: dict, expected: str) -> None:
    path = write_study(tmp_path, updates)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert expected in str(info.value)


def test_unknown_search_path_suggests_the_right_name(tmp_path: Path) -> None:
    path = write_study(
        tmp_path, {"search_space/prune.ascent_step": {"type": "int", "low": 1, "high": 2}}
    )
    with pytest.raises(StudyError) as info:
        load_study(path)
    msg = str(info.value)
    assert "prune.ascent_step" in msg and "did you mean prune.ascent_steps" in msg


def test_seeds_and_searched_seed_conflict(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        {"study.seeds": [0, 1], "search_space/seed": {"type": "choice", "values": [0, 1]}},
    )
    with pytest.raises(StudyError, match="seed"):
        load_study(path)


def test_cli_bad_field_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    path = write_study(tmp_path, {"prune.sparsity": 1.5})
    proc = run_cli("tune", str(path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "prune.sparsity" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_cli_unknown_search_path_exits_2(tmp_path: Path) -> None:
    path = write_study(
        tmp_path, {"search_space/finetune.lrr": {"type": "uniform", "low": 0.001, "high": 0.1}}
    )
    proc = run_cli("tune", str(path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "finetune.lrr" in proc.stderr and "unknown field" in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_cli_missing_study_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("status", str(tmp_path / "nope.yaml"), timeout=120)
    assert proc.returncode == 2
    assert "no such study file" in proc.stderr


def test_shipped_configs_validate() -> None:
    repo = Path(__file__).resolve().parents[2]
    quick = load_study(repo / "configs" / "quickstart.yaml")
    assert quick.run_config.data.source == "digits"
    assert quick.settings.num_samples >= 8
    assert quick.settings.scheduler.kind == "asha"
    cifar = load_study(repo / "configs" / "study-cifar10-resnet18.yaml")
    assert cifar.settings.resources.gpu == 1
    assert cifar.run_config.model.arch == "resnet18"


def test_grid_searcher_size(tmp_path: Path) -> None:
    grid = {
        "study.searcher": {"kind": "grid"},
        "search_space": {
            "prune.rho": {"type": "choice", "values": [0.05, 0.1]},
            "seed": {"type": "choice", "values": [0, 1, 2]},
        },
    }
    study = load_study(write_study(tmp_path, {**grid, "study.num_samples": 6}))
    assert study.space.grid_size() == 6
    with pytest.raises(StudyError, match="num_samples"):
        load_study(write_study(tmp_path, {**grid, "study.num_samples": 7}))


def test_the_tracking_uri_comes_from_the_flag_the_file_the_environment_then_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster recipes set S2AP_TRACKING_URI on every node: a study submitted there logs to
    the cluster's MLflow server unless its flag or its file says otherwise."""
    monkeypatch.delenv("S2AP_TRACKING_URI", raising=False)
    study = load_study(write_study(tmp_path))
    assert study.resolve_tracking_uri() == f"sqlite:///{study.storage_root / 'mlflow.db'}"
    monkeypatch.setenv("S2AP_TRACKING_URI", "http://mlflow:5000")
    assert study.resolve_tracking_uri() == "http://mlflow:5000"
    assert study.resolve_tracking_uri("http://other:5000") == "http://other:5000"
    in_file = load_study(write_study(tmp_path / "f", {"study.tracking_uri": "http://file:5000"}))
    assert in_file.resolve_tracking_uri() == "http://file:5000"
    monkeypatch.setenv("S2AP_TRACKING_URI", "ftp://nowhere")
    with pytest.raises(StudyError, match="S2AP_TRACKING_URI"):
        study.resolve_tracking_uri()
