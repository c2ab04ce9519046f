"""The study file: a run config + a ``study:`` block + a ``search_space:`` block.

Layout of a study file (see ``configs/quickstart.yaml``)::

    name: ...; seed: ...; data: ...; model: ...; threat: ...; dense: ...; pretrain: ...
    prune: ...; finetune: ...; validation: ...; evaluate: ...   # the run config (RunConfig)
    study:                                 # StudySettings; every key optional
      name: <file stem>                    # folder, MLflow experiment and Optuna study name
      storage_root: ./studies              # relative to the study file; shared on multi-node
      num_samples: 8                       # trials in all (baseline trials included)
      max_concurrent_trials: null          # null: as many as the resources allow
      searcher: {kind: tpe, seed: 0, n_startup_trials: null, multivariate: true,
                 points_to_evaluate: []}   # tpe | gp | cmaes | random | nsga2 | qmc | grid
      objectives: [{metric: val_robust_acc, mode: max}]   # several: multi-objective Optuna;
                                           # the first one drives ASHA and picks the best trial
      scheduler: {kind: asha, grace_period: 1, reduction_factor: 2,
                  time_attr: training_iteration, max_t: null, brackets: 1}   # or {kind: none}
      resources: {cpu: 1, gpu: 0}          # per trial; gpu may be a fraction (< 1)
      allow_cpu_fallback: false            # a trial given a GPU that torch cannot see fails
      trainable: pipeline                  # pipeline (prune + finetune) | prune (prune only)
      tracking_uri: null                   # null: sqlite:////<storage_root>/mlflow.db
      seeds: null                          # [0, 1, 2]: replicates inside each trial (below)
      test_eval: {enabled: true, every_trial: false, autoattack: null, n_examples: null,
                  pgd_steps: null}         # best trial after the search (and every trial)
      checkpoint: {frequency: 1, num_to_keep: 1}   # epochs between trial checkpoints
      max_failures: 2                      # retries of a failed trial (from its checkpoint)
      time_budget_s: null
      reuse_actors: true                   # keeps the per-process dataset/dense-model cache
      baselines: {}                        # {name: {path: value}}: fixed configurations run
                                           # first, once per seed, never sampled (HYDRA:
                                           # {hydra: {prune.perturbation: none}})
    search_space:                          # dotted run-config path -> distribution
      prune.perturbation:                  # a choice with branches: each value searches its own
        type: choice                       # parameters (tune.study.space)
        branches:
          score: {prune.rho: {type: loguniform, low: 0.005, high: 0.5},
                  prune.ascent_steps: {type: int, low: 1, high: 3}}   # bounds inclusive
          random: {prune.rho: {type: loguniform, low: 0.005, high: 0.5}}
      finetune.lr: {type: uniform, low: 0.001, high: 0.05}      # step for a grid

Seeds: the run config's ``seed`` seeds the dense model (pretrained once per study) and, without
``study.seeds``, every trial. ``seed`` can be searched like any field. ``study.seeds: [0, 1, 2]``
instead runs each sampled configuration once per seed *inside one trial*, in lockstep: Optuna
and ASHA see the mean over seeds (plus ``val_robust_acc_std`` and ``mask_hamming_seeds``, the
mean pairwise Hamming distance between the seeds' masks), so a configuration is judged on its
average, not on a lucky seed, and the across-seed mask stability of the paper is measured.
For per-seed runs instead (one MLflow run per seed, e.g. for ``s2ap report``'s arm comparison),
search ``seed`` with the ``grid`` searcher: ``seed: {type: choice, values: [0, 1, 2]}``.
Fields that define the data split and the dense model (``data.source``, ``model``, ``pretrain``,
``dense``, ...) cannot be searched: every trial prunes the same dense model on the same split.

:func:`load_study` reads the file, validates the run config, the study block and the search space
(every path against :class:`RunConfig`, every corner of the space as a whole run config), and
resolves every relative path against the study file's folder: Ray trials ``chdir`` into their
own folders, so nothing a trial sees may be relative. It creates nothing; a bad field raises
:class:`StudyError` whose message names the dotted field and the fix.

Storage layout under ``study.storage_root`` (shared storage on a multi-node cluster)::

    <storage_root>/
      <study name>/          Ray Tune experiment (trials, checkpoints, experiment state)
        study.json           the resolved study (what --resume compares against)
        summary.json         best trial, validation and test numbers (after the search)
        duplicates.jsonl     draws skipped because an equal effective configuration had run
      optuna.journal         Optuna studies (one per study name): optuna-dashboard <this file>
      mlflow.db, mlartifacts/  MLflow store (unless study.tracking_uri / --tracking-uri)
      dense/<hash>.pt        dense models pretrained by a `pretrain` block, shared by studies
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from s2ap.config import (
    ConfigError,
    RunConfig,
    config_hash,
    format_validation_error,
    read_yaml_file,
    set_dotted,
)
from tune.study.baselines import baseline_trials, check_baselines
from tune.study.settings import (
    ObjectiveConfig,
    StudySettings,
    check_searcher,
)
from tune.study.space import SearchSpace, parse_search_space

__all__ = ["Study", "StudyError", "fingerprint_changes", "load_study", "optuna_journal"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: The environment's tracking URI, below ``--tracking-uri`` and ``study.tracking_uri``.
TRACKING_URI_ENV = "S2AP_TRACKING_URI"


class StudyError(ConfigError):
    """A problem with a study (file, storage, cluster) that the user can fix; exit code 2."""


@dataclasses.dataclass
class Study:
    """A validated study: everything the service needs, with absolute paths."""

    path: Path | None
    """The study file (``None`` when built from a dict)."""
    name: str
    settings: StudySettings
    run_config: RunConfig
    """The base run config (before sampling); relative paths resolved."""
    space: SearchSpace
    storage_root: Path
    text: str | None = None
    """The study file's text as read and validated (``None`` when built from a dict): what
    the MLflow study run records."""

    # --- layout ---------------------------------------------------------------------------
    @property
    def experiment_dir(self) -> Path:
        """The Ray Tune experiment folder (``<storage_root>/<name>``)."""
        return self.storage_root / self.name

    @property
    def optuna_path(self) -> Path:
        """The Optuna journal of the storage root's studies (``optuna-dashboard PATH`` shows
        them). A journal file, not an sqlite RDB: a draw costs the driver a third of the time
        (no SQL transactions), which matters at hundreds of trials (docs/PERFORMANCE.md)."""
        return self.storage_root / "optuna.journal"

    def optuna_storage(self) -> Any:
        """The Optuna storage of :attr:`optuna_path` (imports Optuna)."""
        return optuna_journal(self.optuna_path)

    @property
    def dense_dir(self) -> Path:
        return self.storage_root / "dense"

    @property
    def study_json(self) -> Path:
        return self.experiment_dir / "study.json"

    @property
    def duplicates_log(self) -> Path:
        """Draws not trained because an equal effective configuration ran (JSON lines)."""
        return self.experiment_dir / "duplicates.jsonl"

    @property
    def summary_json(self) -> Path:
        return self.experiment_dir / "summary.json"

    @property
    def shell_arg(self) -> str:
        """The study file as a shell argument, for the commands the service prints."""
        return shlex.quote(str(self.path)) if self.path else "STUDY.yaml"

    @property
    def folder(self) -> Path:
        """The folder relative paths are resolved against (the study file's folder)."""
        return self.path.parent if self.path else Path.cwd()

    # --- derived ----------------------------------------------------------------------------
    @property
    def phases(self) -> tuple[str, ...]:
        return ("prune",) if self.settings.trainable == "prune" else ("prune", "finetune")

    @property
    def seeds(self) -> list[int]:
        return list(self.settings.seeds or [self.run_config.seed])

    @property
    def epochs_per_trial(self) -> int:
        """Tune iterations of a trial that is never stopped early (one per epoch)."""
        return sum(getattr(self.run_config, p).epochs for p in self.phases)

    @property
    def objective(self) -> ObjectiveConfig:
        """The first objective: what ASHA compares and what picks the best trial."""
        return self.settings.objectives[0]

    def base_dict(self) -> dict[str, Any]:
        return self.run_config.model_dump(mode="json")

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a study's start and ``--resume`` (JSON-able)."""
        s = self.settings.model_dump(mode="json", exclude={"test_eval", "max_failures"})
        return {
            "name": self.name,
            "run_config": self.base_dict(),
            "study": s,
            "search_space": self.space.to_dict(),
        }

    def fingerprint_hash(self) -> str:
        return config_hash(self.fingerprint())

    def resolve_tracking_uri(self, override: str | None = None) -> str:
        """The MLflow tracking URI: ``override`` (``--tracking-uri``), else
        ``study.tracking_uri``, else the environment's ``S2AP_TRACKING_URI`` (the cluster
        recipes set it on every node: a job submitted there logs to the cluster's server), else
        the store in ``storage_root``; :class:`StudyError` names the field and the fix."""
        from tracking.client import resolve_tracking_uri

        chosen, field = override, "--tracking-uri"
        if not chosen and self.settings.tracking_uri:
            chosen, field = self.settings.tracking_uri, "study.tracking_uri"
        if not chosen and os.environ.get(TRACKING_URI_ENV):
            chosen, field = os.environ[TRACKING_URI_ENV], TRACKING_URI_ENV
        try:
            return resolve_tracking_uri(chosen, self.storage_root)
        except ValueError as exc:
            raise StudyError(f"{field}: {exc}") from None


def optuna_journal(path: str | Path) -> Any:
    """An Optuna journal storage in the file ``path`` (created on first write)."""
    import optuna.storages.journal

    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


# --------------------------------------------------------------------------------------------
# load_study: read -> apply overrides -> validate sections -> resolve paths -> cross-checks


def load_study(
    path: str | Path | None = None,
    *,
    raw: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    folder: str | Path | None = None,
) -> Study:
    """Read and validate a study file (or a ``raw`` dict); create nothing.

    ``overrides`` are ``{dotted path: value}`` applied before validation (``study.num_samples``,
    ``prune.epochs``, ...). Relative paths resolve against ``folder`` (default: the study
    file's folder). Raises :class:`StudyError` naming the field and the fix.
    """
    source = str(path) if path is not None else "study"
    raw, study_path, text = _read(path, raw)
    if not isinstance(raw, dict):
        raise StudyError(f"{source}: expected a mapping at the top level")
    raw = _apply_overrides(raw, overrides or {})
    base_folder = (
        Path(folder).resolve() if folder else (study_path.parent if study_path else Path.cwd())
    )
    study_raw, space_raw = _split_sections(raw, source)
    settings = _validate_settings(study_raw, source)
    run_config = _resolve_paths(_validate_run_config(raw, source), base_folder, source)
    name = _study_name(settings, study_path, run_config, source)
    space = _validate_space(space_raw, settings, run_config, source)
    _check_cross(settings, run_config, source)
    return Study(
        path=study_path,
        name=name,
        settings=settings,
        run_config=run_config,
        space=space,
        storage_root=Path(_resolve(base_folder, settings.storage_root)),
        text=text,
    )


def _read(
    path: str | Path | None, raw: dict[str, Any] | None
) -> tuple[Any, Path | None, str | None]:
    """The file's content (or ``raw``), the study file's absolute path and its text."""
    if raw is not None:
        return raw, Path(path).resolve() if path is not None else None, None
    if path is None:
        raise StudyError("load_study: pass a study file path or raw=")
    p = Path(path)
    if not p.exists():
        raise StudyError(f"{p}: no such study file")
    try:
        content, text = read_yaml_file(
            p,
            "study file",
            "configs/quickstart.yaml (a study file holds a run config, a study: block and a "
            "search_space:)",
        )
    except ConfigError as exc:
        raise StudyError(str(exc)) from None
    return content, p.resolve(), text


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with ``{dotted path: value}`` set (the caller's dict is untouched)."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        try:
            set_dotted(raw, key, value)
        except ConfigError as exc:
            raise StudyError(f"override {key}: {exc}") from None
    return raw


def _split_sections(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], Any]:
    """Pop ``study:`` and ``search_space:`` off ``raw``, which is left as the run config."""
    study_raw = raw.pop("study", None) or {}
    space_raw = raw.pop("search_space", None)
    if not isinstance(study_raw, dict):
        raise StudyError(
            f"{source}: study: expected a mapping (name, storage_root, num_samples, ...)"
        )
    return study_raw, space_raw


def _validate_settings(study_raw: dict[str, Any], source: str) -> StudySettings:
    try:
        return StudySettings.model_validate(study_raw)
    except ValidationError as exc:
        raise StudyError(format_errors(exc, source, "study.")) from None


def _validate_run_config(run_raw: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(run_raw)
    except ValidationError as exc:
        raise StudyError(format_validation_error(exc, source)) from None


def _resolve(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p).resolve())


def _resolve_paths(run_config: RunConfig, folder: Path, source: str) -> RunConfig:
    """Paths a trial reads, made absolute against the study file's folder (trials chdir)."""
    updates: dict[str, Any] = {}
    if run_config.data.root is not None:
        updates["data"] = run_config.data.model_copy(
            update={"root": _resolve(folder, run_config.data.root)}
        )
    if run_config.dense.checkpoint is not None:
        ckpt = _resolve(folder, run_config.dense.checkpoint)
        if not Path(ckpt).is_file():
            raise StudyError(
                f"{source}: dense.checkpoint: {ckpt} does not exist; give the path of the dense "
                "model's state dict (relative to the study file), or remove dense.checkpoint to "
                "pretrain one with the pretrain section"
            )
        updates["dense"] = run_config.dense.model_copy(update={"checkpoint": ckpt})
    return run_config.model_copy(update=updates) if updates else run_config


def _study_name(
    settings: StudySettings, study_path: Path | None, run_config: RunConfig, source: str
) -> str:
    """``study.name``, else the study file's stem, else the run config's name."""
    name = settings.name or (study_path.stem if study_path else run_config.name)
    if not _NAME.fullmatch(name):
        raise StudyError(
            f"{source}: study.name: {name!r} is not a valid study name; set study.name to "
            "letters, digits, '_', '.' or '-'"
        )
    return name


def _validate_space(
    space_raw: Any, settings: StudySettings, run_config: RunConfig, source: str
) -> SearchSpace:
    """The search space, checked against the searcher, the seeds and the run config."""
    try:
        space = parse_search_space(space_raw, where=f"{source}: search_space")
        base = run_config.model_dump(mode="json")
        check_baselines(settings.baselines, space, base, where=f"{source}: study.baselines")
        check_searcher(
            settings.searcher,
            settings.objectives,
            space,
            settings.num_samples,
            baseline_trials=len(baseline_trials(settings.baselines, space)),
        )
        if settings.seeds and "seed" in space.keys:
            raise ConfigError(
                f"{source}: search_space: seed: cannot be searched together with study.seeds "
                "(replicates); remove one of them"
            )
        space.validate_against(base, where=f"{source}: search_space")
    except StudyError:
        raise
    except ConfigError as exc:
        raise StudyError(str(exc)) from None
    return space


def format_errors(err: ValidationError, source: str, prefix: str = "") -> str:
    """Like :func:`s2ap.config.format_validation_error`, with ``prefix`` before each field."""
    text = format_validation_error(err, source)
    lead = f"{source}: "
    return "\n".join(
        lead + prefix + line[len(lead) :] if line.startswith(lead) else line
        for line in text.splitlines()
    )


def _check_cross(settings: StudySettings, cfg: RunConfig, source: str) -> None:
    """Checks that need the run config and the study block together."""
    if cfg.prune.epochs < 1:
        raise StudyError(
            f"{source}: prune.epochs: is 0, so trials would have no mask to search; set it >= 1"
        )
    _check_scheduler(settings, cfg, source)
    _check_device(settings, cfg, source)


def _check_scheduler(settings: StudySettings, cfg: RunConfig, source: str) -> None:
    sch = settings.scheduler
    if sch.kind != "asha":
        return
    phases = ("prune",) if settings.trainable == "prune" else ("prune", "finetune")
    max_t = sch.max_t or sum(getattr(cfg, p).epochs for p in phases)
    if sch.time_attr == "training_iteration" and sch.grace_period > max_t:
        raise StudyError(
            f"{source}: study.scheduler.grace_period: {sch.grace_period} is more than the "
            f"{max_t} epochs a trial runs; lower it (or raise the epochs)"
        )
    if sch.time_attr != "training_iteration" and sch.max_t is None:
        raise StudyError(
            f"{source}: study.scheduler.max_t: required when time_attr is {sch.time_attr!r}"
        )


def _check_device(settings: StudySettings, cfg: RunConfig, source: str) -> None:
    """The run config's device must agree with what Ray gives a trial (study.resources)."""
    if cfg.device.startswith("cuda") and settings.resources.gpu == 0:
        raise StudyError(
            f"{source}: device: {cfg.device!r} but study.resources.gpu is 0, so Ray gives trials "
            "no GPU; set study.resources.gpu (e.g. 1 or 0.5) or device: auto"
        )
    if cfg.device == "cpu" and settings.resources.gpu > 0:
        raise StudyError(
            f"{source}: device: cpu but study.resources.gpu is {settings.resources.gpu}; set "
            "device: auto (trials use the GPU Ray assigns) or resources.gpu: 0"
        )
    if cfg.device == "mps":
        raise StudyError(f"{source}: device: mps is not supported in studies; use auto")


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(fingerprint_changes(a, b, name + "."))
        elif a != b:
            changes.append(f"{name} ({a!r} -> {b!r})")
    return changes
