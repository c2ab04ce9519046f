"""Test-set evaluation of a trial's selected model(s): at a trial's end (``test_eval.every_trial``),
of the best trial after the search, or on demand (``s2ap evaluate``).

After the search, a local runtime evaluates in the driver with all of the runtime's CPUs (the
search is over: nothing else runs on them; the driver already holds torch and the trial code,
where a Ray task would start a worker that imports them again and reloads the dataset); on a
cluster, a Ray task with a trial's resources runs where Ray places it.

The test set is never used for selection: these numbers go to MLflow, ``summary.json`` and the
printout, never to Optuna or ASHA.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from tune.study.file import Study

if TYPE_CHECKING:
    from s2ap.pipeline import Pipeline

__all__ = [
    "evaluate_best_trial",
    "evaluate_overrides",
    "evaluate_pipelines",
    "evaluate_trial_checkpoint",
]


def evaluate_overrides(study: Study) -> dict[str, Any]:
    """``study.test_eval`` fields that replace the run config's ``evaluate`` section."""
    te = study.settings.test_eval
    fields = {"autoattack": te.autoattack, "n_examples": te.n_examples, "pgd_steps": te.pgd_steps}
    return {k: v for k, v in fields.items() if v is not None}


def evaluate_pipelines(
    pipelines: list[Pipeline], evaluate_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Test-set numbers of the pipelines' selected models, averaged over seeds.

    ``evaluate_overrides`` replace fields of the run config's ``evaluate`` section (without
    changing the pipelines' own configs). ``test_examples`` is the number evaluated (at most
    ``evaluate.n_examples``: the test split may be smaller).
    """
    from s2ap.stages import evaluate_test

    per_seed = []
    for p in pipelines:
        cfg = p.cfg
        if evaluate_overrides:
            cfg = cfg.model_copy(
                update={"evaluate": cfg.evaluate.model_copy(update=evaluate_overrides)}
            )
        per_seed.append(evaluate_test(p.selected_model(), p.data, cfg))
    keys = per_seed[0].keys()
    out: dict[str, Any] = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in keys}
    best = [p.best.get("val_robust_acc", -1.0) for p in pipelines]
    out["best_val_robust_acc"] = sum(best) / len(best)
    out["selected_epoch"] = [int(p.best.get("epoch", -1)) for p in pipelines]
    sparsities = [p.masking.sparsity_report()[0] for p in pipelines if p.masking is not None]
    if sparsities:
        out["sparsity"] = sum(sparsities) / len(sparsities)
    return out


def evaluate_trial_checkpoint(
    checkpoint_dir: str,
    *,
    evaluate_overrides: dict[str, Any] | None = None,
    gpu: float = 0.0,
    allow_cpu_fallback: bool = False,
    tracking: dict[str, str] | None = None,
    trial_id: str | None = None,
    params: dict[str, Any] | None = None,
    in_driver: bool = False,
) -> dict[str, Any]:
    """Test-set numbers of a trial's selected model(s) (mean over seeds), logged to its run.

    Runs where Ray places it (as a task with the trials' resources), or in a local runtime's
    driver (``in_driver``, :func:`~tune.trial.device.trial_device`). ``evaluate_overrides``
    replace fields of the run config's ``evaluate`` section. With ``tracking`` the metrics go
    to the trial's MLflow run (found again by its trial id) and the run is tagged best.
    """
    from tune.trial.checkpoint import load_trial_checkpoint
    from tune.trial.device import trial_device
    from tune.trial.recorder import TrialRecorder

    device, info = trial_device(gpu, allow_cpu_fallback, in_driver=in_driver)
    pipelines = load_trial_checkpoint(checkpoint_dir, device=device)
    out = evaluate_pipelines(pipelines, evaluate_overrides)
    out["device"] = info["device_name"]
    if tracking and trial_id:
        recorder = TrialRecorder.open(tracking, trial_id, params or {}, {"s2ap.best": "true"})
        recorder.log_test(out, step=max(p.global_epoch for p in pipelines))
        recorder.finish("completed")
    return out


def _in_ray_task(cpus: float, gpus: float, **kwargs: Any) -> dict[str, Any]:
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(evaluate_trial_checkpoint)
    # Ray's stubs type .remote() by positional parameters only; keywords pass through at run time.
    return ray.get(task.remote(**kwargs))  # type: ignore[call-arg]


def evaluate_best_trial(
    study: Study,
    best: dict[str, Any],
    tracking: dict[str, str] | None,
    out: IO[str],
    *,
    driver_cpus: float | None = None,
) -> dict[str, Any] | None:
    """The best trial's test numbers: recorded by the trial itself (``every_trial``), or
    measured now and logged to the trial's run: in this process with ``driver_cpus`` torch
    threads (a local runtime's driver, whose CPUs the finished search left idle), else
    (``None``) by a Ray task with a trial's resources on the cluster."""
    from tune.common.console import warn
    from tune.trial.checkpoint import read_test_numbers, read_trial_info

    checkpoint = best.get("checkpoint")
    if not checkpoint:
        warn(f"best trial {best['trial_id']} has no checkpoint; skipping the test evaluation", out)
        return None
    recorded = read_test_numbers(checkpoint)
    if recorded is not None:
        return recorded
    overrides = evaluate_overrides(study)
    ev = study.run_config.evaluate.model_copy(update=overrides)
    # The number of examples is known only once the task has the test split (it may hold
    # fewer than evaluate.n_examples); the summary prints the number evaluated.
    print(
        f"test evaluation of trial {best['trial_id']}: PGD-{ev.pgd_steps}"
        f"{', AutoAttack' if ev.autoattack else ''} ...",
        file=out,
        flush=True,
    )
    res = study.settings.resources
    kwargs = {
        "checkpoint_dir": checkpoint,
        "evaluate_overrides": overrides,
        "gpu": res.gpu,
        "allow_cpu_fallback": study.settings.allow_cpu_fallback,
        "tracking": tracking,
        "trial_id": best["trial_id"],
        "params": dict(read_trial_info(checkpoint).get("params") or {}),
    }
    if driver_cpus is not None:
        from tune.trial.device import run_in_driver

        return run_in_driver(driver_cpus, evaluate_trial_checkpoint, **kwargs)
    return _in_ray_task(res.cpu, res.gpu, **kwargs)
