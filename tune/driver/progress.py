"""What ``s2ap tune`` prints while a study runs: one line per trial event and a progress line.

Ray Tune's own console output (a configuration box per trial, a result box per trial, a status
table every 30 s) runs to ~2,400 lines for the 16-trial quickstart. By default the service
prints instead, through Ray Tune's callback API (:class:`StudyProgress`):

    trial 87e3020e started: s2ap rho=0.09789 ascent_steps=2
    trial 87e3020e stopped by ASHA at epoch 4 (val_robust_acc 0.441)
    trial e9804a5e completed: val_robust_acc 0.7083 after 10 epochs (1m02s)
    trial 1c2d3e4f failed (retry 1/2): RuntimeError: CUDA out of memory (full traceback: ...)
    [12/16 done, 2 running, 2 left] best 0.7014 (trial 95dc9f58) elapsed 2m31s, ~40s left

The progress line comes at a bounded rate (every 30 s at first, less often as the study goes
on, so a 1,000-trial study adds a few dozen lines), plus once at the end; on a terminal it is
a status line redrawn in place instead. :func:`quiet_libraries` silences, for the launch,
what would otherwise repeat per trial or per start: Ray Tune's reporter and its INFO logs,
its traceback per failed trial (the failure line names the root cause and the error file),
Optuna's and MLflow's INFO lines. Warnings and errors still come through. ``-v 2`` brings
Ray Tune's reporter and logs back; ``-v 3`` adds its result box per epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar

from ray.tune import Callback

from tune.common.console import best_effort
from tune.results.trials import error_text
from tune.study.baselines import trial_values
from tune.study.file import Study
from tune.trial.context import CONTEXT_KEY, baseline_name

__all__ = [
    "StudyProgress",
    "describe_config",
    "format_duration",
    "quiet_libraries",
    "ray_verbosity",
]

#: ``s2ap tune -v N`` -> the ``verbose`` Ray Tune's reporter gets: 0 and 1 keep it silent
#: (the service prints its own lines), 2 is Ray's default output, 3 adds a box per result.
_RAY_VERBOSITY = {0: 0, 1: 0, 2: 1, 3: 2}

#: Loggers that speak at INFO once per start or per trial; WARNING and above still print.
_CHATTY_LOGGERS = (
    "ray.tune",  # "Wrote the latest version of all result files ..." after every fit
    "mlflow.store.db.utils",  # "Creating initial MLflow database tables..." for a new store
    "mlflow.pyfunc",  # "Validating input example against model signature" (best model)
    # Optuna resets its root logger's level on import, so its children are set instead.
    "optuna.storages._rdb.storage",  # "A new study created in RDB with name: ..."
    "optuna.storages.journal._storage",  # "A new study created in Journal with name: ..."
    "optuna.study.study",
    "optuna.study._tell",
)
#: Ray's notice that a local runtime has token authentication (on by default since 2.59):
#: the runtime is the service's own, there is nothing for the user to do.
_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def ray_verbosity(verbose: int) -> int:
    """The ``RunConfig(verbose=...)`` for ``s2ap tune -v verbose``."""
    return _RAY_VERBOSITY.get(verbose, 2 if verbose > 3 else 0)


@contextlib.contextmanager
def quiet_libraries(verbose: int) -> Iterator[None]:
    """For a launch with ``verbose`` < 2: Ray Tune's reporter off (its legacy engine at
    verbosity 0 prints nothing; the new one still prints a table per experiment and a result
    box per failure), Ray Tune's traceback per failed trial off, the per-start INFO lines of
    Ray, Optuna and MLflow off, MLflow's download bars off. Everything is restored
    afterwards; environment variables the user set are left as they are."""
    if verbose >= 2:
        yield
        return
    env = {
        "RAY_AIR_NEW_OUTPUT": "0",
        "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
        # MLflow's tqdm bar for every artifact download (the best model's files, the plots).
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    added = [key for key in env if key not in os.environ]
    levels = {name: logging.getLogger(name).level for name in _CHATTY_LOGGERS}
    auth_level = logging.getLogger(_AUTH_NOTICE_LOGGER).level
    try:
        for key in added:
            os.environ[key] = env[key]
        for name in levels:
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger(_AUTH_NOTICE_LOGGER).setLevel(auth_level)


def format_duration(seconds: float) -> str:
    """``42s``, ``2m31s``, ``1h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _method(config: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """The trial's method name (``s2ap``, ``hydra``, ``harp+random-perturbation``)."""
    from s2ap.arms import DEFAULT_HOST, method_name

    context = config.get(CONTEXT_KEY)
    base = context.get("base", {}) if isinstance(context, Mapping) else {}
    prune = base.get("prune", {}) if isinstance(base, Mapping) else {}
    host = str(values.get("prune.host", prune.get("host", DEFAULT_HOST)))
    arm = str(values.get("prune.perturbation", prune.get("perturbation", "score")))
    try:
        return method_name(host, arm)
    except Exception:  # an unknown arm: the trial fails on its own, naming the field
        return arm if host == DEFAULT_HOST else f"{host}+{arm}"


def describe_config(config: Mapping[str, Any]) -> str:
    """``s2ap rho=0.09789 ascent_steps=2``: the method, then the trial's searched values by
    their last name (the full dotted path where two would read alike); ``hydra (baseline
    hydra)`` for a baseline."""
    values = trial_values(config)
    shown = {k: v for k, v in values.items() if k not in ("prune.host", "prune.perturbation")}
    lasts = [k.rsplit(".", 1)[-1] for k in shown]
    parts = [_method(config, values)]
    for key, value in shown.items():
        last = key.rsplit(".", 1)[-1]
        parts.append(f"{last if lasts.count(last) == 1 else key}={_fmt_value(value)}")
    baseline = baseline_name(config)
    if baseline:
        parts.append(f"(baseline {baseline})")
    return " ".join(parts)


_Hook = TypeVar("_Hook", bound=Callable[..., None])


def _never_raises(hook: _Hook) -> _Hook:
    """A console line must never end a study: Ray Tune runs callbacks inside its loop, where
    an exception would stop the search. A failure is logged and the line skipped."""

    def guarded(*args: Any, **kwargs: Any) -> None:
        with best_effort(f"printing the study's progress ({hook.__name__})"):
            hook(*args, **kwargs)

    guarded.__name__ = hook.__name__
    guarded.__doc__ = hook.__doc__
    return guarded  # type: ignore[return-value]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class StudyProgress(Callback):
    """One line per trial event and a progress line (see the module docstring).

    Counts are read from the trials Ray Tune passes to every hook, so a resumed study
    (``Tuner.restore``, which unpickles this callback) counts its earlier trials too.

    Args:
        metric, mode: the objective the progress line's "best" is taken on (the study's first).
        epochs_per_trial: Tune iterations of a trial that is never stopped early; a trial that
            ends before them was stopped by the scheduler.
        scheduler: the scheduler's name in "stopped by ..." lines.
        max_failures: ``study.max_failures`` (retries per trial), for "retry n/m".
        out: where the lines go (default: ``sys.stdout`` at print time).
        interval_s: the shortest time between two progress lines (it grows to a tenth of the
            elapsed time, at most ``max_interval_s``).
    """

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        epochs_per_trial: int,
        scheduler: str = "the scheduler",
        max_failures: int = 0,
        out: IO[str] | None = None,
        interval_s: float = 30.0,
        max_interval_s: float = 600.0,
    ) -> None:
        self.metric = metric
        self.mode = mode
        self.epochs_per_trial = epochs_per_trial
        self.scheduler = scheduler
        self.max_failures = max_failures
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self._out = out
        self._reset()

    @classmethod
    def for_study(cls, study: Study, out: IO[str] | None = None) -> StudyProgress:
        """The callback of ``study``: its objective, epochs, scheduler and retries."""
        settings = study.settings
        objective = study.objective
        return cls(
            metric=objective.metric,
            mode=objective.mode,
            epochs_per_trial=study.epochs_per_trial,
            scheduler="ASHA" if settings.scheduler.kind == "asha" else "the scheduler",
            max_failures=settings.max_failures,
            out=out,
        )

    def _reset(self) -> None:
        self._start = time.monotonic()
        self._last_progress = self._start
        self._total: int | None = None
        self._done_before: int | None = None  # finished before this launch (a resumed study)
        self._status_shown = False  # a status line is on the terminal, without its newline

    # Ray pickles the run config (with its callbacks) into the experiment folder, and
    # ``Tuner.restore`` unpickles it: the stream and the clock belong to one launch.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_out"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def out(self) -> IO[str]:
        return self._out if self._out is not None else sys.stdout

    def _tty(self) -> bool:
        try:
            return bool(self.out.isatty())
        except (AttributeError, ValueError):
            return False

    # --- printing -----------------------------------------------------------------------------
    def _line(self, text: str, trials: list[Any] | None = None) -> None:
        """An event line; on a terminal the status line is cleared first and redrawn after."""
        tty = self._tty()
        if tty and self._status_shown:
            self.out.write("\r\x1b[K")
            self._status_shown = False
        print(text, file=self.out, flush=True)
        if tty and trials is not None:
            self._status(trials)

    def _status(self, trials: list[Any]) -> None:
        self.out.write("\r\x1b[K" + self.progress_line(trials))
        self.out.flush()
        self._status_shown = True

    # --- Tune callback hooks ------------------------------------------------------------------
    @_never_raises
    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        """Ray's ``Callback.setup`` signature (it passes keywords); only the total is used."""
        self._reset()
        if total_num_samples is not None and 0 < total_num_samples < sys.maxsize:
            self._total = int(total_num_samples)

    @_never_raises
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("training_iteration", 0) or 0)
        if epoch > 0:  # restarted after a failure, or continued by --resume
            text = f"trial {trial.trial_id} resumed at epoch {epoch}"
        else:
            text = f"trial {trial.trial_id} started: {describe_config(trial.config or {})}"
        self._line(text, trials)

    @_never_raises
    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epochs = int(last.get("training_iteration", 0) or 0)
        value = _number(last.get(self.metric))
        shown = f"{self.metric} {value:.4g}" if value is not None else f"no {self.metric}"
        if epochs >= self.epochs_per_trial:
            took = _number(last.get("time_total_s"))
            took_text = f" ({format_duration(took)})" if took is not None else ""
            text = f"trial {trial.trial_id} completed: {shown} after {epochs} epochs{took_text}"
        elif last.get("done"):
            text = f"trial {trial.trial_id} stopped by {self.scheduler} at epoch {epochs} ({shown})"
        else:  # the study's time budget, or an interrupt
            text = f"trial {trial.trial_id} stopped at epoch {epochs} ({shown})"
        self._line(text, trials)

    @_never_raises
    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        retries = f"{trial.num_failures}/{self.max_failures}" if self.max_failures > 0 else ""
        retries = retries or str(trial.num_failures)
        self._line(
            f"trial {trial.trial_id} failed (retry {retries}): {error_text(trial.error_file)}",
            trials,
        )

    @_never_raises
    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(f"trial {trial.trial_id} failed: {error_text(trial.error_file)}", trials)

    @_never_raises
    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._done_before is None:
            self._done_before = sum(_finished(t) for t in trials)
        now = time.monotonic()
        if self._tty():
            if now - self._last_progress >= 1.0:  # the elapsed time ticks on the status line
                self._last_progress = now
                self._status(trials)
            return
        interval = min(self.max_interval_s, max(self.interval_s, (now - self._start) / 10))
        if now - self._last_progress >= interval:
            self._last_progress = now
            self._line(self.progress_line(trials))

    @_never_raises
    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._line(self.progress_line(trials, final=True))

    # --- the progress line --------------------------------------------------------------------
    def progress_line(self, trials: list[Any], *, final: bool = False) -> str:
        """``[12/16 done, 2 running, 2 left] best 0.7014 (trial 95dc9f58) elapsed 2m31s, ~40s
        left``: "best" is the objective's best value among completed trials; ``final``: the
        line at the end, without an estimate."""
        done = sum(_finished(t) for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        left = max(0, self._total - done - running) if self._total is not None else None
        counts = f"{done}/{self._total} done" if self._total is not None else f"{done} done"
        counts += f" ({failed} failed)" if failed else ""
        counts += f", {running} running" + (f", {left} left" if left is not None else "")
        text = f"[{counts}]"
        best = self._best(trials)
        if best is not None:
            text += f" best {best[1]:.4g} (trial {best[0]})"
        elapsed = time.monotonic() - self._start
        text += f" elapsed {format_duration(elapsed)}"
        eta = None if final else self._eta(done, running, left, elapsed)
        if eta is not None:
            text += f", ~{format_duration(eta)} left"
        return text

    def _best(self, trials: list[Any]) -> tuple[str, float] | None:
        """The best objective value among completed trials (the summary's rule)."""
        best: tuple[str, float] | None = None
        for t in trials:
            last = t.last_result or {}
            if (
                t.status != "TERMINATED"
                or (last.get("training_iteration") or 0) < self.epochs_per_trial
            ):
                continue
            value = _number(last.get(self.metric))
            if value is None:
                continue
            better = best is None or (value > best[1] if self.mode == "max" else value < best[1])
            if better:
                best = (t.trial_id, value)
        return best

    def _eta(self, done: int, running: int, left: int | None, elapsed: float) -> float | None:
        """Trials still to run at this launch's rate of finishing them (running ones count
        half): rough, as ASHA stops some trials early."""
        finished_here = done - (self._done_before or 0)
        if left is None or finished_here <= 0 or elapsed <= 0:
            return None
        if left == 0 and running == 0:
            return None
        return (left + running / 2) * elapsed / finished_here


def _finished(trial: Any) -> bool:
    return trial.status in ("TERMINATED", "ERROR")
