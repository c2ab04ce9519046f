"""Running a study's search: the Tuner (new, or restored with ``--resume``) and its fit.

Every trial gets the same ``param_space``: the driver-prepared context
(:mod:`tune.trial.context`) under ``"s2ap"``; the searcher adds the sampled values. Optuna
proposes (:mod:`tune.driver.searcher`), ASHA (:mod:`tune.driver.scheduler`) stops, each trial
checkpoints every ``study.checkpoint.frequency`` epochs and logs to its own nested MLflow run.
"""

from __future__ import annotations

import time
from typing import Any

from tune.driver.dense import DenseModel
from tune.study.file import Study
from tune.trial.context import CONTEXT_KEY, make_trial_context
from tune.trial.evaluation import evaluate_overrides

__all__ = ["build_tuner", "fit", "trial_param_space"]


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def trial_param_space(
    study: Study, dense: DenseModel, tracking: dict[str, str] | None
) -> dict[str, Any]:
    """What every trial's config holds besides the sampled values (the trial context)."""
    settings = study.settings
    base = study.base_dict()
    if dense.path:
        base["dense"]["checkpoint"] = dense.path
    context = make_trial_context(
        study_name=study.name,
        base=base,
        phases=study.phases,
        seeds=settings.seeds,
        dense_path=dense.path,
        dense_hash=dense.hash,
        tracking=tracking,
        gpu=settings.resources.gpu,
        allow_cpu_fallback=settings.allow_cpu_fallback,
        test_eval=evaluate_overrides(study) if settings.test_eval.every_trial else None,
    )
    return {CONTEXT_KEY: context}


def _trainable(study: Study) -> Any:
    from ray import tune

    from tune.trial.trainable import S2APTrainable

    res = study.settings.resources
    return tune.with_resources(S2APTrainable, {"cpu": res.cpu, "gpu": res.gpu})


def _tune_config(study: Study) -> Any:
    """Searcher (baselines first, then Optuna, persisted in optuna.db; each effective
    configuration once), scheduler (ASHA or FIFO; baselines never stopped), concurrency."""
    from ray import tune

    from tune.driver.scheduler import make_scheduler
    from tune.driver.searcher import make_searcher
    from tune.study.baselines import baseline_trials

    settings = study.settings
    searcher = make_searcher(
        settings.searcher,
        settings.objectives,
        study.space,
        study_name=study.name,
        storage_url=study.optuna_url,
        base=study.base_dict(),
        baselines=baseline_trials(settings.baselines, study.space),
        log_path=str(study.duplicates_log),
    )
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=make_scheduler(settings.scheduler, study.objective, study.epochs_per_trial),
        num_samples=settings.num_samples,
        max_concurrent_trials=settings.max_concurrent_trials,
        reuse_actors=settings.reuse_actors,
        time_budget_s=settings.time_budget_s,
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )


def _run_config(study: Study, verbose: int) -> Any:
    """Where the experiment lives, how trials checkpoint, how often a failed trial retries.

    Of Tune's per-result loggers only the JSON one (``result.json``, every result of a trial):
    MLflow is the study's record, and the CSV and TensorBoard files cost the driver work on
    every epoch of every trial (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``, set by the service).
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    settings = study.settings
    return tune.RunConfig(
        name=study.name,
        storage_path=str(study.storage_root),
        callbacks=[JsonLoggerCallback()],
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=settings.checkpoint.num_to_keep,
            checkpoint_frequency=settings.checkpoint.frequency,
            checkpoint_at_end=True,
        ),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        verbose=verbose,
    )


def build_tuner(
    study: Study, param_space: dict[str, Any], *, restore: bool, verbose: int = 1
) -> Any:
    """A new Tuner, or (``restore``) the study's interrupted one, which keeps its finished
    trials and continues the unfinished and failed ones from their checkpoints."""
    from ray import tune

    if restore:
        return tune.Tuner.restore(
            str(study.experiment_dir),
            trainable=_trainable(study),
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
    return tune.Tuner(
        _trainable(study),
        param_space=param_space,
        tune_config=_tune_config(study),
        run_config=_run_config(study, verbose),
    )


def fit(tuner: Any) -> tuple[Any, float]:
    """Run the search; return the ``ResultGrid`` and the wall time in seconds."""
    t0 = time.monotonic()
    results = tuner.fit()
    return results, time.monotonic() - t0
