"""StudySearcher: baselines first and once, each effective configuration trained once.

The searcher under test wraps a real Ray ``OptunaSearch`` over a real (sqlite) Optuna study; no
Ray runtime is needed to drive a searcher's suggest/complete protocol.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from ray.tune.search import Searcher

from s2ap.config import ConfigError, RunConfig
from tune.driver.searcher import StudySearcher, make_searcher
from tune.study.baselines import (
    BASELINE_KEY,
    EffectiveKey,
    baseline_trials,
    check_baselines,
    trial_values,
)
from tune.study.file import optuna_journal
from tune.study.settings import ObjectiveConfig, SearcherConfig
from tune.study.space import parse_search_space

BASE = RunConfig().model_dump(mode="json")
HYDRA = {"hydra": {"prune.perturbation": "none"}}

#: Four distinct effective configurations: score x 2 ascent steps, random x 2 radii.
SMALL = {
    "prune.perturbation": {
        "type": "choice",
        "branches": {
            "score": {"prune.ascent_steps": {"type": "int", "low": 1, "high": 2}},
            "random": {"prune.rho": {"type": "choice", "values": [0.05, 0.1]}},
        },
    }
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _searcher(
    tmp_path: Path,
    raw: dict,
    baselines: dict | None = None,
    *,
    kind: str = "random",
    n_startup_trials: int | None = None,
) -> tuple[StudySearcher, str]:
    space = parse_search_space(raw)
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = optuna_journal(tmp_path / "optuna.journal")
    searcher = make_searcher(
        SearcherConfig(kind=kind, seed=0, n_startup_trials=n_startup_trials),
        [ObjectiveConfig()],
        space,
        study_name="s",
        storage=url,
        base=BASE,
        baselines=baseline_trials(baselines or {}, space),
        log_path=str(tmp_path / "duplicates.jsonl"),
    )
    searcher.max_redraws = 20
    return searcher, url


def _objective(config: dict) -> float:
    """A deterministic value per configuration."""
    return round(0.1 + 0.01 * len(json.dumps(trial_values(config), sort_keys=True)) % 0.7, 6)


def _run_all(searcher: StudySearcher, limit: int = 50) -> list[dict]:
    issued = []
    for i in range(limit):
        config = searcher.suggest(f"t{i:02d}")
        if config == Searcher.FINISHED:
            return issued
        assert config is not None
        issued.append(config)
        searcher.on_trial_complete(f"t{i:02d}", {"val_robust_acc": _objective(config)})
    raise AssertionError("the searcher never finished")


def test_every_effective_configuration_is_trained_once(tmp_path: Path) -> None:
    searcher, url = _searcher(tmp_path, SMALL)
    issued = _run_all(searcher)
    keys = [EffectiveKey(BASE)(c) for c in issued]
    assert len(issued) == 4 and len(set(keys)) == 4
    # Optuna saw the skipped draws too, each with the value of the trial that trained it
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) > 4 and searcher.duplicates == len(trials) - 4
    value_of = {tuple(sorted(trial_values(c).items())): _objective(c) for c in issued}
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == value_of[tuple(sorted(t.params.items()))]
    log = [json.loads(line) for line in (tmp_path / "duplicates.jsonl").read_text().splitlines()]
    assert len(log) == searcher.duplicates
    assert {entry["same_as"] for entry in log} <= {f"t{i:02d}" for i in range(4)}


def test_a_duplicate_drawn_while_its_original_runs_gets_its_result_later(tmp_path: Path) -> None:
    raw = {"prune.ascent_steps": {"type": "choice", "values": [1]}}
    searcher, url = _searcher(tmp_path, raw)
    first = searcher.suggest("a")
    assert first == {"prune.ascent_steps": 1}
    # the only configuration is running: every further draw repeats it, so the search ends
    assert searcher.suggest("b") == Searcher.FINISHED
    study = optuna.load_study(study_name="s", storage=url)
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(waiting) == searcher.max_redraws + 1
    searcher.on_trial_complete("a", {"val_robust_acc": 0.625})
    states = {t.state for t in optuna.load_study(study_name="s", storage=url).trials}
    assert states == {optuna.trial.TrialState.COMPLETE}
    assert {t.value for t in optuna.load_study(study_name="s", storage=url).trials} == {0.625}


def test_baselines_run_first_once_per_seed_and_never_reach_optuna(tmp_path: Path) -> None:
    raw = {**SMALL, "seed": {"type": "choice", "values": [0, 1]}}
    searcher, url = _searcher(tmp_path, raw, HYDRA)
    first = [searcher.suggest(f"b{i}") for i in range(2)]
    assert first == [
        {"prune.perturbation": "none", BASELINE_KEY: "hydra", "seed": 0},
        {"prune.perturbation": "none", BASELINE_KEY: "hydra", "seed": 1},
    ]
    assert optuna.load_study(study_name="s", storage=url).trials == []
    for i in range(2):
        searcher.on_trial_complete(f"b{i}", {"val_robust_acc": 0.5})
    issued = _run_all(searcher)
    assert all(BASELINE_KEY not in c for c in issued)
    assert all(c["prune.perturbation"] != "none" for c in issued)
    assert len(issued) == 8  # 4 configurations x 2 seeds, no more


def test_a_sampled_configuration_equal_to_a_baseline_is_not_trained(tmp_path: Path) -> None:
    raw = {"prune.perturbation": {"type": "choice", "values": ["score", "none"]}}
    searcher, url = _searcher(tmp_path, raw, HYDRA)
    baseline = searcher.suggest("b")
    searcher.on_trial_complete("b", {"val_robust_acc": 0.7})
    issued = _run_all(searcher)
    assert baseline[BASELINE_KEY] == "hydra"
    assert issued == [{"prune.perturbation": "score"}]
    study = optuna.load_study(study_name="s", storage=url)
    hydra_draws = [t for t in study.trials if t.params["prune.perturbation"] == "none"]
    assert hydra_draws and all(t.value == 0.7 for t in hydra_draws)


def test_state_round_trip_resumes_without_rerunning(tmp_path: Path) -> None:
    searcher, _ = _searcher(tmp_path, SMALL, HYDRA)
    issued = [searcher.suggest("b"), searcher.suggest("t1")]
    searcher.on_trial_complete("b", {"val_robust_acc": 0.5})
    searcher.on_trial_complete("t1", {"val_robust_acc": 0.6})
    state = json.loads(json.dumps(searcher.get_state()))  # what Ray keeps must be plain data
    searcher.save(str(tmp_path / "inner.pkl"))

    again, _ = _searcher(tmp_path / "other", SMALL, HYDRA)
    again.restore(str(tmp_path / "inner.pkl"))
    again.set_state(state)
    rest = _run_all(again)
    assert all(BASELINE_KEY not in c for c in rest)
    keys = {EffectiveKey(BASE)(c) for c in [*issued, *rest]}
    assert len(keys) == len(issued) + len(rest) == 1 + 4


@pytest.mark.parametrize(
    ("baselines", "expected"),
    [
        ({"hydra": {"prune.perturbation": "none", "prune.rho": 0.1}}, "prune.rho: set, but"),
        ({"hydra": {"prune.perturbation": "nope"}}, "study.baselines.hydra"),
        ({"hydra": {"prune.rhoo": 1}}, "did you mean prune.rho"),
        ({"hydra": {"model.arch": "mlp"}}, "cannot be set by a baseline"),
        ({"hydra": "none"}, "expected {field: value}"),
        ({"bad name": {}}, "baseline name"),
        (
            {"a": {"prune.perturbation": "none"}, "b": {"prune.perturbation": "none"}},
            "same configuration as baseline a",
        ),
        ({"hydra": {"prune.perturbation": "none", "seed": 1}}, "once per seed"),
    ],
)
def test_baseline_errors_name_the_field(baselines: dict, expected: str) -> None:
    space = parse_search_space({**SMALL, "seed": {"type": "choice", "values": [0, 1]}})
    with pytest.raises(ConfigError) as info:
        check_baselines(baselines, space, BASE)
    assert expected in str(info.value)


def test_concurrent_tpe_draws_spread_out_and_the_driver_cost_is_split(tmp_path: Path) -> None:
    """Eight trials drawn while none has finished (eight free slots after the startup trials)
    do not collapse onto TPE's one current optimum: the running ones count as bad draws
    (constant liar). The searcher splits its time into the sampler's and its own."""
    raw = {"prune.rho": {"type": "loguniform", "low": 0.001, "high": 1.0}}
    searcher, _ = _searcher(tmp_path, raw, kind="tpe", n_startup_trials=4)
    for i in range(4):  # a landscape with one peak at rho 0.03
        config = searcher.suggest(f"s{i}")
        value = 1.0 - abs(math.log10(config["prune.rho"]) - math.log10(0.03))
        searcher.on_trial_complete(f"s{i}", {"val_robust_acc": value})
    running = [searcher.suggest(f"c{i}")["prune.rho"] for i in range(8)]
    spread = max(math.log10(r) for r in running) - min(math.log10(r) for r in running)
    assert len(set(running)) == 8 and spread > 0.5, running  # over half a decade of rho
    assert searcher.costs["sampler_s"] > 0 and searcher.costs["bookkeeping_s"] > 0
