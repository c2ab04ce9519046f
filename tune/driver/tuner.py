"""Running a study's search: the Tuner (new, or restored with ``--resume``) and its fit.

Every trial gets the same ``param_space``: the driver-prepared context
(:mod:`tune.trial.context`) under ``"s2ap"``; the searcher adds the sampled values. Optuna
proposes (:mod:`tune.driver.searcher`), ASHA (:mod:`tune.driver.scheduler`) stops, each trial
checkpoints every ``study.checkpoint.frequency`` epochs and logs to its own nested MLflow run.
"""

from __future__ import annotations

import time
from typing import IO, Any

from tune.common.timings import StepTimes
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


def _tune_config(study: Study, costs: StepTimes | None = None) -> Any:
    """Searcher (baselines first, then Optuna, persisted in its journal; each effective
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
        storage=study.optuna_storage(),
        base=study.base_dict(),
        baselines=baseline_trials(settings.baselines, study.space),
        log_path=str(study.duplicates_log),
        costs=costs,
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


def _output_callbacks(study: Study, verbose: int, out: IO[str] | None) -> list[Any]:
    """The service's console lines (:mod:`tune.driver.progress`), unless ``-q``."""
    from tune.driver.progress import StudyProgress

    return [StudyProgress.for_study(study, out)] if verbose >= 1 else []


def _run_config(study: Study, verbose: int, out: IO[str] | None = None) -> Any:
    """Where the experiment lives, how trials checkpoint, how often a failed trial retries,
    what the console shows (:mod:`tune.driver.progress`).

    Of Tune's per-result loggers only the JSON one (``result.json``, every result of a trial,
    kept whole across a trial's restart: :mod:`tune.driver.result_log`): MLflow is the study's
    record, and the CSV and TensorBoard files cost the driver work on every epoch of every trial
    (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``, set by the service).
    """
    from ray import tune

    from tune.driver.checkpoints import PruneFinishedCheckpoints
    from tune.driver.progress import ray_verbosity
    from tune.driver.result_log import ResultLog

    settings = study.settings
    return tune.RunConfig(
        name=study.name,
        storage_path=str(study.storage_root),
        callbacks=[
            ResultLog(),
            PruneFinishedCheckpoints(settings.checkpoint.num_to_keep),
            *_output_callbacks(study, verbose, out),
        ],
        checkpoint_config=tune.CheckpointConfig(
            # None: Ray deletes nothing, so it never snapshots the experiment per checkpoint
            # (tune.driver.checkpoints prunes a trial's checkpoints once it ends).
            num_to_keep=None,
            checkpoint_frequency=settings.checkpoint.frequency,
            checkpoint_at_end=True,
        ),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        verbose=ray_verbosity(verbose),
    )


def build_tuner(
    study: Study,
    param_space: dict[str, Any],
    *,
    restore: bool,
    verbose: int = 1,
    out: IO[str] | None = None,
    costs: StepTimes | None = None,
) -> Any:
    """A new Tuner, or (``restore``) the study's interrupted one, which keeps its finished
    trials and continues the unfinished and failed ones from their checkpoints. ``verbose``
    is ``s2ap tune -v`` (:mod:`tune.driver.progress`); the service's lines go to ``out``.
    ``costs`` gets the searcher's driver seconds (a new search only: a restored searcher is
    Ray's copy)."""
    from ray import tune

    if restore:
        tuner = tune.Tuner.restore(
            str(study.experiment_dir),
            trainable=_trainable(study),
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
        _restored_output(tuner, study, verbose, out)
        return tuner
    return tune.Tuner(
        _trainable(study),
        param_space=param_space,
        tune_config=_tune_config(study, costs),
        run_config=_run_config(study, verbose, out),
    )


def _restored_output(tuner: Any, study: Study, verbose: int, out: IO[str] | None) -> None:
    """A restored Tuner brings back the run config it was pickled with, console settings
    included, and ``Tuner.restore`` takes no new one: this launch's ``-v`` replaces them
    (through the Tuner's internal object, checked against the pinned Ray by the tests)."""
    from tune.driver.progress import StudyProgress, ray_verbosity

    run_config = tuner._local_tuner.get_run_config()
    kept = [c for c in run_config.callbacks or [] if not isinstance(c, StudyProgress)]
    run_config.callbacks = [*kept, *_output_callbacks(study, verbose, out)]
    run_config.verbose = ray_verbosity(verbose)


def fit(tuner: Any, costs: StepTimes | None = None) -> tuple[Any, float]:
    """Run the search; return the ``ResultGrid`` and the wall time in seconds. ``costs`` gets
    ``cpu_s``: the driver process's CPU seconds during the search (every thread: Tune's loop,
    the searcher, the callbacks)."""
    t0, cpu0 = time.monotonic(), time.process_time()
    results = tuner.fit()
    if costs is not None:
        costs["cpu_s"] = time.process_time() - cpu0
    return results, time.monotonic() - t0
