"""The dense model every trial of a study prunes: given (``dense.checkpoint``), or pretrained
once per study: by a Ray task with a trial's resources, or, for a CPU study on a local runtime,
in the driver with all of its CPUs (the search has not started, so they are idle; no worker to
start: ``benchmarks/service_overhead.py --peer``, 9.3 -> 5.3 s on the quickstart).

A pretrained model is cached as ``<storage_root>/dense/<hash>.pt`` (+ ``.json`` with the
per-epoch records) under the hash of what determines it: data + model + threat + pretrain +
seed. Studies that share those share the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, NamedTuple

from tune.study.file import Study

__all__ = ["DenseModel", "dense_cache_key", "prepare_dense", "pretrain_dense"]

#: Pretraining records logged to the study run (``pretrain/<key>``).
_LOGGED = ("val_clean_acc", "val_robust_acc", "train_robust_loss")


class DenseModel(NamedTuple):
    """The dense model trials start from: absolute path and content hash (both ``None``:
    trials prune a randomly initialised network)."""

    path: str | None
    hash: str | None


def _determining_config(study: Study, *, with_eval_batch: bool) -> dict[str, Any]:
    cfg = study.run_config
    exclude = None if with_eval_batch else {"eval_batch_size"}
    return {
        "data": cfg.data.model_dump(mode="json", exclude=exclude),
        "model": cfg.model.model_dump(mode="json"),
        "threat": cfg.threat.model_dump(mode="json"),
        "pretrain": cfg.pretrain.model_dump(mode="json"),
        "seed": cfg.seed,
    }


def dense_cache_key(study: Study) -> str:
    """Hash of what determines the pretrained dense model: data+model+threat+pretrain+seed."""
    from s2ap.config import config_hash

    return config_hash(_determining_config(study, with_eval_batch=False))


def prepare_dense(
    study: Study, tracker: Any, out: IO[str], *, driver_cpus: float | None = None
) -> DenseModel:
    """The study's dense model: ``dense.checkpoint``, the cached one, or pretrained now (in
    this process with ``driver_cpus`` torch threads, else (``None``) by a Ray task).

    A new study run (``tracker``, not resumed) gets the pretraining curves as
    ``pretrain/*`` metrics.
    """
    from tracking.artifacts import file_sha256

    cfg = study.run_config
    if cfg.dense.checkpoint:
        return DenseModel(cfg.dense.checkpoint, file_sha256(cfg.dense.checkpoint)[:16])
    if cfg.pretrain.epochs <= 0:
        print(
            "note: no dense.checkpoint and pretrain.epochs is 0: trials prune a randomly "
            "initialised network",
            file=out,
        )
        return DenseModel(None, None)
    key = dense_cache_key(study)
    path = study.dense_dir / f"{key}.pt"
    if path.is_file():
        print(f"dense model: {path} (cached; pretrain block hash {key})", file=out, flush=True)
    else:
        _pretrain_once(study, key, path, out, driver_cpus)
    if tracker is not None and not tracker.resumed:
        _log_pretraining(tracker, path.with_suffix(".json"))
    return DenseModel(str(path), file_sha256(path)[:16])


def _pretrain_once(
    study: Study, key: str, path: Path, out: IO[str], driver_cpus: float | None
) -> None:
    """Pretrain here with ``driver_cpus`` threads, or in a Ray task with a trial's resources;
    write the model and its records."""
    cfg = study.run_config
    res = study.settings.resources
    print(
        f"dense model: pretraining {cfg.pretrain.epochs} epochs once for the study (-> {path})",
        file=out,
        flush=True,
    )
    args = (cfg.model_dump(mode="json"), str(path))
    kwargs: dict[str, Any] = {
        "gpu": res.gpu,
        "allow_cpu_fallback": study.settings.allow_cpu_fallback,
    }
    if driver_cpus is not None:
        from tune.trial.device import run_in_driver

        records = run_in_driver(driver_cpus, pretrain_dense, *args, **kwargs)
    else:
        import ray

        task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(pretrain_dense)
        records = ray.get(task.remote(*args, **kwargs))
    meta = {
        "key": key,
        "config": _determining_config(study, with_eval_batch=True),
        "records": records,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    last = records[-1] if records else {}
    print(
        f"dense model: val clean {last.get('val_clean_acc', float('nan')):.3f}, "
        f"val robust {last.get('val_robust_acc', float('nan')):.3f}",
        file=out,
        flush=True,
    )


def _log_pretraining(tracker: Any, meta_path: Path) -> None:
    if not meta_path.is_file():
        return
    for r in json.loads(meta_path.read_text()).get("records", []):
        metrics = {f"pretrain/{k}": v for k, v in r.items() if k in _LOGGED}
        tracker.log_metrics(metrics, step=int(r.get("epoch", 0)))


def pretrain_dense(
    base: dict[str, Any],
    out_path: str,
    *,
    gpu: float = 0.0,
    allow_cpu_fallback: bool = False,
    in_driver: bool = False,
) -> list[dict[str, Any]]:
    """Run the ``pretrain`` block of ``base`` and save the dense state dict at ``out_path``.

    Runs in a Ray task or a local runtime's driver. Written atomically
    (:func:`tune.common.files.save_torch`), so a crash never leaves a partial dense model that
    later studies would load. Returns the per-epoch records.
    """
    from s2ap.config import RunConfig
    from s2ap.pipeline import Pipeline
    from tune.common.files import save_torch
    from tune.trial.device import trial_device

    cfg = RunConfig.model_validate(base)
    device, _ = trial_device(gpu, allow_cpu_fallback, in_driver=in_driver)
    pipeline = Pipeline(cfg, device=device, phases=("pretrain",))
    records = pipeline.run()
    state = {k: v.detach().cpu() for k, v in pipeline.model.state_dict().items()}
    save_torch(state, out_path)
    return records
