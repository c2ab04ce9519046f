"""The Ray Tune Trainable of a study: one Tune iteration = one epoch of a trial's pipelines.

``S2APTrainable`` (class API) runs the prune epochs, then the finetune epochs (``trainable:
pipeline``), or the prune epochs only (``trainable: prune``), validating after every epoch, and
reports per step ``val_robust_acc``, ``val_clean_acc``, ``best_val_robust_acc``, ``mask_hamming``,
``sharpness``, ``sparsity``, ``epoch_time_s``, ``images_per_s``, ``phase``, ``epoch``, ``done``.
Prune-phase metrics (``mask_hamming``, ``sharpness``) keep their last prune-epoch value in finetune
results, so they can be objectives of a multi-objective study; MLflow gets them only for the
epochs that measured them. With ``study.seeds`` the numbers are means over the seeds'
pipelines (:mod:`tune.trial.pipelines`).

A trial is built in two steps: its pipelines (:mod:`tune.trial.context` -> run config, device,
:func:`tune.trial.pipelines.build_pipelines`), then its MLflow run
(:class:`tune.trial.recorder.TrialRecorder`).
Checkpoints are written and read by :mod:`tune.trial.checkpoint`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.result import RESULT_DUPLICATE

from s2ap.pipeline import Pipeline
from tune.common.console import best_effort
from tune.common.timings import TIMING_KEY, StepTimes, process_start_time
from tune.study.baselines import trial_values
from tune.trial.checkpoint import (
    TrialState,
    read_test_numbers,
    read_trial_state,
    write_trial_checkpoint,
)
from tune.trial.context import TrialContext, baseline_name, trial_run_config
from tune.trial.device import trial_device
from tune.trial.evaluation import evaluate_pipelines
from tune.trial.pipelines import (
    SelectedMasks,
    build_pipelines,
    merge_records,
    seed_mask_header,
    selected_masks_and_weights,
)
from tune.trial.recorder import TrialRecorder, trial_params, trial_run_name, trial_tags
from tune.trial.worker_exit import exit_quietly_on_sigterm

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["PRUNE_METRICS", "S2APTrainable"]

#: Metrics only the prune phase measures (carried forward into finetune results).
PRUNE_METRICS = ("mask_hamming", "sharpness", "perturbing", "hessian_top_eig")


class S2APTrainable(tune.Trainable):
    """Ray Tune class Trainable: one :meth:`step` = one epoch of every seed's :class:`Pipeline`.

    Checkpoints restore a trial exactly (:mod:`tune.trial.checkpoint`). ``reset_config`` ends the
    previous trial's run and builds the new trial, so Ray can reuse the actor (and its cached
    dataset and dense model).
    """

    def setup(self, config: dict[str, Any]) -> None:
        # One INFO line per epoch checkpoint, forwarded to the driver: noise in a study's output.
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        # "Trainable.setup took N seconds ... consider setting reuse_actors=True" after every
        # slow start (imports on a busy machine), even with reused actors: noise too.
        logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)
        times = StepTimes()
        # The worker's own start-up and the imports that unpickling this class paid.
        times.since("worker_start", process_start_time())
        self._start(config, times)

    # --- construction -------------------------------------------------------------------------
    def _start(self, config: dict[str, Any], times: StepTimes) -> None:
        """Build the trial's pipelines (opening its MLflow run only to record a failure here,
        so that the run shows FAILED with the reason). ``times`` gets the seconds of each
        set-up step; the first result reports them."""
        self._recorder = TrialRecorder()  # records nothing until the first step opens the run
        self._recorder_open = False
        self.pipelines: list[Pipeline] = []
        self._trial_start_time = time.time()
        self._ctx = TrialContext.from_config(config)
        self._sampled = trial_values(config)
        self._baseline = baseline_name(config)
        self.cfg = trial_run_config(self._ctx, self._sampled)
        # The run's params, also in each checkpoint (a reopened run must log the same values).
        self._params = trial_params(self.cfg, self._ctx)
        # Replicates (study.seeds), else the trial's own seed (the run config's, or sampled).
        self._seeds = list(self._ctx.seeds or [self.cfg.seed])
        self._last_prune: dict[str, Any] = {}
        self._test: dict[str, Any] | None = None
        self._device_info: dict[str, str] = {}
        self._checkpoint_s = 0.0  # the last save_checkpoint, reported with the next result
        self._selected_masks = SelectedMasks()
        try:
            device, self._device_info = trial_device(self._ctx.gpu, self._ctx.allow_cpu_fallback)
            self.pipelines = build_pipelines(
                self.cfg,
                self._seeds,
                phases=self._ctx.phases,
                device=device,
                dense_path=self._ctx.dense_path,
                times=times,
            )
        except BaseException as exc:
            with best_effort("recording the trial's failure in MLflow"):
                self._open_recorder().finish("error", error=exc)
            raise
        self._setup_times: dict[str, float] | None = dict(times)

    def _ensure_recorder(self) -> None:
        """Open the trial's MLflow run at its first step, not at set-up: Ray may build an actor
        for a trial and drop it unused (another, reused actor took the trial), and a dropped
        actor must not reopen, re-tag or close a run that another process is writing."""
        if self._recorder_open:
            return
        start = time.perf_counter()
        self._recorder = self._open_recorder()
        self._recorder_open = True
        if self._setup_times is not None:
            self._setup_times["mlflow_run_s"] = time.perf_counter() - start

    def _open_recorder(self) -> TrialRecorder:
        tags = trial_tags(
            self.cfg,
            self._ctx,
            sampled=self._sampled,
            trial_name=self.trial_name,
            device_info=self._device_info,
            baseline=self._baseline,
        )
        return TrialRecorder.open(
            self._ctx.tracking,
            self.trial_id,
            self._params,
            tags,
            run_name=trial_run_name(self.cfg, self.trial_id),
        )

    # --- Tune API -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return bool(self.pipelines) and all(p.done for p in self.pipelines)

    def step(self) -> dict[str, Any]:
        self._ensure_recorder()
        if self.done:
            # Restored from the final checkpoint of a finished trial (its end was not in the
            # experiment snapshot of a killed driver): nothing left to run; its run is closed.
            self._recorder.finish("completed")
            return {RESULT_DUPLICATE: True, "done": True}
        try:
            return self._epoch()
        except BaseException as exc:
            self._recorder.finish("error", error=exc)
            raise

    def _epoch(self) -> dict[str, Any]:
        times = StepTimes()
        in_prune = [p.phase == "prune" for p in self.pipelines]
        with times.step("step"):
            result = merge_records([p.step() for p in self.pipelines], self.pipelines)
        epoch = int(result["epoch"])
        with times.step("log"):
            self._recorder.log_epoch({k: v for k, v in result.items() if k != "done"}, step=epoch)
            prune_ended = any(
                was and p.phase != "prune" for was, p in zip(in_prune, self.pipelines)
            )
            if prune_ended:  # once: the seeds run in lockstep and phases only go forward
                self._log_masks("prune-end", selected_model=False)
        self._carry_prune_metrics(result)
        result.update(self._device_info)
        if self.done:
            result["done"] = True
            with times.step("end"):
                self._complete(epoch)
        result["trial_start_time"] = self._trial_start_time
        result["result_time"] = time.time()
        result[TIMING_KEY] = self._timing(times)
        return result

    def _timing(self, times: StepTimes) -> dict[str, Any]:
        """This epoch's :data:`TIMING_KEY` record: its steps, the checkpoint written after the
        previous epoch, and (first result after a set-up) the set-up's steps."""
        timing: dict[str, Any] = {
            **times,
            "checkpoint_s": self._checkpoint_s,
            "mlflow_queued": self._recorder.queued_writes,  # failed over to the outbox, so far
        }
        if self._setup_times is not None:
            timing["setup"], self._setup_times = self._setup_times, None
        return timing

    def _carry_prune_metrics(self, result: dict[str, Any]) -> None:
        """Keep the last prune-epoch values of prune-only metrics in finetune results."""
        if result.get("phase") == "prune":
            self._last_prune = {k: result[k] for k in PRUNE_METRICS if k in result}
        else:
            for key, value in self._last_prune.items():
                result.setdefault(key, value)

    def _complete(self, epoch: int) -> None:
        """The trial's last epoch: final masks and weights, test numbers, run FINISHED."""
        self._log_masks("final", selected_model=True)
        if self._ctx.test_eval is not None:
            self._test = evaluate_pipelines(self.pipelines, self._ctx.test_eval)
            self._recorder.log_test(self._test, step=epoch)
        self._recorder.finish("completed")

    def _mask_header(self, seed: int, name: str, epoch: int) -> dict[str, Any]:
        return seed_mask_header(
            self.cfg,
            seed,
            dense_hash=self._ctx.dense_hash,
            name=name,
            epoch=epoch,
            sampled=self._sampled,
        )

    def _log_masks(self, name: str, *, selected_model: bool) -> None:
        """Every seed's masks (and, for the selected model, its weights) as ``name[-seedN]``."""
        if not self._recorder.enabled:
            return
        for i, (seed, pipeline) in enumerate(zip(self._seeds, self.pipelines)):
            artifact = name if i == 0 else f"{name}-seed{seed}"
            weights: dict[str, Tensor] | None
            if selected_model:
                masks, weights = selected_masks_and_weights(pipeline)
                epoch = int(pipeline.best.get("epoch", pipeline.global_epoch))
            else:  # the mask the prune phase ended with
                assert pipeline.prune_masks is not None  # set when the prune phase ends
                masks, weights, epoch = pipeline.prune_masks, None, pipeline.global_epoch
            self._recorder.log_masks(masks, self._mask_header(seed, name, epoch), artifact)
            if weights is not None:
                self._recorder.log_weights(weights, artifact)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        start = time.perf_counter()
        self._recorder.spill()  # what this checkpoint covers is in MLflow or in the outbox
        self._save(checkpoint_dir)
        self._checkpoint_s = time.perf_counter() - start

    def _save(self, checkpoint_dir: str) -> None:
        state = TrialState(
            seeds=list(self._seeds),
            pipelines=[p.state_dict() for p in self.pipelines],
            last_prune=self._last_prune,
        )
        epoch = self.pipelines[0].global_epoch if self.pipelines else 0
        info = {
            "sampled": self._sampled,
            "run_config": self.cfg.model_dump(mode="json"),
            "seeds": list(self._seeds),
            "phases": list(self._ctx.phases),
            "params": self._params,  # what the run holds (reopen must match)
            "study": self._ctx.study,
            "trial_id": self.trial_id,
            "epoch": epoch,
            "done": self.done,
        }
        mask = None
        if self.pipelines and self.pipelines[0].masking is not None:
            masks = self._selected_masks(self.pipelines[0])
            mask = (masks, self._mask_header(self._seeds[0], "checkpoint", epoch))
        write_trial_checkpoint(checkpoint_dir, state, info, test=self._test, mask=mask)

    def load_checkpoint(self, checkpoint: str | dict[str, Any] | None) -> None:
        if not isinstance(checkpoint, str):
            raise ValueError(f"expected a checkpoint folder, got {type(checkpoint).__name__}")
        state = read_trial_state(checkpoint)
        if state.seeds != self._seeds:
            raise ValueError(f"checkpoint has seeds {state.seeds} but the trial runs {self._seeds}")
        for pipeline, pstate in zip(self.pipelines, state.pipelines):
            pipeline.load_state_dict(pstate)
        self._last_prune = state.last_prune
        self._selected_masks.clear()
        self._test = read_test_numbers(checkpoint)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # The previous trial ended here: completed (already finished) or stopped early. (A
        # trial this actor never stepped has no open run here: the recorder does nothing.)
        # Stopped early is a normal end (FINISHED); an interrupt is settled by the driver.
        self._recorder.finish("completed" if self.done else "stopped_early")
        self._start(new_config, StepTimes())
        return True

    def cleanup(self) -> None:
        self._recorder.finish("completed" if self.done else "stopped_early")
        # Tune is done with this actor: the raylet's SIGTERM must not raise SystemExit into
        # the worker's exit path (a traceback on the driver; tune.trial.worker_exit).
        exit_quietly_on_sigterm()
