"""Find a study's best trial in MLflow and pull its mask (and weights) to a local folder.

The best trial is the one :mod:`tracking.selection` defines: among the completed trial runs
(``s2ap.role=trial``, status FINISHED with ``s2ap.outcome=completed``; a running, failed or
early-stopped trial's last metric is not a result, and a trial the scheduler stopped ends
FINISHED too), ranked on the objectives in order by each run's latest logged value (what the trial
reported last and what the MLflow runs table shows), ties to the smallest trial id. When the
requested metric and mode are the study's own first objective (the study run's
``s2ap.objective.*`` tags), the study run's ``s2ap.best_trial_id`` tag, set by the study service
when the study finished, names the trial and wins. Works against an embedded sqlite store or an
``http://`` server with proxied artifacts alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.artifacts import MASK_SUFFIX, read_mask_bits
from tracking.client import (
    PRIMARY_METRIC,
    ROLE_STUDY,
    ROLE_TRIAL,
    TAG_BEST_TRIAL_ID,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_OBJECTIVES,
    TAG_OUTCOME,
    TAG_ROLE,
    TAG_TRIAL_ID,
    filter_quote,
    is_completed_run,
    make_client,
    resolve_tracking_uri,
    search_all_runs,
)
from tracking.selection import Candidate, Objective, best_candidate


class StudyNotFoundError(LookupError):
    """No experiment with the study's name exists in the tracking store."""


class NoFinishedTrialError(LookupError):
    """The study exists but no completed trial has the requested metric."""


@dataclasses.dataclass(frozen=True)
class BestTrial:
    """The selected trial run."""

    study_name: str
    experiment_id: str
    run_id: str
    trial_id: str | None
    metric: str
    value: float
    params: dict[str, str]
    tags: dict[str, str]
    artifact_uri: str


@dataclasses.dataclass(frozen=True)
class PulledMask:
    """Paths of what was downloaded, the verified mask header, and where it came from."""

    mask_path: str
    weights_path: str | None
    header: dict[str, Any]
    payload_sha256: str
    run_id: str
    trial_id: str | None
    best: BestTrial | None
    info_path: str


def _client(tracking_uri: str) -> MlflowClient:
    """A reader's client: a missing sqlite store is an error, never created empty."""
    if not tracking_uri:
        raise ValueError("tracking_uri is required (http://host:port or sqlite:////abs/mlflow.db)")
    return make_client(resolve_tracking_uri(tracking_uri, "."), read_only=True)


def study_experiment(client: MlflowClient, tracking_uri: str, study_name: str) -> Any:
    """The study's MLflow experiment; :class:`StudyNotFoundError` lists the studies there."""
    exp = client.get_experiment_by_name(study_name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments(max_results=50))
        raise StudyNotFoundError(
            f"no study {study_name!r} at {tracking_uri}; studies there: "
            f"{', '.join(names) if names else '(none)'}"
        )
    return exp


def _objective(metric: Any, mode: Any) -> Objective:
    if not isinstance(metric, str) or not metric or mode not in ("max", "min"):
        raise ValueError(f"not an objective: metric={metric!r}, mode={mode!r}")
    return Objective(metric, mode)


def study_objectives(study_tags: dict[str, str]) -> list[Objective]:
    """The study's objectives as its run records them (:func:`tracking.runs.objective_tags`);
    empty when the run records none (a study from before these tags) or they are unreadable."""
    try:
        listed = [
            _objective(o["metric"], o["mode"]) for o in json.loads(study_tags[TAG_OBJECTIVES])
        ]
    except (ValueError, TypeError, KeyError):
        listed = []
    try:
        first = _objective(study_tags.get(TAG_OBJECTIVE_METRIC), study_tags.get(TAG_OBJECTIVE_MODE))
    except ValueError:
        return listed
    return listed if listed and listed[0] == first else [first]


def finished_trial_runs(
    client: MlflowClient, experiment_id: str, trial_id: str | None = None
) -> tuple[dict[str, Any], Counter[str]]:
    """The trial runs (``s2ap.role=trial``) of an experiment: trial id -> its completed run
    (:func:`tracking.client.is_completed_run`; the latest one if a restored trial has several),
    and how many of the other runs ended each way: their status (``RUNNING``, ``FAILED``,
    ``KILLED``) or, for a FINISHED run that is not a result, its outcome (``stopped_early``).
    ``trial_id`` reads that trial's runs only."""
    flt = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
    if trial_id:
        flt += f" AND tags.`{TAG_TRIAL_ID}` = {filter_quote(trial_id)}"
    trials = search_all_runs(client, [experiment_id], flt)
    finished: dict[str, Any] = {}
    unfinished: Counter[str] = Counter()
    for r in sorted(trials, key=lambda r: r.info.end_time or 0):
        if is_completed_run(r):
            finished[r.data.tags.get(TAG_TRIAL_ID) or r.info.run_id] = r
        elif r.info.status == "FINISHED":
            unfinished[r.data.tags.get(TAG_OUTCOME, r.info.status)] += 1
        else:
            unfinished[r.info.status] += 1
    return finished, unfinished


def _finished_trials(client: MlflowClient, study_name: str, experiment_id: str) -> dict[str, Any]:
    """:func:`finished_trial_runs`; :class:`NoFinishedTrialError` (with the statuses) if none."""
    finished, unfinished = finished_trial_runs(client, experiment_id)
    if not finished:
        listing = ", ".join(f"{n} {s}" for s, n in sorted(unfinished.items())) or "no trial runs"
        raise NoFinishedTrialError(
            f"study {study_name!r} has no completed trial ({listing}); wait for trials to finish "
            "or resume the study"
        )
    return finished


def study_run(client: MlflowClient, experiment_id: str) -> Any | None:
    """The study's run (the oldest, if a lost driver left several), or ``None``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_STUDY}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _select(finished: dict[str, Any], objectives: list[Objective], tagged: str | None) -> Any:
    """The tagged trial's run if it finished with a value, else the best on ``objectives``."""
    if tagged in finished and objectives[0].metric in finished[tagged].data.metrics:
        return finished[tagged]
    candidates = [Candidate(tid, dict(r.data.metrics)) for tid, r in finished.items()]
    best = best_candidate(candidates, objectives)
    return finished[best.trial_id] if best else None


def find_best_trial(
    tracking_uri: str,
    study_name: str,
    metric: str | None = None,
    mode: str | None = None,
) -> BestTrial:
    """Return the best finished trial of ``study_name`` (see the module docstring).

    ``metric``/``mode`` (``"max"`` or ``"min"``) default to the study's first objective as its
    run records it, else ``val_robust_acc``/``max``. Raises :class:`StudyNotFoundError` (listing
    the studies that exist) or :class:`NoFinishedTrialError` (listing the trials' statuses /
    metric names).
    """
    if mode not in (None, "max", "min"):
        raise ValueError(f"mode={mode!r}: use 'max' or 'min'")
    client = _client(tracking_uri)
    exp = study_experiment(client, tracking_uri, study_name)
    parent = study_run(client, exp.experiment_id)
    study_tags = dict(parent.data.tags) if parent else {}
    own = study_objectives(study_tags)
    metric = metric or (own[0].metric if own else PRIMARY_METRIC)
    requested = _objective(
        metric, mode or (own[0].mode if own and own[0].metric == metric else "max")
    )
    is_own = bool(own) and own[0] == requested
    objectives = own if is_own else [requested]
    tagged = study_tags.get(TAG_BEST_TRIAL_ID) if is_own else None
    # The study named its best trial: read that trial's runs only, not every run of a study
    # that may hold thousands (the whole study is read when it did not, or asked otherwise).
    finished: dict[str, Any] = {}
    if tagged:
        finished, _ = finished_trial_runs(client, exp.experiment_id, trial_id=tagged)
    if not any(objectives[0].metric in r.data.metrics for r in finished.values()):
        finished = _finished_trials(client, study_name, exp.experiment_id)
    best = _select(finished, objectives, tagged)
    if best is None:
        keys = sorted({k for r in finished.values() for k in r.data.metrics})
        raise NoFinishedTrialError(
            f"none of the {len(finished)} completed trials of {study_name!r} logged {metric!r}; "
            f"metrics they have: {', '.join(keys) if keys else '(none)'}"
        )
    return BestTrial(
        study_name=study_name,
        experiment_id=exp.experiment_id,
        run_id=best.info.run_id,
        trial_id=best.data.tags.get(TAG_TRIAL_ID),
        metric=metric,
        value=float(best.data.metrics[metric]),
        params=dict(best.data.params),
        tags=dict(best.data.tags),
        artifact_uri=best.info.artifact_uri,
    )


def _download(client: MlflowClient, run_id: str, artifact_path: str, dest: Path) -> Path:
    """Download one artifact file to ``dest`` (atomically: via a temp folder beside it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".s2ap-pull-", dir=dest.parent) as tmp:
        try:
            local = client.download_artifacts(run_id, artifact_path, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            folder = os.path.dirname(artifact_path)
            try:
                present = [a.path for a in client.list_artifacts(run_id, folder or None)]
            except Exception:  # listing is only for the message
                present = []
            raise FileNotFoundError(
                f"run {run_id} has no artifact {artifact_path!r} ({exc}); "
                f"{folder or 'root'} holds: {', '.join(present) if present else '(nothing)'}"
            ) from exc
        os.replace(local, dest)
    return dest


def _pull_weights(client: MlflowClient, run_id: str, name: str, out: Path) -> str:
    """Download ``weights/<name>.*`` (safetensors or torch format) of one run into ``out``."""
    listed = client.list_artifacts(run_id, "weights")
    candidates = [
        a.path for a in listed if not a.is_dir and os.path.basename(a.path).split(".", 1)[0] == name
    ]
    if not candidates:
        present = [a.path for a in listed]
        raise FileNotFoundError(
            f"run {run_id} has no weights named {name!r}; weights/ holds: "
            f"{', '.join(present) if present else '(nothing)'}"
        )
    return str(_download(client, run_id, candidates[0], out / os.path.basename(candidates[0])))


def pull_mask(
    tracking_uri: str,
    run_id: str,
    out_dir: str | os.PathLike[str],
    *,
    mask_name: str = "final",
    with_weights: bool = False,
    weights_name: str = "final",
    best: BestTrial | None = None,
    model: dict[str, Any] | None = None,
    expected_sha256: str | None = None,
) -> PulledMask:
    """Download ``masks/<mask_name>.s2mask`` (and ``weights/<weights_name>.*``) of one run.

    The mask is verified by loading it (payload hash, header integrity) and against the run's
    ``s2ap.masks.<name>.sha256`` tag. Writes ``<out_dir>/pulled.json`` with the provenance
    (``model``: the registered model version it was found through, if any, whose recorded
    payload sha256 ``expected_sha256`` the mask must have too).
    """
    client = _client(tracking_uri)
    out = Path(out_dir).absolute()
    mask_path = _download(
        client, run_id, f"masks/{mask_name}{MASK_SUFFIX}", out / f"{mask_name}{MASK_SUFFIX}"
    )
    _, header = read_mask_bits(mask_path)  # raises MaskFileError if damaged
    run = client.get_run(run_id)
    tagged = run.data.tags.get(f"s2ap.masks.{mask_name}.sha256")
    if tagged and tagged != header["payload_sha256"]:
        raise ValueError(
            f"mask {mask_path} has payload sha256 {header['payload_sha256']} but run {run_id} "
            f"recorded {tagged}; the artifact was replaced after logging"
        )
    if expected_sha256 and expected_sha256 != header["payload_sha256"]:
        where = f"{model['uri']} (version {model['version']})" if model else "the caller"
        raise ValueError(
            f"mask {mask_path} has payload sha256 {header['payload_sha256']} but {where} "
            f"records {expected_sha256}; the artifact was replaced after registering"
        )
    weights_path = _pull_weights(client, run_id, weights_name, out) if with_weights else None
    trial_id = run.data.tags.get(TAG_TRIAL_ID)
    info = {
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "trial_id": trial_id,
        "study": best.study_name if best else run.data.tags.get("s2ap.study"),
        "metric": best.metric if best else None,
        "value": best.value if best else None,
        "mask_path": str(mask_path),
        "mask_payload_sha256": header["payload_sha256"],
        "weights_path": weights_path,
        "params": dict(run.data.params),
    }
    if model is not None:
        info["model"] = model
    info_path = out / "pulled.json"
    info_path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return PulledMask(
        mask_path=str(mask_path),
        weights_path=weights_path,
        header=header,
        payload_sha256=header["payload_sha256"],
        run_id=run_id,
        trial_id=trial_id,
        best=best,
        info_path=str(info_path),
    )


def pull_best_mask(
    tracking_uri: str,
    study_name: str,
    out_dir: str | os.PathLike[str],
    *,
    metric: str | None = None,
    mode: str | None = None,
    with_weights: bool = False,
    mask_name: str = "final",
    weights_name: str = "final",
) -> PulledMask:
    """Find the study's best finished trial (:func:`find_best_trial`) and pull its mask.

    ``metric``/``mode`` default to the study's first objective (see :func:`find_best_trial`)."""
    best = find_best_trial(tracking_uri, study_name, metric=metric, mode=mode)
    return pull_mask(
        tracking_uri,
        best.run_id,
        out_dir,
        mask_name=mask_name,
        with_weights=with_weights,
        weights_name=weights_name,
        best=best,
    )


def pull_registered_mask(
    tracking_uri: str,
    model_uri: str,
    out_dir: str | os.PathLike[str],
    *,
    with_weights: bool = False,
) -> PulledMask:
    """Pull the mask of the trial a registered model version holds (``models:/<study>@best``,
    ``models:/<study>/<version>``; :mod:`tracking.registry`): the alias or number names the
    version, the version its run, and the run's mask is checked against the run's tag and the
    version's ``s2ap.mask_sha256`` tag too."""
    from tracking.registry import TAG_MASK_SHA256, registered_version

    client = _client(tracking_uri)
    version = registered_version(client, model_uri)
    if not version.run_id:
        raise LookupError(f"{model_uri}: version {version.version} comes from no run")
    model = {"uri": model_uri, "name": version.name, "version": str(version.version)}
    return pull_mask(
        tracking_uri,
        version.run_id,
        out_dir,
        with_weights=with_weights,
        model=model,
        expected_sha256=(version.tags or {}).get(TAG_MASK_SHA256),
    )


__all__ = [
    "BestTrial",
    "NoFinishedTrialError",
    "PulledMask",
    "StudyNotFoundError",
    "find_best_trial",
    "finished_trial_runs",
    "pull_best_mask",
    "pull_mask",
    "pull_registered_mask",
]
