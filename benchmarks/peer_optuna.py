"""The plain-Optuna loop a user could write in an afternoon instead of ``s2ap tune``: the rival
``s2ap tune`` is timed against (``benchmarks/service_overhead.py --peer``).

It mirrors a study file (the quickstart by default) with the project's own method code and
nothing of the service (no Ray, no MLflow, no checkpoints):

- the dense model is pretrained once (the study's ``pretrain`` section), in this process;
- ``study.max_concurrent_trials`` worker processes share one Optuna study in an sqlite RDB
  storage (``sqlite:///WORK/optuna.db``), each running ``study.optimize`` until the study holds
  ``study.num_samples`` trials (``MaxTrialsCallback``);
- the same sampler settings (TPE, seed, startup trials, multivariate, grouped branches: each
  worker seeds it with ``seed + worker``, or both would draw the same points), the same
  conditional space (each arm samples only its own parameters), the baselines first (worker 0
  trains them before its first draw, never pruned and never shown to Optuna, as the service
  does), each effective configuration once (a repeated draw is not trained: it gets its twin's
  value);
- ``SuccessiveHalvingPruner`` at ASHA's rungs (``min_resource`` = grace period, the same
  reduction factor), stepping the project's ``Pipeline`` one epoch at a time on the trial's
  CPU share (``study.resources.cpu`` threads);
- the best completed trial's selected model evaluated on the test set as the service does.

    python benchmarks/peer_optuna.py configs/quickstart.yaml --work DIR

prints one JSON line: wall seconds (whole, and the search alone), epochs trained, the best
trial's value and configuration, its test numbers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(study_file: str, overrides: dict[str, Any]) -> Any:
    from tune.study.file import load_study

    return load_study(study_file, overrides=overrides)


def _sampler(study: Any, worker: int) -> Any:
    import optuna

    s = study.settings.searcher
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    seed = None if s.seed is None else s.seed + worker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=s.multivariate,
            group=s.multivariate and study.space.has_branches,
            **startup,
        )


def _pruner(study: Any) -> Any:
    import optuna

    sch = study.settings.scheduler
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=sch.grace_period, reduction_factor=int(sch.reduction_factor)
    )


def _define(trial: Any, space: Any) -> dict[str, Any]:
    """The trial's values on its branch of the space (the service's define-by-run space)."""
    space.suggest(trial)
    return dict(trial.params)


def _objective(study: Any, dense: dict[str, Any], data: Any, work: Path) -> Any:
    import optuna
    import torch

    from s2ap.pipeline import Pipeline
    from tune.study.baselines import EffectiveKey
    from tune.study.space import build_trial_config

    base = study.base_dict()
    key_of = EffectiveKey(base)
    metric = study.objective.metric

    def objective(trial: optuna.Trial) -> float:
        values = _define(trial, study.space)
        key = key_of(values)
        complete = [optuna.trial.TrialState.COMPLETE]
        for done in trial.study.get_trials(deepcopy=False, states=complete):
            if done.user_attrs.get("key") == key:  # each effective configuration once
                trial.set_user_attr("duplicate_of", done.number)
                return float(done.value)
        trial.set_user_attr("key", key)
        pipeline = Pipeline(
            build_trial_config(base, values), data=data, dense_state=dense, phases=study.phases
        )
        epochs = 0
        value = float("nan")
        while not pipeline.done:
            value = float(pipeline.step()[metric])
            epochs += 1
            trial.report(value, epochs)
            if trial.should_prune():
                trial.set_user_attr("epochs", epochs)
                raise optuna.TrialPruned()
        trial.set_user_attr("epochs", epochs)
        torch.save(pipeline.state_dict(), work / f"trial-{trial.number}.pt")
        return value

    return objective


def _baselines(study: Any, dense: dict[str, Any], data: Any, work: Path) -> None:
    """The study's baselines, trained to the end before worker 0's first draw."""
    import torch

    from s2ap.pipeline import Pipeline
    from tune.study.baselines import baseline_trials
    from tune.study.space import build_trial_config

    metric = study.objective.metric
    for i, config in enumerate(baseline_trials(study.settings.baselines, study.space)):
        name = config.pop("baseline")
        pipeline = Pipeline(
            build_trial_config(study.base_dict(), config),
            data=data,
            dense_state=dense,
            phases=study.phases,
        )
        records = pipeline.run()
        torch.save(pipeline.state_dict(), work / f"baseline-{i}.pt")
        result = {
            "name": name,
            "config": config,
            "value": float(records[-1][metric]),
            "epochs": len(records),
            "file": f"baseline-{i}.pt",
        }
        (work / f"baseline-{i}.json").write_text(json.dumps(result))


def _worker(study_file: str, overrides: dict[str, Any], work: str, worker: int) -> None:
    """One process of the loop: its own data and dense model copy, the shared Optuna study."""
    import optuna
    import torch

    from s2ap.pipeline import load_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _load(study_file, overrides)
    torch.set_num_threads(max(1, int(study.settings.resources.cpu)))
    dense = torch.load(Path(work) / "dense.pt", weights_only=True)
    data = load_data(study.run_config, "cpu")
    ostudy = optuna.load_study(
        study_name=study.name,
        storage=f"sqlite:///{work}/optuna.db",
        sampler=_sampler(study, worker),
        pruner=_pruner(study),
    )
    if worker == 0:
        _baselines(study, dense, data, Path(work))
    searched = study.settings.num_samples - _baseline_count(study)
    stop = optuna.study.MaxTrialsCallback(searched, states=None)
    ostudy.optimize(_objective(study, dense, data, Path(work)), callbacks=[stop])


def _pretrain(study: Any, work: Path) -> None:
    import torch

    from s2ap.pipeline import Pipeline

    pipeline = Pipeline(study.run_config, phases=("pretrain",))
    pipeline.run()
    torch.save(pipeline.dense_state_dict(), work / "dense.pt")


def _baseline_count(study: Any) -> int:
    from tune.study.baselines import baseline_trials

    return len(baseline_trials(study.settings.baselines, study.space))


def _create(study: Any, work: Path) -> None:
    """The shared Optuna study in an sqlite RDB storage."""
    import optuna

    direction = "maximize" if study.objective.mode == "max" else "minimize"
    optuna.create_study(
        study_name=study.name, storage=f"sqlite:///{work}/optuna.db", direction=direction
    )


def _test(study: Any, work: Path) -> dict[str, Any]:
    """The best completed trial's selected model on the test set (the study's test_eval)."""
    import optuna
    import torch

    from s2ap.pipeline import Pipeline
    from tune.study.space import build_trial_config

    ostudy = optuna.load_study(study_name=study.name, storage=f"sqlite:///{work}/optuna.db")
    candidates = [
        {
            "name": f"trial {t.number}",
            "config": t.params,
            "value": t.value,
            "file": f"trial-{t.number}.pt",
            "epochs": t.user_attrs.get("epochs", 0),
        }
        for t in ostudy.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        if "duplicate_of" not in t.user_attrs
    ]
    baselines = [json.loads(p.read_text()) for p in sorted(work.glob("baseline-*.json"))]
    sign = 1 if study.objective.mode == "max" else -1
    best = max([*baselines, *candidates], key=lambda c: sign * c["value"])
    cfg = build_trial_config(study.base_dict(), best["config"])
    te = study.settings.test_eval
    update = {
        k: v
        for k, v in {
            "autoattack": te.autoattack,
            "n_examples": te.n_examples,
            "pgd_steps": te.pgd_steps,
        }.items()
        if v is not None
    }
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=update)})
    dense = torch.load(work / "dense.pt", weights_only=True)
    pipeline = Pipeline(cfg, phases=study.phases, dense_state=dense)
    pipeline.load_state_dict(torch.load(work / best["file"], weights_only=True))
    epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in ostudy.trials)
    epochs += sum(b["epochs"] for b in baselines)
    return {
        "best_trial": best["name"],
        "best_value": best["value"],
        "best_config": best["config"],
        "test": pipeline.evaluate_test(),
        "trials": len(ostudy.trials) + len(baselines),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in ostudy.trials),
        "epochs": epochs,
    }


def run(study_file: str, work: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The whole loop (see the module docstring); its figures."""
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    study = _load(study_file, overrides)
    _pretrain(study, work)
    _create(study, work)
    search_start = time.perf_counter()
    ctx = mp.get_context("spawn")
    slots = study.settings.max_concurrent_trials or 1
    procs = [
        ctx.Process(target=_worker, args=(study_file, overrides, str(work), i))
        for i in range(slots)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a worker exited with {p.exitcode}")
    search = time.perf_counter() - search_start
    out = _test(study, work)
    out.update(wall_s=time.perf_counter() - start, search_s=search, slots=slots)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", nargs="?", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--work", type=Path, required=True, help="a new folder for the loop's files")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    from tune.common.inputs import parse_set

    os.environ.setdefault("TQDM_DISABLE", "1")
    print(json.dumps(run(args.study, args.work, parse_set(args.set)), default=str))


if __name__ == "__main__":
    main()
