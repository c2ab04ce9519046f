"""Conditional search spaces: parsing, define-by-run sampling, grid expansion, validation."""

from __future__ import annotations

import optuna
import pytest

from s2ap.config import ConfigError, RunConfig
from tune.driver.searcher import make_sampler
from tune.study.settings import SearcherConfig, check_searcher
from tune.study.space import DefineByRun, parse_search_space

BASE = RunConfig().model_dump(mode="json")

ARMS = {
    "prune.sparsity": {"type": "choice", "values": [0.8, 0.9]},
    "prune.perturbation": {
        "type": "choice",
        "branches": {
            "score": {
                "prune.rho": {"type": "loguniform", "low": 0.01, "high": 0.5},
                "prune.ascent_steps": {"type": "int", "low": 1, "high": 3},
            },
            "random": {"prune.rho": {"type": "loguniform", "low": 0.01, "high": 0.2}},
        },
    },
}

GRID_ARMS = {
    "prune.sparsity": {"type": "choice", "values": [0.8, 0.9]},
    "prune.perturbation": {
        "type": "choice",
        "branches": {
            "score": {
                "prune.rho": {"type": "choice", "values": [0.05, 0.1]},
                "prune.ascent_steps": {"type": "int", "low": 1, "high": 3},
            },
            "random": {"prune.rho": {"type": "choice", "values": [0.05, 0.1]}},
        },
    },
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample(space_raw: dict, n: int, kind: str = "tpe") -> list[dict]:
    space = parse_search_space(space_raw)
    sampler = make_sampler(SearcherConfig(kind=kind, seed=3, n_startup_trials=4), space)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    define = DefineByRun(space)
    points = []
    for i in range(n):
        trial = study.ask()
        define(trial)
        points.append(dict(trial.params))
        study.tell(trial, (i * 37 % 11) / 11)
    return points


def test_branch_keys_and_round_trip() -> None:
    space = parse_search_space(ARMS)
    assert space.keys == ["prune.sparsity", "prune.perturbation", "prune.rho", "prune.ascent_steps"]
    assert space.has_branches
    again = parse_search_space(space.to_dict())
    assert again.to_dict() == space.to_dict()
    assert space.contains({"prune.sparsity": 0.8, "prune.perturbation": "random", "prune.rho": 0.1})
    # a value of another branch, or a parameter the drawn branch lacks, is not a point
    assert "ascent_steps" in space.unmatched(
        {
            "prune.sparsity": 0.8,
            "prune.perturbation": "random",
            "prune.rho": 0.1,
            "prune.ascent_steps": 2,
        }
    )
    assert "outside" in space.unmatched(
        {"prune.sparsity": 0.8, "prune.perturbation": "random", "prune.rho": 0.4}
    )


@pytest.mark.parametrize("kind", ["tpe", "random", "qmc"])
def test_branch_sampling_never_leaks_a_parameter(kind: str) -> None:
    space = parse_search_space(ARMS)
    points = _sample(ARMS, 40, kind)
    arms = {p["prune.perturbation"] for p in points}
    assert arms == {"score", "random"}
    for p in points:
        assert space.contains(p), p
        if p["prune.perturbation"] == "random":
            assert "prune.ascent_steps" not in p
            assert p["prune.rho"] <= 0.2  # the random branch's own range
        else:
            assert 1 <= p["prune.ascent_steps"] <= 3


def test_nested_branches_sample_only_their_path() -> None:
    raw = {
        "finetune.awp.enabled": {
            "type": "choice",
            "branches": {
                True: {"finetune.awp.gamma": {"type": "uniform", "low": 0.001, "high": 0.01}},
                False: {"finetune.lr": {"type": "choice", "values": [0.01, 0.02]}},
            },
        },
        **ARMS,
    }
    space = parse_search_space(raw)
    for p in _sample(raw, 30, "random"):
        assert space.contains(p)
        assert ("finetune.awp.gamma" in p) == p["finetune.awp.enabled"]
        assert ("finetune.lr" in p) != p["finetune.awp.enabled"]


def test_grid_expands_branches() -> None:
    space = parse_search_space(GRID_ARMS)
    points = space.grid_points()
    # 2 sparsities x (score: 2 rho x 3 steps + random: 2 rho)
    assert len(points) == 2 * (2 * 3 + 2) == space.grid_size()
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert all(space.contains(p) for p in points)
    assert not any("prune.ascent_steps" in p for p in points if p["prune.perturbation"] == "random")
    space.validate_against(BASE)


def test_corners_cover_every_branch() -> None:
    space = parse_search_space(ARMS)
    corners = space.corner_configs()
    assert {c["prune.perturbation"] for c in corners} == {"score", "random"}
    assert {c["prune.rho"] for c in corners if c["prune.perturbation"] == "random"} == {0.01, 0.2}


def _error(raw: dict, base: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_search_space(raw).validate_against(base or BASE)
    return str(info.value)


def test_flat_space_with_an_ignored_parameter_is_refused() -> None:
    text = _error(
        {
            "prune.perturbation": {"type": "choice", "values": ["score", "none"]},
            "prune.rho": {"type": "loguniform", "low": 0.01, "high": 0.5},
        }
    )
    assert "prune.rho" in text and "perturbation is none" in text
    assert "branches" in text and "study.baselines" in text


def test_ascent_steps_in_the_random_branch_is_refused() -> None:
    raw = {
        "prune.perturbation": {
            "type": "choice",
            "branches": {"random": {"prune.ascent_steps": {"type": "int", "low": 1, "high": 2}}},
        }
    }
    text = _error(raw)
    assert "prune.ascent_steps" in text and "random" in text


def test_an_ignored_field_is_refused_even_when_the_arm_is_fixed() -> None:
    base = RunConfig().model_dump(mode="json")
    base["prune"]["perturbation"] = "none"
    text = _error({"prune.rho": {"type": "uniform", "low": 0.01, "high": 0.5}}, base)
    assert "prune.rho" in text and "HYDRA" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"prune.perturbation": {"type": "choice", "branches": {"none": {}}}},
            ["prune.perturbation.branches.none", "empty branch", "study.baselines"],
        ),
        (
            {"prune.perturbation": {"type": "choice", "branches": {"score": None}}},
            ["empty branch"],
        ),
        (
            {"prune.perturbation": {"type": "choice", "branches": {}}},
            ["prune.perturbation.branches", "at least one branch"],
        ),
        (
            {
                "prune.perturbation": {
                    "type": "choice",
                    "branches": {"score": {"prune.rhoo": {"type": "uniform", "low": 0, "high": 1}}},
                }
            },
            ["prune.perturbation.branches.score", "prune.rhoo", "did you mean prune.rho"],
        ),
        (
            {
                "prune.perturbation": {
                    "type": "choice",
                    "values": ["score"],
                    "branches": {"score": {"prune.rho": {"type": "uniform", "low": 0, "high": 1}}},
                }
            },
            ["prune.perturbation", "only type and branches"],
        ),
        (
            {
                "prune.perturbation": {
                    "type": "choice",
                    "branches": {
                        "score": {"prune.rho": {"type": "uniform", "low": 0.01, "high": 1}},
                        "random": {"prune.rho": {"type": "loguniform", "low": 0.01, "high": 1}},
                    },
                }
            },
            ["prune.rho", "same type"],
        ),
        (
            {
                "prune.rho": {"type": "uniform", "low": 0.01, "high": 1},
                "prune.perturbation": {
                    "type": "choice",
                    "branches": {"score": {"prune.rho": {"type": "uniform", "low": 0, "high": 1}}},
                },
            },
            ["prune.rho", "inside a branch and around it"],
        ),
        (
            {
                "prune.perturbation": {
                    "type": "choice",
                    "branches": {"score": {"model.arch": {"type": "choice", "values": ["mlp"]}}},
                }
            },
            ["model.arch", "cannot be searched"],
        ),
        (
            {
                "prune.perturbation": {
                    "type": "choice",
                    "branches": {"scor": {"prune.rho": {"type": "uniform", "low": 0, "high": 1}}},
                }
            },
            ["prune.perturbation", "scor"],
        ),
        (
            {"prune.rho": {"type": "uniform", "low": 0.0, "high": float("inf")}},
            ["prune.rho", "finite"],
        ),
    ],
)
def test_validation_errors_name_the_field(raw: dict, expected: list[str]) -> None:
    text = _error(raw)
    for part in expected:
        assert part in text, (part, text)


def test_points_to_evaluate_follow_the_branches() -> None:
    space = parse_search_space(ARMS)
    ok = {"prune.sparsity": 0.9, "prune.perturbation": "random", "prune.rho": 0.05}
    check_searcher(SearcherConfig(points_to_evaluate=[ok]), [], space)
    bad = {**ok, "prune.ascent_steps": 1}
    with pytest.raises(ConfigError, match=r"points_to_evaluate\[0\]: not searched here"):
        check_searcher(SearcherConfig(points_to_evaluate=[bad]), [], space)


def test_grid_budget_counts_branches_and_baselines() -> None:
    space = parse_search_space(GRID_ARMS)
    check_searcher(SearcherConfig(kind="grid"), [], space, num_samples=17, baseline_trials=1)
    with pytest.raises(ConfigError, match="16 points of the grid plus 1 baseline"):
        check_searcher(SearcherConfig(kind="grid"), [], space, num_samples=18, baseline_trials=1)
    with pytest.raises(ConfigError, match="leave none for the search"):
        check_searcher(SearcherConfig(), [], space, num_samples=3, baseline_trials=3)


def test_harp_parameters_only_in_the_harp_branch() -> None:
    text = _error(
        {
            "prune.host": {"type": "choice", "values": ["hydra", "harp"]},
            "prune.harp.gamma": {"type": "loguniform", "low": 0.01, "high": 0.3},
        }
    )
    assert "prune.harp.gamma" in text and "prune.host is hydra" in text
    space = parse_search_space(
        {
            "prune.host": {
                "type": "choice",
                "branches": {
                    "hydra": {"prune.rho": {"type": "uniform", "low": 0.01, "high": 0.2}},
                    "harp": {"prune.harp.gamma": {"type": "loguniform", "low": 0.01, "high": 0.3}},
                },
            }
        }
    )
    space.validate_against(BASE)
    assert space.keys == ["prune.host", "prune.rho", "prune.harp.gamma"]
