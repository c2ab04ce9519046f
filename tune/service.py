"""The study service: launch, resume, submit and inspect a study (``s2ap tune/submit/status``).

``run_study`` is the whole life of a study on one driver:

1. validate (done by :func:`tune.study.load_study` before anything else; nothing is created);
2. check the storage: a new study must not overwrite an old one (``--resume``/``--overwrite``),
   a resumed one must match the study file it started from;
3. start a local Ray runtime (``address=None``) or join a cluster (``--address``), and check that
   some node can ever run a trial (Ray would leave it PENDING forever otherwise);
4. open the MLflow study run (:class:`tracking.runs.StudyTracker`);
5. build the dense model once per study (a Ray task with a trial's resources; cached under
   ``<storage_root>/dense/<hash>.pt`` by the hash of data+model+threat+pretrain+seed), or use
   ``dense.checkpoint`` as is;
6. ``Tuner.fit()`` (or ``Tuner.restore(...).fit()`` with ``--resume``): Optuna proposes,
   ASHA stops, every trial logs to its own nested MLflow run;
7. evaluate the best completed trial's selected model on the test set (a Ray task; AutoAttack),
   log it to that trial's run and the study run, write ``summary.json`` and print where
   everything is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from tune.study import (
    Study,
    StudyError,
    fingerprint_changes,
    read_study_json,
    write_study_json,
)

__all__ = [
    "LaunchOptions",
    "check_cluster_resources",
    "dense_cache_key",
    "run_study",
    "study_status",
    "submit_study",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class LaunchOptions:
    """How ``run_study`` runs a study (the ``s2ap tune`` flags)."""

    address: str | None = None
    """``None``: a local Ray runtime; ``auto`` or ``HOST:PORT``: join that cluster."""
    resume: bool = False
    overwrite: bool = False
    tracking_uri: str | None = None
    num_cpus: int | None = None
    """Local runtime only: CPUs (default: all) and logical GPUs (default: detected)."""
    num_gpus: int | None = None
    ray_temp_dir: str | None = None
    skip_resource_check: bool = False
    shared_storage: bool = False
    """The storage root is shared storage on every node (silences the multi-node warning)."""
    test_eval: bool | None = None
    """Override ``study.test_eval.enabled``."""
    verbose: int = 1


@dataclasses.dataclass
class StudyOutcome:
    """What a finished ``run_study`` returns (also written to ``summary.json``)."""

    exit_code: int
    summary: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Ray runtime and resources


def _short_temp_dir(requested: str | None) -> str:
    """A Ray temp dir with a short path (Ray's unix sockets must stay under 107 bytes)."""
    if requested:
        path = Path(requested).absolute()
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    # One folder per user (Ray keeps one session_* folder per runtime inside, like /tmp/ray).
    base = Path("/tmp" if os.name == "posix" else tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = base / f"s2ap-ray-{uid}"
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


def _init_ray(options: LaunchOptions) -> bool:
    """Start or join Ray; return True if this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": options.verbose > 0}
    if options.address in (None, "", "local"):
        ray.init(
            address="local",
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            _temp_dir=_short_temp_dir(options.ray_temp_dir),
            **common,
        )
    else:
        if options.num_cpus is not None or options.num_gpus is not None:
            raise StudyError(
                "--num-cpus/--num-gpus size a local Ray runtime; a cluster (--address) has its own"
            )
        try:
            ray.init(address=options.address, log_to_driver=options.verbose > 0)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError(
                f"--address {options.address}: cannot connect to a Ray cluster ({exc}); check "
                "the address (HOST:PORT of the head's GCS, or auto on a cluster node) and that "
                "the cluster is up (`ray status`)"
            ) from None
    return True


def check_cluster_resources(cpu: float, gpu: float, *, where: str = "the Ray cluster") -> None:
    """Fail fast if no alive node can ever hold one trial (``cpu`` CPUs and ``gpu`` GPUs).

    Ray would otherwise leave every trial PENDING forever. The message names the request,
    what the cluster has, and the fixes.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    totals = ray.cluster_resources()

    def fits(res: dict[str, float]) -> bool:
        return res.get("CPU", 0.0) >= cpu - 1e-9 and res.get("GPU", 0.0) >= gpu - 1e-9

    if any(fits(n.get("Resources", {})) for n in nodes):
        return
    per_node = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
        f"{n.get('Resources', {}).get('GPU', 0):g} GPU"
        for n in nodes
    )
    if gpu > 0 and totals.get("GPU", 0) == 0:
        fix = (
            "set study.resources.gpu: 0 to train on CPUs, or run on a cluster with GPU nodes "
            "(--address HOST:PORT)"
        )
        what = f"{where} has no GPU"
    else:
        fix = (
            "lower study.resources (cpu/gpu per trial), or add bigger nodes; on an autoscaling "
            "cluster pass --skip-resource-check"
        )
        what = f"no node of {where} has that much"
    raise StudyError(
        f"study.resources: each trial asks for {cpu:g} CPU and {gpu:g} GPU, but {what} "
        f"(total {totals.get('CPU', 0):g} CPU, {totals.get('GPU', 0):g} GPU; nodes: "
        f"{per_node or 'none alive'}); the trials would wait forever. Fix: {fix}"
    )


def _warn(message: str, err: IO[str]) -> None:
    print(f"warning: {message}", file=err, flush=True)


# --------------------------------------------------------------------------------------------
# Dense model


def dense_cache_key(study: Study) -> str:
    """Hash of what determines the pretrained dense model: data+model+threat+pretrain+seed."""
    from tracking.artifacts import config_hash

    cfg = study.run_config
    return config_hash(
        {
            "data": cfg.data.model_dump(mode="json", exclude={"eval_batch_size"}),
            "model": cfg.model.model_dump(mode="json"),
            "threat": cfg.threat.model_dump(mode="json"),
            "pretrain": cfg.pretrain.model_dump(mode="json"),
            "seed": cfg.seed,
        }
    )


def _prepare_dense(study: Study, tracker: Any, out: IO[str]) -> tuple[str | None, str | None]:
    """The dense model trials start from: (absolute path, content hash) or (None, None)."""
    import ray

    from tracking.artifacts import file_sha256
    from tune.trainable import pretrain_dense

    cfg = study.run_config
    if cfg.dense.checkpoint:
        path = cfg.dense.checkpoint
        return path, file_sha256(path)[:16]
    if cfg.pretrain.epochs <= 0:
        print(
            "note: no dense.checkpoint and pretrain.epochs is 0: trials prune a randomly "
            "initialised network",
            file=out,
        )
        return None, None
    key = dense_cache_key(study)
    path = study.dense_dir / f"{key}.pt"
    meta_path = path.with_suffix(".json")
    if path.is_file():
        print(f"dense model: {path} (cached; pretrain block hash {key})", file=out, flush=True)
    else:
        res = study.settings.resources
        print(
            f"dense model: pretraining {cfg.pretrain.epochs} epochs once for the study (-> {path})",
            file=out,
            flush=True,
        )
        task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(pretrain_dense)
        records = ray.get(
            task.remote(
                cfg.model_dump(mode="json"),
                str(path),
                gpu=res.gpu,
                allow_cpu_fallback=study.settings.allow_cpu_fallback,
            )
        )
        meta = {
            "key": key,
            "config": {
                "data": cfg.data.model_dump(mode="json"),
                "model": cfg.model.model_dump(mode="json"),
                "threat": cfg.threat.model_dump(mode="json"),
                "pretrain": cfg.pretrain.model_dump(mode="json"),
                "seed": cfg.seed,
            },
            "records": records,
        }
        meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        last = records[-1] if records else {}
        print(
            f"dense model: val clean {last.get('val_clean_acc', float('nan')):.3f}, "
            f"val robust {last.get('val_robust_acc', float('nan')):.3f}",
            file=out,
            flush=True,
        )
    if tracker is not None and not tracker.resumed and meta_path.is_file():
        records = json.loads(meta_path.read_text()).get("records", [])
        for r in records:
            tracker.log_metrics(
                {
                    f"pretrain/{k}": v
                    for k, v in r.items()
                    if k in ("val_clean_acc", "val_robust_acc", "train_robust_loss")
                },
                step=int(r.get("epoch", 0)),
            )
    return str(path), file_sha256(path)[:16]


# --------------------------------------------------------------------------------------------
# Storage: new, resumed, overwritten


def _study_exists(study: Study) -> bool:
    from ray import tune

    d = study.experiment_dir
    return study.study_json.exists() or (d.is_dir() and tune.Tuner.can_restore(str(d)))


def _check_storage(study: Study, options: LaunchOptions, tracking_uri: str) -> None:
    exists = _study_exists(study)
    d = study.experiment_dir
    here = shlex.quote(str(study.path)) if study.path else "STUDY.yaml"
    if options.resume and options.overwrite:
        raise StudyError("--resume and --overwrite exclude each other; pick one")
    if options.resume:
        if not exists:
            raise StudyError(
                f"nothing to resume: no study {study.name!r} in {study.storage_root}; "
                f"start it with `s2ap tune {here}` (without --resume)"
            )
        old = read_study_json(d)
        if old is not None:
            changes = fingerprint_changes(old.get("fingerprint", {}), study.fingerprint())
            if old.get("tracking_uri") and old["tracking_uri"] != tracking_uri:
                changes.append(f"tracking_uri ({old['tracking_uri']!r} -> {tracking_uri!r})")
            if changes:
                shown = "\n  ".join(changes[:20])
                raise StudyError(
                    f"the study file changed since study {study.name!r} started; --resume needs "
                    f"the same configuration. Changed:\n  {shown}\nRestore those values, or "
                    "start a new study (change study.name) or start over with --overwrite"
                )
        return
    if exists and not options.overwrite:
        if _complete_and_unchanged(study, tracking_uri):
            return
        raise StudyError(
            f"study {study.name!r} already exists in {d} and is not complete. Continue it with "
            f"`s2ap tune --resume {here}`, look at it with `s2ap status {here}`, start over with "
            f"`s2ap tune --overwrite {here}` (deletes its trials), or set another study.name"
        )


def _complete_and_unchanged(study: Study, tracking_uri: str) -> bool:
    """True when the study ran to its end (summary.json) from this very study file."""
    old = read_study_json(study.experiment_dir)
    if old is None or not study.summary_json.is_file():
        return False
    if old.get("tracking_uri") not in (None, tracking_uri):
        return False
    return not fingerprint_changes(old.get("fingerprint", {}), study.fingerprint())


def _delete_study(study: Study, tracking_uri: str, out: IO[str]) -> None:
    """``--overwrite``: remove the Tune experiment, the Optuna study and the MLflow runs."""
    import optuna

    if study.experiment_dir.exists():
        shutil.rmtree(study.experiment_dir)
    if study.optuna_path.exists():
        try:
            optuna.delete_study(study_name=study.name, storage=study.optuna_url)
        except KeyError:
            pass
    if not (study.storage_root.exists() or tracking_uri.startswith(("http://", "https://"))):
        return  # nothing was ever written
    try:
        from tracking.runs import TAG_STUDY, make_client

        client = make_client(tracking_uri)
        exp = client.get_experiment_by_name(study.name)
        if exp is not None:
            runs = client.search_runs(
                [exp.experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{study.name}'"
            )
            for run in runs:
                client.delete_run(run.info.run_id)
    except Exception as exc:  # the store may be unreachable; say so, do not fail the study
        _warn(f"could not delete the old MLflow runs of {study.name!r}: {exc}", out)
    print(f"--overwrite: removed the previous results of study {study.name!r}", file=out)


def _drop_stale_optuna_study(study: Study, err: IO[str]) -> None:
    """A new study must not inherit an Optuna study of the same name left in optuna.db (its
    Tune experiment is gone, so its trials would only mislead the sampler)."""
    import optuna

    if not study.optuna_path.exists():
        return
    try:
        optuna.delete_study(study_name=study.name, storage=study.optuna_url)
    except KeyError:
        return
    _warn(f"removed a stale Optuna study {study.name!r} from {study.optuna_path}", err)


def _close_dangling_runs(tracker: Any, rows: list[dict[str, Any]]) -> int:
    """Settle the MLflow trial runs Tune's record disagrees with; return how many orphans.

    * a trial Tune ended without its Trainable's knowledge (a crashed actor, a lost node):
      its run is FAILED/KILLED instead of RUNNING forever;
    * an *orphan*: a trial a killed driver had started (or even finished) after its last
      experiment snapshot. ``--resume`` cannot know it and samples a new trial instead, so its
      run is not part of the study's results: KILLED, tagged ``s2ap.outcome=orphaned`` (the
      best-trial lookup and reports read FINISHED runs only).
    """
    from tracking.runs import make_client

    state = {r["trial_id"]: r["state"] for r in rows}
    orphans = 0
    try:
        runs = tracker.trials()
        client = make_client(tracker.tracking_uri)
        for run in runs:
            if run["trial_id"] not in state:
                if run["tags"].get("s2ap.outcome") != "orphaned":
                    client.set_tag(run["run_id"], "s2ap.outcome", "orphaned")
                    client.set_terminated(run["run_id"], "KILLED")
                orphans += 1
            elif run["status"] == "RUNNING":
                status = "FAILED" if state[run["trial_id"]] == "ERROR" else "KILLED"
                client.set_terminated(run["run_id"], status)
    except Exception as exc:  # bookkeeping only
        _log.warning("could not settle the trial runs in MLflow: %s", exc)
    return orphans


def _fix_orphan_optuna_trials(study: Study) -> int:
    """Mark Optuna trials left RUNNING by a killed driver as FAIL; return how many.

    A driver killed between asking Optuna for a configuration and saving the experiment state
    leaves an Optuna trial no Tune trial owns; after a complete run nothing may be RUNNING.
    """
    import optuna

    if not study.optuna_path.exists():
        return 0
    try:
        ostudy = optuna.load_study(study_name=study.name, storage=study.optuna_url)
    except KeyError:
        return 0
    orphans = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in orphans:
        ostudy._storage.set_trial_user_attr(t._trial_id, "s2ap_orphan", True)
        ostudy.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


# --------------------------------------------------------------------------------------------
# Trials, results, best trial


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _value(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _trial_rows(study: Study, trials: list[Any]) -> list[dict[str, Any]]:
    """One row per trial: id, state, epochs, sampled config, metrics (from Tune's records)."""
    rows = []
    for t in trials:
        last = t.last_result or {}
        config = {k: v for k, v in (t.config or {}).items() if k in study.space.params}
        epochs = int(last.get("training_iteration", 0) or 0)
        rows.append(
            {
                "trial_id": t.trial_id,
                "state": t.status,
                "epochs": epochs,
                "completed": epochs >= study.epochs_per_trial and t.status == "TERMINATED",
                "config": config,
                "metrics": {
                    k: _value(last, k)
                    for k in (
                        "val_robust_acc",
                        "val_clean_acc",
                        "best_val_robust_acc",
                        "sparsity",
                        "mask_hamming",
                        "sharpness",
                        *[o.metric for o in study.settings.objectives],
                    )
                },
                "checkpoint": (t.checkpoint.path if getattr(t, "checkpoint", None) else None),
                "finished_at": _value(last, "result_time"),
                "error": t.error_file if t.status == "ERROR" else None,
            }
        )
    return rows


def _best_row(study: Study, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best *completed* trial on the first objective (early-stopped ones did not finish).

    Ties go to the next objectives in order, then to the trial that finished first.
    """
    objs = study.settings.objectives
    scored = [r for r in rows if r["completed"] and r["metrics"].get(objs[0].metric) is not None]
    if not scored:
        return None

    def key(r: dict[str, Any]) -> tuple[float, ...]:
        vals = []
        for o in objs:
            v = r["metrics"].get(o.metric)
            vals.append(-math.inf if v is None else (v if o.mode == "max" else -v))
        return (*vals, -(r.get("finished_at") or 0.0))

    return max(scored, key=key)


def _pareto(study: Study, rows: list[dict[str, Any]]) -> list[str]:
    """Trial ids on the Pareto front of the objectives (completed trials)."""
    objs = study.settings.objectives
    pts = []
    for r in rows:
        vals = [r["metrics"].get(o.metric) for o in objs]
        if r["completed"] and all(v is not None for v in vals):
            pts.append((r["trial_id"], [v if o.mode == "max" else -v for v, o in zip(vals, objs)]))

    def dominated(a: list[float], b: list[float]) -> bool:
        return all(y >= x for x, y in zip(a, b)) and any(y > x for x, y in zip(a, b))

    return [tid for tid, a in pts if not any(dominated(a, b) for _, b in pts)]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_trials_table(study: Study, rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the trials (for ``s2ap status`` and the end of ``s2ap tune``)."""
    keys = study.space.keys
    obj_cols = [o.metric for o in study.settings.objectives]
    cols = [
        "trial",
        "state",
        "epochs",
        *keys,
        *dict.fromkeys([*obj_cols, "best_val_robust_acc", "sparsity"]),
    ]
    table = [cols]
    for r in rows:
        state = r["state"] + ("" if r["completed"] or r["state"] != "TERMINATED" else " (stopped)")
        table.append(
            [
                r["trial_id"],
                state,
                str(r["epochs"]),
                *[_fmt(r["config"].get(k)) for k in keys],
                *[_fmt(r["metrics"].get(c)) for c in cols[3 + len(keys) :]],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def _trial_params(info: dict[str, Any]) -> dict[str, Any]:
    """The params of a trial's MLflow run (recorded in its checkpoint's trial.json)."""
    return dict(info.get("params") or {})


def _evaluate_overrides(study: Study) -> dict[str, Any]:
    """``study.test_eval`` fields that replace the run config's ``evaluate`` section."""
    te = study.settings.test_eval
    fields = {"autoattack": te.autoattack, "n_examples": te.n_examples, "pgd_steps": te.pgd_steps}
    return {k: v for k, v in fields.items() if v is not None}


def _test_eval(
    study: Study, best: dict[str, Any], tracking_ctx: dict[str, str] | None, out: IO[str]
) -> dict[str, Any] | None:
    import ray

    from tune.trainable import evaluate_trial_checkpoint

    if not best.get("checkpoint"):
        _warn(f"best trial {best['trial_id']} has no checkpoint; skipping the test evaluation", out)
        return None
    done = Path(best["checkpoint"], "test.json")
    if done.is_file():  # test_eval.every_trial: the trial evaluated itself (and logged it)
        return json.loads(done.read_text())
    overrides = _evaluate_overrides(study)
    info = json.loads(Path(best["checkpoint"], "trial.json").read_text())
    res = study.settings.resources
    ev = study.run_config.evaluate.model_copy(update=overrides)
    print(
        f"test evaluation of trial {best['trial_id']}: {ev.n_examples} examples, "
        f"PGD-{ev.pgd_steps}{', AutoAttack' if ev.autoattack else ''} ...",
        file=out,
        flush=True,
    )
    task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(evaluate_trial_checkpoint)
    return ray.get(
        task.remote(
            best["checkpoint"],
            evaluate_overrides=overrides,
            gpu=res.gpu,
            allow_cpu_fallback=study.settings.allow_cpu_fallback,
            tracking=tracking_ctx,
            trial_id=best["trial_id"],
            params=_trial_params(info),
        )
    )


def _print_summary(study: Study, summary: dict[str, Any], out: IO[str]) -> None:
    here = shlex.quote(str(study.path)) if study.path else "STUDY.yaml"
    best = summary.get("best")
    obj = study.objective
    print("", file=out)
    print(f"study {study.name}: {summary['counts']}", file=out)
    if best:
        print(f"best trial: {best['trial_id']} ({obj.metric} {obj.mode})", file=out)
        for k, v in best["config"].items():
            print(f"  {k} = {v!r}", file=out)
        m = best["metrics"]
        print(
            f"  validation (last epoch): robust {_fmt(m.get('val_robust_acc'))}, clean "
            f"{_fmt(m.get('val_clean_acc'))}; selected epoch: robust "
            f"{_fmt(m.get('best_val_robust_acc'))}; sparsity {_fmt(m.get('sparsity'))}",
            file=out,
        )
        t = summary.get("test")
        if t:
            aa = t.get("test_autoattack_acc")
            steps = study.settings.test_eval.pgd_steps or study.run_config.evaluate.pgd_steps
            print(
                f"  test ({int(t.get('test_examples', 0))} examples): clean "
                f"{_fmt(t.get('test_clean_acc'))}, PGD-{steps} {_fmt(t.get('test_pgd_acc'))}"
                + (f", AutoAttack {_fmt(aa)}" if aa is not None else ""),
                file=out,
            )
    else:
        print("no trial completed, so there is no best trial", file=out)
    if len(study.settings.objectives) > 1 and summary.get("pareto"):
        print(
            f"Pareto front ({', '.join(o.metric for o in study.settings.objectives)}): "
            f"{', '.join(summary['pareto'])}",
            file=out,
        )
    print("", file=out)
    print("results:", file=out)
    print(f"  trials, checkpoints:  {study.experiment_dir}", file=out)
    print(f"  summary:              {study.summary_json}", file=out)
    print(f"  MLflow:               {summary['tracking_uri']}  (open: s2ap ui {here})", file=out)
    print(f"  best mask:            s2ap masks pull {here} --out ./best-mask", file=out)
    print(f"  Optuna study:         optuna-dashboard {study.optuna_url}", file=out)
    print(f"  table again:          s2ap status {here}", file=out)


# --------------------------------------------------------------------------------------------
# Launch / resume


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
    from ray import tune

    from tracking.runs import StudyTracker, TrackingUnavailableError, resolve_tracking_uri
    from tune.cluster import check_storage_for_address
    from tune.search import make_scheduler, make_searcher
    from tune.trainable import S2APTrainable, make_trial_context

    options = options or LaunchOptions()
    # With a checkpoint per epoch, Tune snapshots the experiment often; that is wanted (resume
    # loses nothing) and cheap here, so its "excessive snapshots" warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    out = out or sys.stdout
    err = err or sys.stderr
    settings = study.settings
    try:
        tracking_uri = resolve_tracking_uri(
            options.tracking_uri or settings.tracking_uri, study.storage_root
        )
    except ValueError as exc:
        raise StudyError(f"study.tracking_uri: {exc}") from None
    _check_storage(study, options, tracking_uri)
    if not (options.resume or options.overwrite) and _complete_and_unchanged(study, tracking_uri):
        # Idempotent: running a finished study again shows its results (`make run` twice).
        summary = json.loads(study.summary_json.read_text())
        print(format_trials_table(study, summary.get("trials", [])), file=out)
        _print_summary(study, summary, out)
        print(
            f"\nstudy {study.name!r} is already complete (results above); start it over with "
            "--overwrite, or set another study.name",
            file=out,
        )
        return StudyOutcome(0, summary)

    import ray

    started = _init_ray(options)
    tracker = None
    try:
        if not options.skip_resource_check:
            check_cluster_resources(settings.resources.cpu, settings.resources.gpu)
        if options.address not in (None, "", "local"):
            alive = [n for n in ray.nodes() if n.get("Alive")]
            warning = check_storage_for_address(
                options.address,
                study.storage_root,
                shared=options.shared_storage,
                num_nodes=len(alive),
            )
            if warning:
                _warn(warning, err)

        # From here on the study's storage is written.
        if options.overwrite:
            _delete_study(study, tracking_uri, out)
        study.storage_root.mkdir(parents=True, exist_ok=True)
        tracker = StudyTracker(
            tracking_uri,
            study.name,
            # MLflow params are write-once: only what --resume keeps fixed (the fingerprint).
            study_config={
                "study": settings.model_dump(mode="json", exclude={"test_eval", "max_failures"}),
                "search_space": study.space.to_dict(),
            },
            storage_root=study.storage_root,
            study_text=study.path.read_text() if study.path else None,
            tags={"s2ap.storage_root": str(study.storage_root)},
        )
        try:
            tracker.start()
        except TrackingUnavailableError as exc:
            raise StudyError(f"MLflow: {exc}") from None
        resumed = options.resume and tune.Tuner.can_restore(str(study.experiment_dir))
        if not resumed:
            _drop_stale_optuna_study(study, err)
            if tracker.resumed and not options.resume:
                _warn(
                    f"MLflow at {tracking_uri} already has a study run named {study.name!r} "
                    "(from an earlier study whose folder is gone); the new trials are added to "
                    "it. Pass --overwrite to remove the old runs, or set another study.name",
                    err,
                )
        if not options.resume or read_study_json(study.experiment_dir) is None:
            write_study_json(study)
            data = json.loads(study.study_json.read_text())
            data["tracking_uri"] = tracking_uri
            _write_json(study.study_json, data)

        dense_path, dense_hash = _prepare_dense(study, tracker, out)
        base = study.base_dict()
        if dense_path:
            base["dense"]["checkpoint"] = dense_path
        context = make_trial_context(
            study_name=study.name,
            base=base,
            phases=study.phases,
            seeds=settings.seeds,
            dense_path=dense_path,
            dense_hash=dense_hash,
            tracking=tracker.trial_context(),
            gpu=settings.resources.gpu,
            allow_cpu_fallback=settings.allow_cpu_fallback,
            search_keys=study.space.keys,
            test_eval=_evaluate_overrides(study) if settings.test_eval.every_trial else None,
        )
        param_space = {"s2ap": context}
        trainable = tune.with_resources(
            S2APTrainable, {"cpu": settings.resources.cpu, "gpu": settings.resources.gpu}
        )
        if resumed:
            print(f"resuming study {study.name} from {study.experiment_dir}", file=out, flush=True)
            tuner = tune.Tuner.restore(
                str(study.experiment_dir),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space,
            )
        else:
            searcher = make_searcher(
                settings.searcher,
                settings.objectives,
                study.space,
                study_name=study.name,
                storage_url=study.optuna_url,
            )
            scheduler = make_scheduler(settings.scheduler, study.objective, study.epochs_per_trial)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=settings.num_samples,
                    max_concurrent_trials=settings.max_concurrent_trials,
                    reuse_actors=settings.reuse_actors,
                    time_budget_s=settings.time_budget_s,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=study.name,
                    storage_path=str(study.storage_root),
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=settings.checkpoint.num_to_keep,
                        checkpoint_frequency=settings.checkpoint.frequency,
                        checkpoint_at_end=True,
                    ),
                    failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                    verbose=options.verbose,
                ),
            )
        t0 = time.monotonic()
        results = tuner.fit()
        wall = time.monotonic() - t0

        rows = _trial_rows(study, [r for r in _grid_trials(results)])
        n_err = sum(r["state"] == "ERROR" for r in rows)
        unfinished = [r for r in rows if r["state"] not in ("TERMINATED", "ERROR")]
        n_stopped = sum(r["state"] == "TERMINATED" and not r["completed"] for r in rows)
        counts = (
            f"{len(rows)} trials: {sum(r['completed'] for r in rows)} completed, "
            f"{n_stopped} stopped early, {n_err} failed"
            + (f", {len(unfinished)} unfinished" if unfinished else "")
        )
        print("", file=out)
        print(format_trials_table(study, rows), file=out)
        if unfinished:
            here = shlex.quote(str(study.path)) if study.path else "STUDY.yaml"
            print(f"\nstudy interrupted; continue it with `s2ap tune --resume {here}`", file=err)
            tracker.finish("KILLED")
            return StudyOutcome(130, {"counts": counts, "trials": rows})
        _fix_orphan_optuna_trials(study)
        _close_dangling_runs(tracker, rows)
        for r in rows:
            if r["state"] == "ERROR":
                print(f"trial {r['trial_id']} failed: {_error_text(r['error'])}", file=err)

        best = _best_row(study, rows)
        test = None
        run_eval = settings.test_eval.enabled if options.test_eval is None else options.test_eval
        if best is not None and run_eval:
            test = _test_eval(study, best, tracker.trial_context(), out)
        summary = {
            "study": study.name,
            "study_file": str(study.path) if study.path else None,
            "experiment_dir": str(study.experiment_dir),
            "tracking_uri": tracking_uri,
            "optuna_storage": study.optuna_url,
            "objectives": [o.model_dump() for o in settings.objectives],
            "counts": counts,
            "fit_wall_s": wall,
            "best": best,
            "test": test,
            "pareto": _pareto(study, rows) if len(settings.objectives) > 1 else None,
            "trials": rows,
        }
        _write_json(study.summary_json, summary)
        if best is not None:
            tracker.set_tags({"s2ap.best_trial_id": best["trial_id"]})
            numbers = {f"best/{k}": v for k, v in best["metrics"].items() if v is not None}
            if test:
                numbers.update({f"best/{k}": v for k, v in test.items() if isinstance(v, float)})
            tracker.log_metrics(numbers, step=0)
            # Tags, not params: a resumed study may pick another best trial.
            tracker.set_tags({f"s2ap.best.{k}": v for k, v in best["config"].items()})
        tracker.log_artifact(study.summary_json)
        with _suppress_all():
            tracker.log_study_plots(
                hyperparameters=tuple(k.split(".")[-1] for k in study.space.keys)
            )
        _print_summary(study, summary, out)
        code = 0 if n_err == 0 else 1
        tracker.finish("FINISHED" if code == 0 else "FAILED")
        return StudyOutcome(code, summary)
    except KeyboardInterrupt:
        if tracker is not None and tracker.parent_run_id:
            tracker.finish("KILLED")
        here = shlex.quote(str(study.path)) if study.path else "STUDY.yaml"
        print(f"\ninterrupted; continue with `s2ap tune --resume {here}`", file=err)
        return StudyOutcome(130, {})
    except BaseException:
        if tracker is not None and tracker.parent_run_id:
            with _suppress_all():
                tracker.finish("FAILED")
        raise
    finally:
        if started:
            ray.shutdown()


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            _log.warning("ignored: %s: %s", type(exc).__name__, exc)
            return True
        return False


def _grid_trials(results: Any) -> list[Any]:
    """The Trial objects behind a ResultGrid (status, config, last result, checkpoint)."""
    analysis = getattr(results, "_experiment_analysis", None)
    if analysis is None:
        raise RuntimeError("this Ray version's ResultGrid does not expose its trials")
    return list(analysis.trials)


def _error_text(error_file: str | None) -> str:
    if not error_file:
        return "(no error file)"
    try:
        text = Path(error_file).read_text(errors="replace").strip()
    except OSError:
        return f"(see {error_file})"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # The last lines of a Ray error hold the root cause.
    tail = [ln for ln in lines if "Error" in ln or "error" in ln][-1:] or lines[-1:]
    return f"{tail[0].strip()} (full traceback: {error_file})"


# --------------------------------------------------------------------------------------------
# Status


def study_status(study: Study) -> dict[str, Any]:
    """Trials (config, state, metrics) and the best configuration, read from the experiment
    folder without starting Ray or any trial."""
    from ray import tune

    d = study.experiment_dir
    if not d.is_dir() or not tune.Tuner.can_restore(str(d)):
        raise StudyError(
            f"no results for study {study.name!r} in {study.storage_root} yet; start it with "
            f"`s2ap tune {shlex.quote(str(study.path)) if study.path else 'STUDY.yaml'}`"
        )
    analysis = tune.ExperimentAnalysis(
        str(d), default_metric=study.objective.metric, default_mode=study.objective.mode
    )
    rows = _trial_rows(study, analysis.trials)
    summary = json.loads(study.summary_json.read_text()) if study.summary_json.is_file() else {}
    return {
        "study": study.name,
        "experiment_dir": str(d),
        "trials": rows,
        "best": _best_row(study, rows),
        "test": summary.get("test"),
        "tracking_uri": summary.get("tracking_uri"),
    }


# --------------------------------------------------------------------------------------------
# Submit


def submit_study(
    study: Study,
    address: str,
    *,
    tune_args: list[str] | None = None,
    working_dir: str | None = None,
    wait: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    timeout_s: float | None = None,
) -> tuple[str, str]:
    """Submit ``s2ap tune <study> --address auto`` as a Ray Job; return (job id, final status).

    ``working_dir`` (default: the study file's folder) is uploaded as the job's runtime_env
    working_dir; the entrypoint names the study file relative to it. The storage root is
    passed as an absolute path: on a multi-node cluster it must be shared storage that the
    head (where the job's driver runs) sees at the same path.
    """
    from ray.job_submission import JobSubmissionClient

    from tune.cluster import check_storage_for_address

    out = out or sys.stdout
    err = err or sys.stderr
    if study.path is None:
        raise StudyError("submit needs a study file")
    wd = Path(working_dir).resolve() if working_dir else study.path.parent
    try:
        rel = study.path.relative_to(wd)
    except ValueError:
        raise StudyError(
            f"--working-dir {wd} does not contain the study file {study.path}; pick a folder "
            "above it"
        ) from None
    warning = check_storage_for_address(address, study.storage_root)
    if warning:
        _warn(warning, err)
    args = [
        "s2ap",
        "tune",
        str(rel),
        "--address",
        "auto",
        "--storage-root",
        str(study.storage_root),
        *(tune_args or []),
    ]
    entrypoint = shlex.join(args)
    excludes = [".git", ".venv", "__pycache__", "*.pyc"]
    try:
        root_rel = study.storage_root.relative_to(wd)
        excludes.append(f"/{root_rel.as_posix()}")
    except ValueError:
        pass
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:
        raise StudyError(
            f"--address {address}: cannot reach the Ray job API ({exc}); give the dashboard URL "
            "of the head (http://HEAD:8265)"
        ) from None
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(wd), "excludes": excludes},
        metadata={"s2ap_study": study.name},
    )
    print(f"submitted study {study.name} as Ray job {job_id}", file=out)
    print(f"  entrypoint: {entrypoint}", file=out)
    print(f"  follow:     ray job logs --follow --address {address} {job_id}", file=out)
    print(f"  status:     ray job status --address {address} {job_id}", file=out)
    print(f"  stop:       ray job stop --address {address} {job_id}", file=out, flush=True)
    status = _job_status_text(client.get_job_status(job_id))
    if wait:
        from ray.job_submission import JobStatus

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            st = client.get_job_status(job_id)
            if st in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                status = _job_status_text(st)
                break
            if deadline is not None and time.monotonic() > deadline:
                status = _job_status_text(st)
                break
            time.sleep(2)
        print(f"job {job_id}: {status}", file=out)
    return job_id, status


def _job_status_text(status: Any) -> str:
    return str(getattr(status, "value", status))
