"""Every trial a distinct question: baselines first, then each effective configuration once.

:class:`StudySearcher` wraps the study's Optuna searcher (Ray Tune's public ``Searcher`` wrapper
API, like ``ConcurrencyLimiter``):

* **Baselines** (``study.baselines``: fixed configurations such as HYDRA) are issued first, once
  per seed of the search space, and never reach Optuna: they are not points of the space, and
  the sampler must not learn from them as if they were.
* **No duplicate work.** A drawn configuration whose *effective* config (the run config without
  the fields its arm ignores, :func:`s2ap.arms.effective_config`) equals one already issued is not
  trained again: Optuna is told the earlier trial's result for it (at once, or when that trial
  ends) and the next draw is taken. Each skipped draw is recorded in ``duplicates.jsonl`` in the
  experiment folder. After ``max_redraws`` duplicates in a row the space is taken as exhausted
  and the search ends.

The wrapper's state (which baselines went out, which keys ran, their results) is saved with the
experiment by Ray (``get_state``/``set_state``), so ``--resume`` neither reruns a baseline nor
trains a configuration twice.

What the driver spends here is timed (``costs``: ``sampler_s``, the wrapped searcher's calls;
``bookkeeping_s``, the wrapper's own work around them), for ``summary.json``'s ``timings``.
Optuna sees a trial when it is drawn and when it ends, not at every epoch: Optuna's pruners never
run under Ray (ASHA stops trials), and an intermediate value written to the Optuna storage at
each epoch of each trial cost the driver one storage transaction per result.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from tune.common.timings import StepTimes
from tune.study.baselines import EffectiveKey
from tune.study.settings import ObjectiveConfig, SearcherConfig
from tune.study.space import DefineByRun, SearchSpace

__all__ = ["StudySearcher", "make_sampler", "make_searcher"]

_log = logging.getLogger(__name__)


class StudySearcher(Searcher):
    """Baselines first, then the wrapped searcher's draws, each effective configuration once.

    Args:
        searcher: the study's searcher (``OptunaSearch``); it sees only non-baseline trials.
        baselines: baseline trial configs (:func:`baseline_trials`), issued first in order.
        effective_key: maps a trial config to its effective-config key (:class:`EffectiveKey`).
        log_path: where skipped duplicate draws are recorded (JSON lines), or ``None``.
        max_redraws: duplicate draws in a row after which the space counts as exhausted.
    """

    def __init__(
        self,
        searcher: Searcher,
        *,
        baselines: Sequence[Mapping[str, Any]] = (),
        effective_key: EffectiveKey,
        log_path: str | None = None,
        max_redraws: int = 64,
        costs: StepTimes | None = None,
    ) -> None:
        self.searcher = searcher
        self.baselines = [dict(b) for b in baselines]
        self.effective_key = effective_key
        self.log_path = log_path
        self.max_redraws = max_redraws
        self.next_baseline = 0
        self.key_of: dict[str, str] = {}  # trial id -> effective key
        self.first_trial: dict[str, str] = {}  # effective key -> trial that trains it
        self.outcomes: dict[str, dict[str, Any]] = {}  # key -> how its trial ended
        self.inner_id: dict[str, str] = {}  # trial id -> id the wrapped searcher knows
        self.waiting: dict[str, list[str]] = {}  # key -> duplicate draws awaiting its outcome
        self.duplicates = 0
        #: Driver seconds: ``sampler_s`` (the wrapped searcher) and ``bookkeeping_s`` (the rest).
        self.costs = costs if costs is not None else StepTimes()
        self._sampler_in_call = 0.0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def _inner(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A call into the wrapped searcher, its time counted as the sampler's."""
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            self.costs["sampler_s"] = self.costs.get("sampler_s", 0.0) + elapsed
            self._sampler_in_call += elapsed

    def _timed(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One of Ray's calls into this wrapper: its time less the sampler's is bookkeeping."""
        self._sampler_in_call = 0.0
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            own = time.perf_counter() - start - self._sampler_in_call
            self.costs["bookkeeping_s"] = self.costs.get("bookkeeping_s", 0.0) + own

    # --- Ray's wrapper protocol ---------------------------------------------------------------
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def get_state(self) -> dict[str, Any]:
        return self._timed(self._get_state)

    def _get_state(self) -> dict[str, Any]:
        keep = ("next_baseline", "key_of", "first_trial", "outcomes", "inner_id", "waiting")
        return {k: json.loads(json.dumps(getattr(self, k))) for k in (*keep, "duplicates")}

    def set_state(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    # --- suggestions --------------------------------------------------------------------------
    # Ray annotates ``Optional[Dict]`` but documents and handles ``Searcher.FINISHED`` too.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        return self._timed(self._suggest, trial_id)

    def _suggest(self, trial_id: str) -> dict | str | None:
        if self.next_baseline < len(self.baselines):
            config = dict(self.baselines[self.next_baseline])
            self.next_baseline += 1
            self._issue(trial_id, self.effective_key(config))
            return config
        for attempt in range(self.max_redraws):
            inner = trial_id if attempt == 0 else f"{trial_id}-redraw{attempt}"
            config = self._inner(self.searcher.suggest, inner)
            if config is None or config == Searcher.FINISHED:
                return config
            key = self.effective_key(config)
            if key not in self.first_trial:
                self.inner_id[trial_id] = inner
                self._issue(trial_id, key)
                return config
            self._skip_duplicate(inner, key, config)
        _log.warning(
            "the last %d draws all repeated configurations already run: the search space looks "
            "exhausted, so the search ends here",
            self.max_redraws,
        )
        return Searcher.FINISHED

    def _issue(self, trial_id: str, key: str) -> None:
        self.key_of[trial_id] = key
        self.first_trial.setdefault(key, trial_id)

    def _skip_duplicate(self, inner: str, key: str, config: Mapping[str, Any]) -> None:
        self.duplicates += 1
        if key in self.outcomes:
            self._inner(self.searcher.on_trial_complete, inner, **self.outcomes[key])
        else:
            self.waiting.setdefault(key, []).append(inner)
        if self.log_path:
            entry = {"draw": inner, "config": dict(config), "same_as": self.first_trial[key]}
            with Path(self.log_path).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")

    # --- results ------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Not forwarded: Optuna gets a trial's value when it ends (see the module docstring)."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self._timed(self._on_trial_complete, trial_id, result, error)

    def _on_trial_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        key = self.key_of.get(trial_id)
        if key is not None and self.first_trial.get(key) == trial_id:
            outcome = {"result": self._objective_values(result), "error": error}
            self.outcomes[key] = outcome
            for inner in self.waiting.pop(key, []):
                self._inner(self.searcher.on_trial_complete, inner, **outcome)
        if trial_id in self.inner_id:
            self._inner(
                self.searcher.on_trial_complete, self.inner_id[trial_id], result=result, error=error
            )

    def _objective_values(self, result: dict | None) -> dict[str, Any] | None:
        if not result:
            return None
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        return {m: result[m] for m in metrics if m in result}


def make_sampler(cfg: SearcherConfig, space: SearchSpace) -> Any:
    """The Optuna sampler ``study.searcher.kind`` names (a registry, one line per kind).

    TPE groups parameters that appear together when the space branches (Optuna's ``group``
    option), so each arm's parameters are modelled jointly. ``grid`` enqueues every point of the
    grid instead (:func:`make_searcher`); its sampler is never consulted.
    """
    import optuna

    s = optuna.samplers
    # Keyword sets shared by several samplers (each sampler's own types differ: typed loosely).
    seed: dict[str, Any] = {"seed": cfg.seed}
    startup: dict[str, Any] = (
        {} if cfg.n_startup_trials is None else {"n_startup_trials": cfg.n_startup_trials}
    )
    quiet: dict[str, Any] = {"warn_independent_sampling": False}
    group = cfg.multivariate and space.has_branches
    factories: dict[str, Callable[[], Any]] = {
        # constant_liar: trials still running count as bad draws, so concurrent trials spread
        # over the space instead of all sampling the model's one current optimum.
        "tpe": lambda: s.TPESampler(
            **seed, **startup, multivariate=cfg.multivariate, group=group, constant_liar=True
        ),
        "gp": lambda: s.GPSampler(**seed, **startup),
        "cmaes": lambda: s.CmaEsSampler(**seed, **startup, **quiet),
        "random": lambda: s.RandomSampler(**seed),
        "nsga2": lambda: s.NSGAIISampler(**seed),
        "qmc": lambda: s.QMCSampler(**seed, **quiet),
        "grid": lambda: s.RandomSampler(**seed),
    }
    # TPE's ``group`` and QMC are marked experimental in Optuna 5: noise in a study's output
    # (the choice is made here, not by the user).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factories[cfg.kind]()


def make_searcher(
    cfg: SearcherConfig,
    objectives: list[ObjectiveConfig],
    space: SearchSpace,
    *,
    study_name: str,
    storage: Any | None,
    base: Mapping[str, Any] | None = None,
    baselines: list[dict[str, Any]] | None = None,
    log_path: str | None = None,
    costs: StepTimes | None = None,
) -> Any:
    """The study's searcher: :class:`StudySearcher` around Ray's ``OptunaSearch``.

    ``metric``/``mode`` are passed here (TuneConfig's are not passed on to a searcher that has
    its own space). ``storage`` (an Optuna storage: :meth:`tune.study.file.Study.optuna_storage`)
    persists the Optuna study.
    ``base`` is the study's run config (for the effective-config keys), ``baselines`` the
    baseline trial configs, ``log_path`` where skipped duplicate draws are recorded.
    """
    from ray.tune.search.optuna import OptunaSearch

    metric: str | list[str]
    mode: str | list[str]
    if len(objectives) == 1:
        metric, mode = objectives[0].metric, objectives[0].mode
    else:
        metric = [o.metric for o in objectives]
        mode = [o.mode for o in objectives]
    points = [dict(p) for p in cfg.points_to_evaluate]
    if cfg.kind == "grid":
        points += space.grid_points()
    optuna_search = OptunaSearch(
        space=DefineByRun(space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(cfg, space),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=points or None,
    )
    return StudySearcher(
        optuna_search,
        baselines=baselines or [],
        effective_key=EffectiveKey(base or {}),
        log_path=log_path,
        costs=costs,
    )
