"""The Ray Tune Trainable of a study: one Tune iteration = one epoch of a Pipeline.

``S2APTrainable`` (class API) runs the prune epochs, then the finetune epochs (``trainable:
pipeline``), or the prune epochs only (``trainable: prune``), validating after every epoch, and
reports per step ``val_robust_acc``, ``val_clean_acc``, ``best_val_robust_acc``, ``mask_hamming``,
``sharpness``, ``sparsity``, ``epoch_time_s``, ``images_per_s``, ``phase``, ``epoch``, ``done``.
Prune-phase metrics (``mask_hamming``, ``sharpness``) keep their last prune-epoch value in finetune
results, so they can be objectives of a multi-objective study; MLflow gets them only for the
epochs that measured them.

With ``study.seeds`` a trial runs one pipeline per seed in lockstep and reports the mean over
seeds (plus ``*_std`` and ``mask_hamming_seeds``, the mean pairwise Hamming distance between the
seeds' masks: the paper's across-seed stability).

Trial config = the sampled values under their dotted paths (``{"prune.rho": 0.03, ...}``) plus
``config["s2ap"]``: plain data the driver prepared (the base run config, the dense model's path,
the tracking context, the GPU share), see :func:`make_trial_context`.

Per worker process (Ray reuses actors, ``reuse_actors: true``): datasets are cached by their data
config and device, dense state dicts by path; both are loaded once per process, not once per
trial. On a multi-node cluster every node loads its own copy: ``data.root`` must exist on every
node (or ``data.download: true``) and the storage root (dense models, checkpoints, the MLflow
outbox) must be shared storage mounted at the same path on every node.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.result import RESULT_DUPLICATE

from s2ap.config import ConfigError, RunConfig
from s2ap.data import DatasetSplits
from s2ap.masking import get_masking
from s2ap.metrics import mask_hamming
from s2ap.pipeline import Pipeline, load_data
from tune.search import build_trial_config

__all__ = [
    "CONTEXT_KEY",
    "PRUNE_METRICS",
    "S2APTrainable",
    "TrialConfigError",
    "TrialDeviceError",
    "cached_data",
    "cached_dense",
    "evaluate_trial_checkpoint",
    "load_trial_checkpoint",
    "make_trial_context",
    "pretrain_dense",
    "trial_device",
]

_log = logging.getLogger(__name__)

#: Key of the driver-prepared context in a trial's config.
CONTEXT_KEY = "s2ap"
#: Metrics only the prune phase measures (carried forward into finetune results).
PRUNE_METRICS = ("mask_hamming", "sharpness", "perturbing", "hessian_top_eig")
_STATE_FILE = "state.pt"
_TRIAL_FILE = "trial.json"
_MASK_FILE = "mask.s2mask"
_TEST_FILE = "test.json"


class TrialConfigError(ConfigError):
    """A sampled configuration is not a valid run config (names the field)."""


class TrialDeviceError(RuntimeError):
    """A trial was given a GPU by Ray but cannot use it."""


# --------------------------------------------------------------------------------------------
# Context, device, per-process caches


def make_trial_context(
    *,
    study_name: str,
    base: dict[str, Any],
    phases: tuple[str, ...],
    seeds: list[int] | None,
    dense_path: str | None = None,
    dense_hash: str | None = None,
    tracking: dict[str, str] | None = None,
    gpu: float = 0.0,
    allow_cpu_fallback: bool = False,
    search_keys: list[str] | None = None,
    test_eval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plain-data context every trial of a study receives (``config["s2ap"]``).

    ``test_eval``: when given (``evaluate`` overrides, possibly empty), every trial that
    completes evaluates its selected model on the test set and logs ``test_*`` to MLflow.
    """
    return {
        "study": study_name,
        "base": base,
        "phases": list(phases),
        "seeds": list(seeds) if seeds else None,
        "dense_path": dense_path,
        "dense_hash": dense_hash,
        "tracking": tracking,
        "gpu": float(gpu),
        "allow_cpu_fallback": bool(allow_cpu_fallback),
        "search_keys": list(search_keys or []),
        "test_eval": test_eval,
    }


def trial_device(
    gpu_request: float, allow_cpu_fallback: bool
) -> tuple[torch.device, dict[str, str]]:
    """The device of a trial: CUDA iff Ray assigned it GPUs; fail loudly if torch cannot see them.

    Ray sets ``CUDA_VISIBLE_DEVICES`` of the trial's process to its GPUs, so ``cuda:0`` is the
    first assigned GPU. A fractional request caps this process's CUDA memory to its share.
    Returns the device and a description (``device``, ``gpu_ids``, ``cuda_visible_devices``)
    for the trial's results and tags.
    """
    import ray

    # ray.get_gpu_ids() would start a Ray runtime when called outside one (a local test).
    gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    info = {"gpu_ids": ",".join(gpu_ids), "cuda_visible_devices": visible}
    if gpu_request <= 0 and not gpu_ids:
        info["device"] = "cpu"
        info["device_name"] = "cpu"
        return torch.device("cpu"), info
    if not torch.cuda.is_available():
        message = (
            f"this trial asked for {gpu_request:g} GPU and Ray assigned GPU id(s) "
            f"[{info['gpu_ids']}] (CUDA_VISIBLE_DEVICES={visible!r}) on {socket.gethostname()}, "
            f"but torch {torch.__version__} sees no CUDA device (torch.version.cuda="
            f"{torch.version.cuda}). Fix the node's NVIDIA driver/CUDA set-up or the torch build; "
            "to train on the CPU anyway set study.allow_cpu_fallback: true, or ask for no GPU "
            "with study.resources.gpu: 0"
        )
        if not allow_cpu_fallback:
            raise TrialDeviceError(message)
        _log.warning("%s -- falling back to the CPU (study.allow_cpu_fallback)", message)
        info["device"] = "cpu"
        info["device_name"] = "cpu (GPU fallback)"
        return torch.device("cpu"), info
    device = torch.device("cuda", 0)
    if 0 < gpu_request < 1:
        torch.cuda.set_per_process_memory_fraction(float(gpu_request), device)
    info["device"] = str(device)
    info["device_name"] = torch.cuda.get_device_name(device)
    return device, info


_DATA_CACHE: dict[tuple[str, str], DatasetSplits] = {}
_DENSE_CACHE: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}


def _data_key(cfg: RunConfig) -> str:
    from s2ap.config import config_hash

    d = cfg.data.model_dump(
        mode="json",
        include={"source", "root", "download", "val_size", "split_seed", "in_memory", "options"},
    )
    return config_hash(d)


def cached_data(cfg: RunConfig, device: torch.device) -> DatasetSplits:
    """The dataset of ``cfg`` on ``device``, loaded once per worker process."""
    key = (_data_key(cfg), str(device))
    if key not in _DATA_CACHE:
        cpu_key = (key[0], "cpu")
        if cpu_key not in _DATA_CACHE:
            _DATA_CACHE[cpu_key] = load_data(cfg, "cpu")
        if key != cpu_key:
            _DATA_CACHE[key] = _DATA_CACHE[cpu_key].to(device)
    return _DATA_CACHE[key]


def cached_dense(path: str | None) -> dict[str, torch.Tensor] | None:
    """The dense state dict at ``path`` (torch.save or safetensors), loaded once per process."""
    if not path:
        return None
    from tracking.artifacts import load_state_dict

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _DENSE_CACHE:
        _DENSE_CACHE.clear()  # one dense model per study; do not pile them up
        _DENSE_CACHE[key] = load_state_dict(path)
    return _DENSE_CACHE[key]


def _method(cfg: RunConfig) -> str:
    return {"score": "s2ap", "none": "hydra", "random": "hydra+random-perturbation"}[
        cfg.prune.perturbation
    ]


def _versions() -> dict[str, str]:
    import optuna
    import ray

    return {"s2ap.ray_version": ray.__version__, "s2ap.optuna_version": optuna.__version__}


# --------------------------------------------------------------------------------------------
# Merging the records of several seeds


def _merge(records: list[dict[str, Any]], pipelines: list[Pipeline]) -> dict[str, Any]:
    if len(records) == 1:
        out = dict(records[0])
    else:
        out = {}
        keys = dict.fromkeys(k for r in records for k in r)
        for key in keys:
            values = [r[key] for r in records if key in r]
            if isinstance(values[0], bool) or not isinstance(values[0], int | float):
                out[key] = values[0] if key != "done" else all(values)
            else:
                out[key] = float(sum(values)) / len(values)
        for key in ("val_robust_acc", "val_clean_acc"):
            vals = torch.tensor([float(r[key]) for r in records if key in r])
            if len(vals) > 1:
                out[f"{key}_std"] = float(vals.std(unbiased=False))
        masked = [p for p in pipelines if p.masking is not None]
        if len(masked) > 1:
            masks = [p.masks() for p in masked]
            pairs = [mask_hamming(a, b)[0] for a, b in itertools.combinations(masks, 2)]
            out["mask_hamming_seeds"] = sum(pairs) / len(pairs)
    best = [p.best.get("val_robust_acc", -1.0) for p in pipelines]
    if all(b >= 0 for b in best):
        out["best_val_robust_acc"] = sum(best) / len(best)
    return out


def _selected(pipeline: Pipeline) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(masks, plain-architecture state dict) of the model selected on validation."""
    model = pipeline.selected_model()
    masking = get_masking(model)
    if masking is None:
        raise RuntimeError("the selected model has no mask (the prune phase did not run)")
    masks = masking.masks()
    dense = {k: v.detach().cpu() for k, v in masking.to_dense().state_dict().items()}
    return masks, dense


# --------------------------------------------------------------------------------------------
# The Trainable


class S2APTrainable(tune.Trainable):
    """Ray Tune class Trainable: one :meth:`step` = one epoch of every seed's :class:`Pipeline`.

    Checkpoints (``state.pt``) hold every pipeline's state dict (model, scores, masks,
    optimizer, schedule, data order, RNG, the model selected so far) and restore a trial
    exactly. ``reset_config`` rebuilds the pipelines and reopens the MLflow run for the new
    trial, so Ray can reuse the actor (and its cached dataset and dense model).
    """

    def setup(self, config: dict[str, Any]) -> None:
        self._trial_start_time = time.time()
        # One INFO line per epoch checkpoint, forwarded to the driver: noise in a study's output.
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        self._build(config)

    # --- construction -------------------------------------------------------------------------
    def _build(self, config: dict[str, Any]) -> None:
        ctx = config.get(CONTEXT_KEY)
        if not isinstance(ctx, dict):
            raise TrialConfigError(
                f"trial config has no {CONTEXT_KEY!r} context; start trials through "
                "tune.service (s2ap tune) or pass make_trial_context(...) under that key"
            )
        self._ctx = ctx
        self._sampled = {k: v for k, v in config.items() if k != CONTEXT_KEY}
        self._tracker: Any = None
        self._finished = False
        self._last_prune: dict[str, Any] = {}
        self._logged_prune_end = False
        self._test: dict[str, Any] | None = None
        self.pipelines: list[Pipeline] = []
        try:
            self.cfg = build_trial_config(ctx["base"], self._sampled)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in self._sampled.items())
            raise TrialConfigError(f"sampled configuration ({shown}) is invalid:\n{exc}") from None
        # Replicates (study.seeds), else the trial's own seed (the run config's, or sampled).
        self._seeds: list[int] = list(ctx.get("seeds") or [self.cfg.seed])
        self._open_tracker()
        try:
            # After the run exists, so that a trial failing here shows in MLflow with the reason.
            self._device, self._device_info = trial_device(ctx["gpu"], ctx["allow_cpu_fallback"])
            if self._tracker is not None:
                from tracking.runs import TAG_DEVICE

                self._tracker.set_tags(
                    {
                        TAG_DEVICE: self._device_info["device_name"],
                        "s2ap.gpu_ids": self._device_info["gpu_ids"],
                    }
                )
            data = cached_data(self.cfg, self._device)
            dense = cached_dense(ctx.get("dense_path"))
            phases = tuple(ctx["phases"])
            self.pipelines = [
                Pipeline(
                    self.cfg.model_copy(update={"seed": seed}),
                    data=data,
                    dense_state=dense,
                    device=self._device,
                    phases=phases,
                )
                for seed in self._seeds
            ]
        except BaseException as exc:
            self._finish("FAILED", error=exc)
            raise

    def _params(self) -> dict[str, Any]:
        return {
            **self.cfg.model_dump(mode="json"),
            "study": {
                "trainable": "prune" if list(self._ctx["phases"]) == ["prune"] else "pipeline",
                "seeds": self._ctx.get("seeds"),
            },
        }

    def _open_tracker(self) -> None:
        tracking = self._ctx.get("tracking")
        if not tracking:
            return
        from tracking.runs import TrialTracker

        tags = {
            **_versions(),
            "s2ap.hostname": socket.gethostname(),
            "s2ap.trial_name": self.trial_name,
            "s2ap.searched": json.dumps(self._sampled, sort_keys=True),
            "s2ap.method": _method(self.cfg),
            "s2ap.dense_hash": self._ctx.get("dense_hash") or "",
        }
        self._tracker = TrialTracker.open(
            tracking["tracking_uri"],
            tracking["experiment_name"],
            tracking["parent_run_id"],
            self.trial_id,
            self._params(),
            tags,
            storage_root=tracking.get("storage_root"),
        )

    def _finish(self, status: str, error: BaseException | None = None) -> None:
        if self._tracker is None or self._finished:
            return
        self._finished = True
        try:
            if error is not None:
                self._tracker.set_tags({"s2ap.error": f"{type(error).__name__}: {error}"[:4000]})
            outcome = {"FINISHED": "completed", "KILLED": "stopped_early", "FAILED": "error"}
            self._tracker.set_tags({"s2ap.outcome": outcome[status]})
            self._tracker.finish(status)
        except Exception:  # tracking must never hide the trial's own outcome
            _log.exception("could not finish the MLflow run of trial %s", self.trial_id)

    # --- Tune API -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return bool(self.pipelines) and all(p.done for p in self.pipelines)

    def step(self) -> dict[str, Any]:
        if self.done:
            # Restored from the final checkpoint of a finished trial (its end was not in the
            # experiment snapshot of a killed driver): nothing left to run; its run is closed.
            self._finish("FINISHED")
            return {RESULT_DUPLICATE: True, "done": True}
        try:
            return self._step()
        except BaseException as exc:
            self._finish("FAILED", error=exc)
            raise

    def _step(self) -> dict[str, Any]:
        in_prune = [p.phase == "prune" for p in self.pipelines]
        records = [p.step() for p in self.pipelines]
        result = _merge(records, self.pipelines)
        logged = {k: v for k, v in result.items() if k != "done"}
        if result.get("phase") == "prune":
            self._last_prune = {k: result[k] for k in PRUNE_METRICS if k in result}
        else:
            for key, value in self._last_prune.items():
                result.setdefault(key, value)
        result.update(self._device_info)
        result["trial_start_time"] = self._trial_start_time
        result["result_time"] = time.time()
        if self._tracker is not None:
            self._tracker.log_metrics(logged, step=int(result["epoch"]))
        prune_ended = any(was and p.phase != "prune" for was, p in zip(in_prune, self.pipelines))
        if prune_ended and not self._logged_prune_end:
            self._logged_prune_end = True
            self._log_masks("prune-end", current=True)
        if self.done:
            result["done"] = True
            self._log_masks("final", current=False, weights=True)
            if self._ctx.get("test_eval") is not None:
                # MLflow only: Tune (Optuna, ASHA) never sees test numbers.
                self._test = evaluate_pipelines(self.pipelines, self._ctx["test_eval"])
                if self._tracker is not None:
                    self._tracker.log_metrics(_test_metrics(self._test), step=int(result["epoch"]))
            self._finish("FINISHED")
        return result

    def _mask_header(self, seed: int, name: str, epoch: int) -> dict[str, Any]:
        """The header ``s2ap run`` writes (architecture, dataset, method, config and dense
        hashes), plus where in the study the mask comes from."""
        from tune.run import mask_header

        header = mask_header(
            self.cfg.model_copy(update={"seed": seed}), self._ctx.get("dense_hash")
        )
        header.update({"seed": seed, "epoch": epoch, "mask": name, "searched": self._sampled})
        return header

    def _log_masks(self, name: str, *, current: bool, weights: bool = False) -> None:
        if self._tracker is None:
            return
        for i, (seed, pipeline) in enumerate(zip(self._seeds, self.pipelines)):
            suffix = "" if i == 0 else f"-seed{seed}"
            if current:
                masks, epoch = pipeline.masks(), pipeline.global_epoch
                dense = None
            else:
                masks, dense = _selected(pipeline)
                epoch = int(pipeline.best.get("epoch", pipeline.global_epoch))
            self._tracker.log_masks(masks, self._mask_header(seed, name, epoch), f"{name}{suffix}")
            if weights and dense is not None:
                self._tracker.log_state_dict(dense, f"{name}{suffix}")

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {
            "format": 1,
            "seeds": list(self._seeds),
            "pipelines": [p.state_dict() for p in self.pipelines],
            "last_prune": self._last_prune,
            "logged_prune_end": self._logged_prune_end,
        }
        torch.save(state, os.path.join(checkpoint_dir, _STATE_FILE))
        info = {
            "sampled": self._sampled,
            "run_config": self.cfg.model_dump(mode="json"),
            "seeds": list(self._seeds),
            "phases": list(self._ctx["phases"]),
            "params": self._params(),  # what the MLflow run holds (reopening must match)
            "study": self._ctx.get("study"),
            "trial_id": self.trial_id,
            "epoch": self.pipelines[0].global_epoch if self.pipelines else 0,
            "done": self.done,
        }
        Path(checkpoint_dir, _TRIAL_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        if self._test is not None:
            Path(checkpoint_dir, _TEST_FILE).write_text(json.dumps(self._test, indent=2))
        if self.pipelines and self.pipelines[0].masking is not None:
            from tracking.artifacts import save_masks

            masks, _ = _selected(self.pipelines[0])
            save_masks(
                os.path.join(checkpoint_dir, _MASK_FILE),
                masks,
                self._mask_header(self._seeds[0], "checkpoint", info["epoch"]),
            )
        return None

    def load_checkpoint(self, checkpoint: str | dict[str, Any] | None) -> None:
        if not isinstance(checkpoint, str):
            raise ValueError(f"expected a checkpoint folder, got {type(checkpoint).__name__}")
        state = _load_state(checkpoint)
        if list(state["seeds"]) != list(self._seeds):
            raise ValueError(
                f"checkpoint has seeds {state['seeds']} but the trial runs {self._ctx['seeds']}"
            )
        for pipeline, pstate in zip(self.pipelines, state["pipelines"]):
            pipeline.load_state_dict(pstate)
        self._last_prune = dict(state.get("last_prune", {}))
        self._logged_prune_end = bool(state.get("logged_prune_end", False))
        test = Path(checkpoint, _TEST_FILE)
        self._test = json.loads(test.read_text()) if test.is_file() else None

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # The previous trial ended here: completed (already finished) or stopped early.
        self._finish("FINISHED" if self.done else "KILLED")
        self._trial_start_time = time.time()
        self._build(new_config)
        return True

    def cleanup(self) -> None:
        self._finish("FINISHED" if self.done else "KILLED")


def _load_state(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(checkpoint_dir, _STATE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no {_STATE_FILE}; not an s2ap trial checkpoint")
    return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------------
# Outside a trial: load a checkpoint, evaluate it, pretrain the dense model


def load_trial_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    data: DatasetSplits | None = None,
) -> list[Pipeline]:
    """Rebuild a trial's pipelines (one per seed) from its checkpoint folder.

    ``pipelines[i].model`` is the masked model at the checkpoint, ``.selected_model()`` the one
    selected on validation, ``.masking.sparsity_report()`` its measured sparsity.
    """
    info = json.loads(Path(checkpoint_dir, _TRIAL_FILE).read_text())
    state = _load_state(checkpoint_dir)
    cfg = RunConfig.model_validate(info["run_config"])
    device = torch.device(device)
    data = data if data is not None else cached_data(cfg, device)
    dense = None
    if cfg.dense.checkpoint and Path(cfg.dense.checkpoint).is_file():
        dense = cached_dense(cfg.dense.checkpoint)
    pipelines = []
    for seed, pstate in zip(info["seeds"], state["pipelines"]):
        seeded = cfg.model_copy(
            update={"seed": seed, "dense": cfg.dense.model_copy(update={"checkpoint": None})}
        )
        p = Pipeline(
            seeded, data=data, dense_state=dense, device=device, phases=tuple(info["phases"])
        )
        p.load_state_dict(pstate)
        pipelines.append(p)
    return pipelines


def _test_metrics(numbers: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in numbers.items() if k.startswith("test_") and isinstance(v, float)}


def evaluate_pipelines(
    pipelines: list[Pipeline], evaluate_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Test-set numbers of the pipelines' selected models, averaged over seeds.

    ``evaluate_overrides`` replace fields of the run config's ``evaluate`` section (without
    changing the pipelines' own configs).
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
) -> dict[str, Any]:
    """Test-set numbers of a trial's selected model(s) (mean over seeds), logged to its run.

    Runs where Ray places it (as a task with the trials' resources). ``evaluate_overrides``
    replace fields of the run config's ``evaluate`` section. With ``tracking`` the metrics go
    to the trial's MLflow run (found again by its trial id) and the run is tagged best.
    """
    device, info = trial_device(gpu, allow_cpu_fallback)
    pipelines = load_trial_checkpoint(checkpoint_dir, device=device)
    out = evaluate_pipelines(pipelines, evaluate_overrides)
    out["device"] = info["device_name"]
    if tracking and trial_id:
        from tracking.runs import TrialTracker

        tracker = TrialTracker.open(
            tracking["tracking_uri"],
            tracking["experiment_name"],
            tracking["parent_run_id"],
            trial_id,
            params or {},
            {"s2ap.best": "true"},
            storage_root=tracking.get("storage_root"),
        )
        numbers = _test_metrics(out)
        step = max(p.global_epoch for p in pipelines)
        tracker.log_metrics(numbers, step=step)
        tracker.finish("FINISHED")
    return out


def pretrain_dense(
    base: dict[str, Any],
    out_path: str,
    *,
    gpu: float = 0.0,
    allow_cpu_fallback: bool = False,
) -> list[dict[str, Any]]:
    """Run the ``pretrain`` block of ``base`` and save the dense state dict at ``out_path``.

    Written atomically (a temp file renamed into place), so a crash never leaves a partial
    dense model that later studies would load. Returns the per-epoch records.
    """
    cfg = RunConfig.model_validate(base)
    device, _ = trial_device(gpu, allow_cpu_fallback)
    pipeline = Pipeline(cfg, device=device, phases=("pretrain",))
    records = pipeline.run()
    state = {k: v.detach().cpu() for k, v in pipeline.model.state_dict().items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return records
