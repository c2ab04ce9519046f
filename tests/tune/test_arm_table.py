"""A new arm is one table entry: a toy arm registered in a temporary copy of the arm table is
accepted by the config, trained by the S2AP optimizer, named in method names, run names, mask
headers and the results page, and its ignored fields are refused in a search space and left out
of the dedup key and the MLflow params, with nothing else edited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from s2ap import arms
from s2ap.arms import Arm, register_arm
from s2ap.config import ConfigError, RunConfig
from s2ap.perturbation import S2AP
from s2ap.registry import Registry
from tune.study.baselines import EffectiveKey
from tune.study.file import StudyError, load_study
from tune.trial.context import TrialContext
from tune.trial.recorder import trial_params, trial_run_name

BASE = {"data": {"source": "synthetic"}, "model": {"arch": "mlp"}}
CALLS: list[int] = []


def _sign_direction(opt: S2AP, closure: object) -> list[torch.Tensor]:
    """The toy arm's perturbation: the sign of the gradient, scaled to the radius."""
    CALLS.append(1)
    return [opt.rho * s.detach().abs().mean() * s.grad.sign() for s in opt.scores]


@pytest.fixture
def toy_arm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Arm]:
    registry: Registry[Arm] = Registry("perturbation")
    for name in arms.ARMS.in_order():
        registry.register(name)(arms.ARMS.get(name))
    monkeypatch.setattr(arms, "ARMS", registry)  # the real table is untouched
    yield register_arm(
        Arm(
            name="sign",
            label="sign",
            slug="sign-perturbation",
            direction=_sign_direction,
            reads=("rho", "radius", "warmup_epochs"),
            why_ignored="one signed step, no ascent steps",
        )
    )


def _cfg(**prune: object) -> RunConfig:
    return RunConfig.model_validate({**BASE, "prune": prune})


def test_the_real_table_does_not_know_the_toy_arm() -> None:
    with pytest.raises(ValueError, match="unknown perturbation 'sign'"):
        _cfg(perturbation="sign")


def test_the_config_takes_the_new_arm_and_derives_what_it_ignores(toy_arm: Arm) -> None:
    cfg = _cfg(perturbation="sign", host="harp")
    ignored = arms.ignored_fields(cfg)
    assert ignored["prune.ascent_steps"] == (
        "prune.perturbation is sign: one signed step, no ascent steps"
    )
    assert "prune.rho" not in ignored and "prune.harp.gamma" not in ignored
    effective = arms.effective_config(cfg)
    assert "prune.ascent_steps" not in effective and effective["prune.rho"] == cfg.prune.rho


def test_names_and_the_mask_header_come_from_the_entry(toy_arm: Arm) -> None:
    assert arms.method_name("hydra", "sign") == "sign-perturbation"
    assert arms.method_name("harp", "sign") == "harp+sign-perturbation"
    assert arms.method_label("harp", "sign") == "HARP+sign"
    cfg = _cfg(perturbation="sign", rho=0.2)
    header = arms.mask_header(cfg)
    assert header["method"]["perturbation"] == "sign"
    assert "ascent_steps" not in header["method"] and header["method"]["rho"] == 0.2
    assert arms.method_text(header) == "sign (rho 0.2)"
    assert trial_run_name(cfg, "abc_00001") == "sign-perturbation-abc_00001"


def test_the_s2ap_optimizer_takes_the_new_arms_direction(toy_arm: Arm) -> None:
    scores = [torch.nn.Parameter(torch.randn(5))]
    opt = S2AP(torch.optim.SGD(scores, lr=0.1), scores, rho=0.1, perturbation="sign")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (scores[0] ** 2).sum()
        loss.backward()
        return loss

    CALLS.clear()
    opt.step(closure)
    assert CALLS == [1] and opt.perturbing


def test_the_study_refuses_its_ignored_fields_and_dedups_on_the_rest(
    toy_arm: Arm, tmp_path: Path
) -> None:
    base = {**BASE, "prune": {"warmup_epochs": 1, "epochs": 2}}
    space = {
        "prune.perturbation": {
            "type": "choice",
            "branches": {"sign": {"prune.ascent_steps": {"type": "int", "low": 1, "high": 3}}},
        }
    }
    with pytest.raises(StudyError, match=r"prune\.ascent_steps.*sign"):
        load_study(raw={**base, "search_space": space}, folder=tmp_path)
    space["prune.perturbation"]["branches"]["sign"] = {
        "prune.rho": {"type": "loguniform", "low": 0.01, "high": 0.5}
    }
    study = load_study(raw={**base, "search_space": space}, folder=tmp_path)
    key = EffectiveKey(study.base_dict())
    one = {"prune.perturbation": "sign", "prune.rho": 0.1}
    assert key(one) == key({**one, "prune.ascent_steps": 3}) != key({**one, "prune.rho": 0.2})
    ctx = TrialContext(study="s", base=study.base_dict(), phases=("prune",))
    params = trial_params(_cfg(perturbation="sign"), ctx)
    assert "prune.ascent_steps" not in params and "prune.rho" in params


def test_the_results_page_labels_the_new_arm(toy_arm: Arm) -> None:
    from tracking.report.trials import TrialRun

    run = TrialRun(
        study="s",
        run_id="r",
        trial_id="t",
        metrics={},
        params={"prune.perturbation": "sign", "prune.host": "harp", "prune.rho": "0.1"},
    )
    assert run.arm == "HARP+sign" and run.rho == 0.1 and run.ascent_steps is None


def test_unknown_arm_in_a_config_names_the_arms(toy_arm: Arm) -> None:
    with pytest.raises(ValueError, match="none, random, score, sign"):
        _cfg(perturbation="signn")
    assert issubclass(StudyError, ConfigError)
