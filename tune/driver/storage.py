"""A study's storage: is it new, resumed or overwritten, and the records kept beside Ray's.

Before anything is written, :func:`check_storage` decides whether this launch may use the
study's folder: a new study must not overwrite an old one (``--resume``/``--overwrite``), and a
resumed one must match the study file it started from (``study.json``'s fingerprint and the
tracking URI), and the tensor files the trials will load (the dense model; with ``--resume``
every trial checkpoint) must hold tensors and plain data only (:func:`check_study_files`).
Only then does the service write: :func:`delete_study` (``--overwrite``),
:func:`drop_stale_optuna_study`, :func:`write_study_json`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO, Any

from tune.common.console import warn
from tune.common.files import write_json
from tune.study.file import Study, StudyError, fingerprint_changes

__all__ = [
    "check_storage",
    "check_study_files",
    "delete_study",
    "drop_stale_optuna_study",
    "is_complete",
    "read_study_json",
    "study_exists",
    "study_tensor_files",
    "write_study_json",
]


def write_study_json(study: Study, tracking_uri: str) -> None:
    """Record the resolved study (what ``--resume`` compares against) in its experiment folder."""
    write_json(
        study.study_json,
        {
            "study_file": str(study.path) if study.path else None,
            "fingerprint": study.fingerprint(),
            "fingerprint_hash": study.fingerprint_hash(),
            "tracking_uri": tracking_uri,
        },
    )


def read_study_json(study: Study) -> dict[str, Any] | None:
    """``study.json`` as the launch that started the study wrote it (``None``: not started)."""
    if not study.study_json.is_file():
        return None
    return json.loads(study.study_json.read_text(encoding="utf-8"))


def study_exists(study: Study) -> bool:
    """True when an earlier launch left this study's records (study.json or a Tune experiment)."""
    if study.study_json.exists():
        return True
    if not study.experiment_dir.is_dir():
        return False  # decided without importing Ray Tune (~1 s; a new study's launch waits)
    from ray import tune

    return tune.Tuner.can_restore(str(study.experiment_dir))


def _changes_since_start(study: Study, tracking_uri: str, start: dict[str, Any]) -> list[str]:
    """What differs between this launch and the one that started the study (``start``: its
    ``study.json``), as dotted keys."""
    changes = fingerprint_changes(start.get("fingerprint", {}), study.fingerprint())
    if start.get("tracking_uri") and start["tracking_uri"] != tracking_uri:
        changes.append(f"tracking_uri ({start['tracking_uri']!r} -> {tracking_uri!r})")
    return changes


def _is_complete(study: Study, tracking_uri: str, start: dict[str, Any] | None) -> bool:
    return (
        start is not None
        and study.summary_json.is_file()
        and not _changes_since_start(study, tracking_uri, start)
    )


def is_complete(study: Study, tracking_uri: str) -> bool:
    """True when the study ran to its end (summary.json) from this very study file."""
    return _is_complete(study, tracking_uri, read_study_json(study))


def study_tensor_files(study: Study, *, resume: bool) -> list[Path]:
    """The tensor files a launch loads from disk: the dense model (given, or the study's
    cached one) and, when resuming, every trial checkpoint's ``state.pt``."""
    from tune.driver.dense import dense_cache_key

    cfg = study.run_config
    files = []
    if cfg.dense.checkpoint:
        files.append(Path(cfg.dense.checkpoint))
    elif cfg.pretrain.epochs > 0:
        cached = study.dense_dir / f"{dense_cache_key(study)}.pt"
        if cached.is_file():
            files.append(cached)
    if resume and study.experiment_dir.is_dir():
        files += sorted(study.experiment_dir.glob("*/checkpoint_*/state.pt"))
    return files


def check_study_files(study: Study, *, resume: bool) -> None:
    """Refuse a launch before it starts if a tensor file it would load holds anything but
    tensors and plain data (:class:`~tune.common.untrusted.UntrustedFileError`); reads no tensor."""
    from tune.common.untrusted import check_tensor_file

    for path in study_tensor_files(study, resume=resume):
        check_tensor_file(path)


def check_storage(study: Study, tracking_uri: str, *, resume: bool, overwrite: bool) -> bool:
    """Refuse a launch that would mix two studies in one folder, or load a tampered tensor
    file; writes nothing. Returns whether the study is complete (:func:`is_complete`)."""
    if resume and overwrite:
        raise StudyError("--resume and --overwrite exclude each other; pick one")
    start = read_study_json(study)
    exists = start is not None or study_exists(study)
    here = study.shell_arg
    check_study_files(study, resume=resume and exists)
    complete = _is_complete(study, tracking_uri, start)
    if resume:
        if not exists:
            raise StudyError(
                f"nothing to resume: no study {study.name!r} in {study.storage_root}; "
                f"start it with `s2ap tune {here}` (without --resume)"
            )
        changes = _changes_since_start(study, tracking_uri, start) if start is not None else []
        if changes:
            shown = "\n  ".join(changes[:20])
            raise StudyError(
                f"the study file changed since study {study.name!r} started; --resume needs "
                f"the same configuration. Changed:\n  {shown}\nRestore those values, or "
                "start a new study (change study.name) or start over with --overwrite"
            )
    elif exists and not overwrite and not complete:
        raise StudyError(
            f"study {study.name!r} already exists in {study.experiment_dir} and is not complete. "
            f"Continue it with `s2ap tune --resume {here}`, look at it with `s2ap status {here}`, "
            f"start over with `s2ap tune --overwrite {here}` (deletes its trials), or set "
            "another study.name"
        )
    return complete


def delete_study(study: Study, tracking_uri: str, out: IO[str]) -> None:
    """``--overwrite``: remove the Tune experiment, the Optuna study, the MLflow runs and the
    model versions registered from them."""
    if study.experiment_dir.exists():
        shutil.rmtree(study.experiment_dir)
    _delete_optuna_study(study)
    if not (study.storage_root.exists() or tracking_uri.startswith(("http://", "https://"))):
        return  # nothing was ever written
    try:
        _delete_mlflow_runs(study.name, tracking_uri)
    except Exception as exc:  # the store may be unreachable; say so, do not fail the study
        warn(f"could not delete the old MLflow runs of {study.name!r}: {exc}", out)
    print(f"--overwrite: removed the previous results of study {study.name!r}", file=out)


def _delete_optuna_study(study: Study) -> bool:
    """Delete the study's Optuna study from its journal; False when there was none."""
    import optuna

    if not study.optuna_path.exists():
        return False
    try:
        optuna.delete_study(study_name=study.name, storage=study.optuna_storage())
    except KeyError:
        return False
    return True


def _delete_mlflow_runs(study_name: str, tracking_uri: str) -> None:
    from tracking.client import TAG_STUDY, filter_quote, make_client, search_all_runs
    from tracking.registry import delete_versions_of_runs

    client = make_client(tracking_uri)
    exp = client.get_experiment_by_name(study_name)
    if exp is None:
        return
    flt = f"tags.`{TAG_STUDY}` = {filter_quote(study_name)}"
    # Every page first: deleting while paging would shift the pages under the token.
    runs = list(search_all_runs(client, [exp.experiment_id], flt))
    for run in runs:
        client.delete_run(run.info.run_id)
    # The registered model models:/<study>@best held these runs' models (tracking.registry).
    delete_versions_of_runs(client, study_name, {run.info.run_id for run in runs})


def drop_stale_optuna_study(study: Study, err: IO[str]) -> None:
    """A new study must not inherit an Optuna study of the same name left in the journal (its
    Tune experiment is gone, so its trials would only mislead the sampler)."""
    if _delete_optuna_study(study):
        warn(f"removed a stale Optuna study {study.name!r} from {study.optuna_path}", err)
