"""The study service: launch or resume a study on one driver (``s2ap tune``).

:func:`run_study` is the whole life of a study; each step is one module:

1. validate (:func:`tune.study.file.load_study`, before anything else; nothing is created);
2. check the storage (:mod:`tune.driver.storage`): a new study must not overwrite an old one
   (``--resume``/``--overwrite``), a resumed one must match the study file it started from;
3. start a local Ray runtime or join a cluster, and check that some node can ever run a trial
   (:mod:`tune.driver.ray_runtime`);
4. open the MLflow study run (:class:`tracking.runs.StudyTracker`; MLflow's imports and a new
   store's schema are prepared in a thread while Ray starts, :mod:`tune.driver.warmup`);
5. the dense model, pretrained once per study or given (:mod:`tune.driver.dense`);
6. ``Tuner.fit()``, or ``Tuner.restore(...).fit()`` with ``--resume`` (:mod:`tune.driver.tuner`):
   Optuna proposes, ASHA stops, every trial logs to its own nested MLflow run;
7. read the trials back (:mod:`tune.results.trials`), settle Optuna and MLflow with Tune's record
   (:mod:`tune.driver.reconcile`), evaluate the best trial on the test set
   (:mod:`tune.trial.evaluation`), register its model as ``models:/<study>@best``
   (:mod:`tune.driver.best_model`), write ``summary.json``, record and print it
   (:mod:`tune.results.summary`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from tune.common.console import best_effort, warn
from tune.common.timings import StepTimes, process_start_time
from tune.driver.options import LaunchOptions, StudyOutcome
from tune.driver.preflight import preflight
from tune.driver.storage import check_storage
from tune.study.file import Study, StudyError

if TYPE_CHECKING:
    from tune.driver.ray_runtime import RayRuntime
    from tune.driver.warmup import StoreWarmup
    from tune.results.trials import TrialRow

__all__ = ["LaunchOptions", "StudyOutcome", "run_study"]


@dataclasses.dataclass(frozen=True)
class _Launch:
    """What every step of one launch needs: the study, the flags, where it reports."""

    study: Study
    options: LaunchOptions
    tracking_uri: str
    out: IO[str]
    err: IO[str]
    times: StepTimes = dataclasses.field(default_factory=StepTimes)
    """Seconds of each step, for ``summary.json``'s ``timings`` (:mod:`tune.common.timings`)."""
    runtime: RayRuntime | None = None
    """The Ray runtime, once started (:func:`tune.driver.ray_runtime.ray_runtime`)."""


def run_study(
    study: Study,
    options: LaunchOptions | None = None,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> StudyOutcome:
    """Run (or resume) a validated study to the end; see the module docstring for the steps.

    Raises :class:`StudyError` for problems the user must fix (exit code 2). Returns exit
    code 0 when every trial ended well, 1 when some trial failed, 130 when interrupted.
    """
    from tune.driver.progress import quiet_libraries
    from tune.driver.ray_runtime import ray_runtime
    from tune.driver.warmup import StoreWarmup

    options = options or LaunchOptions()
    # With a checkpoint per epoch, Tune snapshots the experiment often; that is wanted (resume
    # loses nothing) and cheap here, so its "excessive snapshots" warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's per-result loggers: only the JSON one, which the run config names (tune.driver.tuner).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    tracking_uri = study.resolve_tracking_uri(options.tracking_uri)
    launch = _Launch(study, options, tracking_uri, out or sys.stdout, err or sys.stderr)
    # The interpreter's start and the imports before this line.
    launch.times.since("start_to_service", process_start_time())
    with launch.times.step("storage_checks"):
        complete = check_storage(
            study, launch.tracking_uri, resume=options.resume, overwrite=options.overwrite
        )
    if not (options.resume or options.overwrite) and complete:
        return _show_complete(study, launch.out)
    # Everything the trials will need (storage, data, tracking server, cluster), in seconds and
    # before Ray starts (tune.driver.preflight).
    with launch.times.step("preflight"):
        preflight(study, options, launch.tracking_uri, err=launch.err)
    # Ray's, Optuna's and MLflow's per-start INFO lines off unless -v 2 (tune.driver.progress).
    with quiet_libraries(options.verbose):
        # MLflow's imports and a new store's schema, in a thread while Ray starts
        # (tune.driver.warmup).
        warmup = StoreWarmup(launch.tracking_uri)
        try:
            with ray_runtime(options, launch.times) as runtime:
                outcome = _run_tracked(dataclasses.replace(launch, runtime=runtime), warmup)
        finally:
            warmup.discard()
    if outcome.summary.get("timings") is not None:
        _final_timings(launch, outcome.summary)
    return outcome


def _final_timings(launch: _Launch, summary: dict[str, Any]) -> None:
    """The last steps (the study run's records, Ray's shutdown) join ``summary.json``."""
    from tune.results.summary import update_timings

    launch.times.since("total", process_start_time())
    update_timings(launch.study, summary, launch.times)


def _show_complete(study: Study, out: IO[str]) -> StudyOutcome:
    """Idempotent: launching a finished study again shows its results (`make run` twice)."""
    from tune.results.summary import TABLE_ROWS, format_trials_table, print_summary

    summary = json.loads(study.summary_json.read_text())
    print(format_trials_table(study, summary.get("trials", []), limit=TABLE_ROWS), file=out)
    print_summary(study, summary, out)
    print(
        f"\nstudy {study.name!r} is already complete (results above); start it over with "
        "--overwrite, or set another study.name",
        file=out,
    )
    return StudyOutcome(0, summary)


def _run_tracked(launch: _Launch, warmup: StoreWarmup) -> StudyOutcome:
    """Steps 3-7 with the study run open; it ends KILLED on an interrupt, FAILED on a crash."""
    from tune.driver.ray_runtime import check_cluster
    from tune.driver.storage import delete_study

    study, options = launch.study, launch.options
    tracker = None
    try:
        check_cluster(study, options, launch.err)
        # From here on the study's storage is written.
        if options.overwrite:
            delete_study(study, launch.tracking_uri, launch.out)
        study.storage_root.mkdir(parents=True, exist_ok=True)
        with launch.times.step("mlflow_study_run"):
            warmup.install()
            tracker = _study_tracker(study, launch.tracking_uri)
            _start(tracker)
        return _search(launch, tracker)
    except KeyboardInterrupt:
        if tracker is not None and tracker.parent_run_id:
            tracker.finish("KILLED")
        print(
            f"\ninterrupted; continue with `s2ap tune --resume {study.shell_arg}`", file=launch.err
        )
        return StudyOutcome(130, {})
    except BaseException:
        if tracker is not None and tracker.parent_run_id:
            with best_effort("closing the study run"):
                tracker.finish("FAILED")
        raise


def _study_tracker(study: Study, tracking_uri: str) -> Any:
    from tracking.runs import StudyTracker
    from tune.results.trials import study_objectives

    fingerprint = study.fingerprint()
    return StudyTracker(
        tracking_uri,
        study.name,
        # MLflow params are write-once: only what --resume keeps fixed (the fingerprint).
        study_config={key: fingerprint[key] for key in ("study", "search_space")},
        storage_root=study.storage_root,
        study_text=study.text,
        tags={"s2ap.storage_root": str(study.storage_root)},
        objectives=study_objectives(study),
    )


def _start(tracker: Any) -> None:
    from tracking.client import TrackingUnavailableError

    try:
        tracker.start()
    except TrackingUnavailableError as exc:
        raise StudyError(f"MLflow: {exc}") from None


def _record_start(launch: _Launch, tracker: Any, restore: bool) -> None:
    """A new search starts clean (no stale Optuna study); study.json records the launch."""
    from tune.driver.storage import drop_stale_optuna_study, write_study_json

    study, options = launch.study, launch.options
    if not restore:
        drop_stale_optuna_study(study, launch.err)
        if tracker.resumed and not options.resume:
            warn(
                f"MLflow at {launch.tracking_uri} already has a study run named {study.name!r} "
                "(from an earlier study whose folder is gone); the new trials are added to "
                "it. Pass --overwrite to remove the old runs, or set another study.name",
                launch.err,
            )
    if not options.resume or not study.study_json.is_file():
        write_study_json(study, launch.tracking_uri)


def _search(launch: _Launch, tracker: Any) -> StudyOutcome:
    """Steps 5-6: the dense model, then the Tuner's fit; then the conclusion."""
    from ray import tune

    from tune.common.timings import driver_costs
    from tune.driver.dense import prepare_dense
    from tune.driver.tuner import build_tuner, fit, trial_param_space
    from tune.results.trials import read_trial_rows

    study, times = launch.study, launch.times
    restore = launch.options.resume and tune.Tuner.can_restore(str(study.experiment_dir))
    _record_start(launch, tracker, restore)
    # Not on a GPU: the driver would keep its CUDA context (and cached memory) through the
    # search, from the GPU the trials share.
    pretrain_cpus = _driver_cpus(launch) if study.settings.resources.gpu == 0 else None
    with times.step("dense_model"):
        dense = prepare_dense(study, tracker, launch.out, driver_cpus=pretrain_cpus)
    if restore:
        print(
            f"resuming study {study.name} from {study.experiment_dir}", file=launch.out, flush=True
        )
    with times.step("tuner_build"):
        param_space = trial_param_space(study, dense, tracker.trial_context())
        costs = StepTimes()
        tuner = build_tuner(
            study,
            param_space,
            restore=restore,
            verbose=launch.options.verbose,
            out=launch.out,
            costs=costs,
        )
    fit_start = time.time()
    with times.step("fit"):
        results, wall = fit(tuner, costs)
    times.update(driver_costs(costs))
    with times.step("results"):
        rows = read_trial_rows(study, results.experiment_path)
    return _conclude(launch, tracker, rows, wall, fit_start)


def _conclude(
    launch: _Launch, tracker: Any, rows: list[TrialRow], wall: float, fit_start: float
) -> StudyOutcome:
    """Step 7: an interrupted search says how to resume; a finished one is summarised."""
    from tune.driver.reconcile import (
        close_dangling_runs,
        fail_orphan_optuna_trials,
        kill_interrupted_runs,
    )
    from tune.results.summary import TABLE_ROWS, format_trials_table
    from tune.results.trials import count_text, error_text, unfinished

    study, out, err = launch.study, launch.out, launch.err
    print("", file=out)
    # At most TABLE_ROWS rows (the best ones) on a large study; `s2ap status` shows them all.
    print(format_trials_table(study, rows, limit=TABLE_ROWS), file=out)
    if unfinished(rows):
        here = study.shell_arg
        print(f"\nstudy interrupted; continue it with `s2ap tune --resume {here}`", file=err)
        kill_interrupted_runs(tracker, rows)
        tracker.finish("KILLED")
        return StudyOutcome(130, {"counts": count_text(rows), "trials": rows})
    with launch.times.step("results"):
        fail_orphan_optuna_trials(study)
        trial_runs = close_dangling_runs(tracker, rows)
    failed = [r for r in rows if r["state"] == "ERROR"]
    for r in failed:
        print(f"trial {r['trial_id']} failed: {error_text(r['error'])}", file=err)
    summary = _summarise(launch, tracker, rows, wall, fit_start, trial_runs=trial_runs)
    tracker.finish("FAILED" if failed else "FINISHED")
    return StudyOutcome(1 if failed else 0, summary)


def _driver_cpus(launch: _Launch) -> float | None:
    """With a local runtime, what the driver waits on alone (the dense model's pretraining
    before a CPU search, the test evaluation after any) runs in the driver
    (:attr:`~tune.driver.ray_runtime.RayRuntime.driver_cpus`)."""
    return launch.runtime.driver_cpus if launch.runtime is not None else None


def _test_numbers(launch: _Launch, tracker: Any, best: TrialRow | None) -> dict[str, Any] | None:
    """The best trial's test numbers, unless the test evaluation is off."""
    from tune.trial.evaluation import evaluate_best_trial

    options, settings, runtime = launch.options, launch.study.settings, launch.runtime
    run_eval = settings.test_eval.enabled if options.test_eval is None else options.test_eval
    if best is None or not run_eval:
        return None
    driver_cpus = _driver_cpus(launch)
    if driver_cpus is not None and runtime is not None:
        # The search is over and a local runtime is not used again: Ray shuts down beside the
        # driver's evaluation.
        runtime.release()
    with launch.times.step("test_evaluation"):
        return evaluate_best_trial(
            launch.study, dict(best), tracker.trial_context(), launch.out, driver_cpus=driver_cpus
        )


def _summarise(
    launch: _Launch,
    tracker: Any,
    rows: list[TrialRow],
    wall: float,
    fit_start: float,
    *,
    trial_runs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The best trial, its test numbers, ``summary.json`` (with the ``timings`` so far), the
    study run's records (``trial_runs``: the trial runs already read from MLflow), the
    printout."""
    from tune.common.timings import study_timings
    from tune.driver.best_model import register_best_model
    from tune.results.summary import (
        build_summary,
        plot_study,
        print_summary,
        record_summary,
        write_summary,
    )
    from tune.results.trials import best_trial

    study, times = launch.study, launch.times
    best = best_trial(study, rows)
    test = _test_numbers(launch, tracker, best)
    # The study run's plots need only the trial runs: drawn while the best model is registered.
    # Not beside the evaluation, which has every CPU of a local runtime (benchmarks: +2.9 s).
    plots = threading.Thread(
        target=plot_study, args=(tracker, study, trial_runs), name="s2ap-plots", daemon=True
    )
    plots.start()
    with times.step("model_registry"):  # models:/<study>@best (tune.driver.best_model)
        model = register_best_model(study, launch.tracking_uri, best, test, launch.out)
    with times.step("plots_wait"):
        plots.join()
    with times.step("summary"):
        summary = build_summary(
            study,
            tracking_uri=launch.tracking_uri,
            rows=rows,
            fit_wall_s=wall,
            best=best,
            test=test,
        )
        summary["model"] = model
        summary["timings"] = study_timings(times, study.experiment_dir, fit_start)
        write_summary(study, summary)
    with times.step("study_run_records"):
        record_summary(tracker, study, summary)
        print_summary(study, summary, launch.out)
    return summary
