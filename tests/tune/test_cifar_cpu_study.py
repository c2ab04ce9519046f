"""The CPU CIFAR-10 study files validate without Ray and run the trials the results page needs."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from s2ap.config import RunConfig
from tune.study import load_study
from tune.study.baselines import baseline_trials
from tune.study.space import build_trial_config

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "configs" / "experiments" / "cifar10-cpu.yaml"
RADIUS = REPO / "configs" / "experiments" / "cifar10-cpu-radius.yaml"
#: What determines the shared dense model (tune's dense cache key hashes these sections).
DENSE_SECTIONS = ("data", "model", "threat", "pretrain", "seed")


def _dense_part(cfg: RunConfig) -> dict:
    dump = cfg.model_dump(mode="json")
    dump["data"].pop("eval_batch_size")
    return {k: dump[k] for k in DENSE_SECTIONS}


def test_cifar_cpu_studies_validate_and_share_the_dense_model() -> None:
    main, radius = load_study(MAIN), load_study(RADIUS)
    data = main.run_config.data
    assert (data.source, main.run_config.model.arch) == ("imagefolder", "vgg6_narrow")
    # data.root is resolved against the study file and stays inside the repository.
    assert Path(data.root or "") == REPO / "data" / "cifar10-jpeg"
    assert radius.storage_root == main.storage_root
    assert REPO in main.storage_root.parents
    assert _dense_part(main.run_config) == _dense_part(radius.run_config)
    assert radius.phases == ("prune",) and radius.space.grid_size() == 4
    # The random control runs at S2AP's radius.
    random_rhos = {p.get("prune.rho") for p in main.space.grid_points() if "prune.rho" in p}
    assert random_rhos == {main.run_config.prune.rho}


def test_cifar_cpu_trials_are_five_arms_by_three_seeds() -> None:
    study = load_study(MAIN)
    base = study.base_dict()
    points = [
        {k: v for k, v in t.items() if k != "baseline"}
        for t in baseline_trials(study.settings.baselines, study.space)
    ] + study.space.grid_points()
    assert len(points) == study.settings.num_samples == 15
    arms: Counter[tuple[str, str]] = Counter()
    seeds: dict[tuple[str, str], set[int]] = {}
    for point in points:
        cfg = build_trial_config(base, point)
        assert cfg.prune.sparsity == 0.9
        key = (cfg.prune.host, cfg.prune.perturbation)
        arms[key] += 1
        seeds.setdefault(key, set()).add(cfg.seed)
    expected = {("hydra", "none"), ("hydra", "score"), ("hydra", "random")}
    expected |= {("harp", "none"), ("harp", "score")}
    assert set(arms) == expected and set(arms.values()) == {3}
    assert all(s == {0, 1, 2} for s in seeds.values())


def test_validating_the_study_files_never_imports_ray() -> None:
    code = (
        "import sys\n"
        "from tune.study import load_study\n"
        f"load_study({str(MAIN)!r}); load_study({str(RADIUS)!r})\n"
        "assert 'ray' not in sys.modules, 'validating a study imported Ray'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
