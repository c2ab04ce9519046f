"""The study's best pruned model in the MLflow Model Registry: ``models:/<study>@best``.

After a study, :func:`register_best_model` turns the best trial's run into an MLflow model and
registers it, so that MLflow's own tools hand it on::

    mlflow.pyfunc.load_model("models:/quickstart@best").predict(images)
    mlflow models serve -m models:/quickstart@best --env-manager local
    s2ap masks pull models:/quickstart@best --out best-mask/

* The model is MLflow's models-from-code: its code is :mod:`tracking.pyfunc_model`, its artifacts
  the trial's own ``weights/final.safetensors`` and ``masks/final.s2mask`` (downloaded from the
  run and checked against its sha256 tags) and a ``config.json`` (architecture, input spec, run
  config). Nothing is pickled. It is a *logged model* of the trial's run (the run's page lists
  it), in the study's experiment.
* The registered model is named after the study; each version comes from one trial run, tagged
  with its trial id (:data:`TAG_TRIAL_ID`), the objective and test metrics and the mask's sha256.
  The alias ``best`` names the version of the study's current best trial: a resumed study that
  finds a better trial registers a new version and moves the alias; the same trial is never
  registered twice (its version is found again by run id).
* A trial that runs several seeds (``study.seeds``) registers its first seed's model (the
  run's ``final`` artifacts; the other seeds' are ``final-seed<N>``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.artifacts import MASK_SUFFIX, STATE_DICT_SUFFIX, file_sha256, read_mask_bits
from tracking.client import TAG_STUDY, TAG_TRIAL_ID, filter_quote, make_client
from tracking.params import tag_value

__all__ = [
    "BEST_ALIAS",
    "MODEL_NAME",
    "TAG_MASK_SHA256",
    "RegisteredBest",
    "delete_versions_of_runs",
    "input_spec_of",
    "model_uri",
    "parse_model_uri",
    "register_best_model",
    "registered_version",
]

#: The alias of the study's best trial's version.
BEST_ALIAS = "best"
#: The logged model's name (shown on the run's and the experiment's model lists).
MODEL_NAME = "pruned-model"
#: Version tag: the payload sha256 of the version's mask (what ``masks pull`` verifies).
TAG_MASK_SHA256 = "s2ap.mask_sha256"
TAG_WEIGHTS_SHA256 = "s2ap.weights_sha256"
#: The model's code file (models-from-code): MLflow copies it into the model.
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclasses.dataclass(frozen=True)
class RegisteredBest:
    """The version that holds a study's best trial, and whether this call created it."""

    name: str
    version: str
    alias: str
    run_id: str
    trial_id: str
    model_id: str | None
    created: bool
    alias_moved: bool

    @property
    def uri(self) -> str:
        """``models:/<name>@<alias>``: what ``mlflow.pyfunc.load_model`` and ``serve`` take."""
        return model_uri(self.name, self.alias)


def model_uri(name: str, alias: str = BEST_ALIAS) -> str:
    return f"models:/{name}@{alias}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias, version)."""
    match = _MODELS_URI.match(uri.strip())
    if match is None:
        raise ValueError(
            f"{uri!r} is not a registered model URI; use models:/<study>@best or "
            "models:/<study>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def registered_version(client: MlflowClient, uri: str) -> Any:
    """The model version a ``models:/`` URI names; ``LookupError`` naming what exists."""
    name, alias, version = parse_model_uri(uri)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        try:
            aliases = sorted(client.get_registered_model(name).aliases)
            there = f"model {name!r} has aliases: {', '.join(aliases) or '(none)'}"
        except MlflowException:
            there = f"no registered model {name!r}"
        raise LookupError(f"{uri}: not found ({there})") from None


def input_spec_of(
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Any,
    std: Any,
) -> dict[str, Any]:
    """The input spec :func:`s2ap.models.create_model` needs, as plain JSON data."""
    return {
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def _trial_run(client: MlflowClient, experiment_id: str, trial_id: str) -> Any:
    """The trial's completed run (the latest, if a restored trial has several)."""
    from tracking.pull import finished_trial_runs

    completed, _ = finished_trial_runs(client, experiment_id)
    if trial_id not in completed:
        raise LookupError(f"trial {trial_id!r} has no completed run to register")
    return completed[trial_id]


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> Any | None:
    """The (first) version of ``name`` registered from ``run_id``, or ``None``."""
    versions = client.search_model_versions(
        f"name = {filter_quote(name)} AND run_id = {filter_quote(run_id)}"
    )
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _download(client: MlflowClient, run_id: str, path: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, dst_path=str(dest)))


def _model_files(
    client: MlflowClient, run: Any, folder: Path, config: dict[str, Any]
) -> dict[str, str]:
    """The trial's weights and mask (checked against the run's tags) and ``config.json``."""
    run_id, tags = run.info.run_id, run.data.tags
    mask = _download(client, run_id, f"masks/final{MASK_SUFFIX}", folder)
    _, header = read_mask_bits(mask)  # the payload's own sha256 is checked here
    if tags.get("s2ap.masks.final.sha256", header["payload_sha256"]) != header["payload_sha256"]:
        raise ValueError(f"run {run_id}: masks/final{MASK_SUFFIX} does not match its sha256 tag")
    weights = _download(client, run_id, f"weights/final{STATE_DICT_SUFFIX}", folder)
    weights_sha = file_sha256(weights)
    if tags.get("s2ap.weights.final.sha256", weights_sha) != weights_sha:
        raise ValueError(f"run {run_id}: weights/final{STATE_DICT_SUFFIX} does not match its tag")
    config = {
        **config,
        "mask_sha256": header["payload_sha256"],
        "weights_sha256": weights_sha,
        "architecture": config.get("architecture") or header.get("architecture"),
    }
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return {"weights": str(weights), "mask": str(mask), "config": str(config_path)}


def _signature(spec: Mapping[str, Any]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    c, s, k = int(spec["in_channels"]), int(spec["image_size"]), int(spec["num_classes"])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, s, s))]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.int64), (-1,), "class"),
                TensorSpec(np.dtype(np.float32), (-1, k), "logits"),
            ]
        ),
    )


def _requirements() -> list[str]:
    """What the model's code imports besides s2ap itself (pinned; local version tags dropped,
    ``2.14.1+cu128`` -> ``2.14.1``, so that pip can resolve them)."""
    import importlib.metadata

    names = ("mlflow", "torch", "numpy", "safetensors", "pydantic")
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _save_model(
    folder: Path,
    files: Mapping[str, str],
    spec: Mapping[str, Any],
    input_example: np.ndarray,
    mlflow_model: Any,
) -> Path:
    """The MLflow model folder (models-from-code), loaded once and run on the input example
    so that a model which cannot serve is never registered."""
    import mlflow.pyfunc

    path = folder / "model"
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(MODEL_CODE),
        artifacts=dict(files),
        signature=_signature(spec),
        input_example=input_example,
        pip_requirements=_requirements(),
        mlflow_model=mlflow_model,
    )
    for cache in list(path.rglob("__pycache__")):  # saving imports the code file
        shutil.rmtree(cache, ignore_errors=True)
    out = mlflow.pyfunc.load_model(str(path)).predict(input_example)
    if out["logits"].shape != (len(input_example), int(spec["num_classes"])):
        raise ValueError(f"the saved model returns logits of shape {out['logits'].shape}")
    return path


def _log_model(
    client: MlflowClient,
    run: Any,
    files: Mapping[str, str],
    spec: Mapping[str, Any],
    input_example: np.ndarray,
    folder: Path,
) -> Any:
    """Save the model and log it as a logged model of ``run``; return the logged model."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    trial_id = run.data.tags.get(TAG_TRIAL_ID, "")
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run.info.run_id,
        tags={TAG_TRIAL_ID: trial_id, TAG_STUDY: run.data.tags.get(TAG_STUDY, "")},
        params={k: tag_value(v) for k, v in run.data.params.items()},
        model_type="pruned-classifier",
    )
    try:
        meta = Model(
            artifact_path=logged.artifact_location,
            model_uuid=logged.model_id,
            run_id=run.info.run_id,
            model_id=logged.model_id,
        )
        path = _save_model(folder, files, spec, input_example, meta)
        client.log_model_artifacts(logged.model_id, str(path))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(
            name,
            tags={TAG_STUDY: name},
            description=(
                f"The best pruned model of the s2ap study {name!r}: alias '{BEST_ALIAS}' names "
                "the version of its best completed trial (selected on validation)."
            ),
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version_tags(
    run: Any, trial_id: str, metrics: Mapping[str, Any], files_config: Mapping[str, Any]
) -> dict[str, str]:
    tags = {
        TAG_TRIAL_ID: trial_id,
        TAG_STUDY: run.data.tags.get(TAG_STUDY, ""),
        TAG_MASK_SHA256: files_config["mask_sha256"],
        TAG_WEIGHTS_SHA256: files_config["weights_sha256"],
    }
    for key in ("s2ap.method", "s2ap.masks.final.sparsity"):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    tags.update({k: _number_tag(v) for k, v in metrics.items() if v is not None})
    return tags


def _number_tag(value: Any) -> str:
    """A metric as a version tag: 6 significant digits, readable in the registry's tables (the
    run holds the exact values)."""
    return f"{value:.6g}" if isinstance(value, float) else tag_value(value)


def register_best_model(
    tracking_uri: str,
    study_name: str,
    trial_id: str,
    *,
    run_config: Mapping[str, Any],
    input_spec: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    input_example: np.ndarray | None = None,
    alias: str = BEST_ALIAS,
) -> RegisteredBest:
    """Log the best trial's model and register it as a version of the model ``study_name``
    with ``alias`` (see the module docstring); return the version.

    ``run_config``: the trial's run config (its ``model.arch`` names the architecture);
    ``input_spec``: :func:`input_spec_of` of its data; ``metrics``: the objective and test
    numbers to tag the version with (``None`` values are left out); ``input_example``: a few
    ``(N, C, H, W)`` float32 images in [0, 1] (default: one grey image).
    """
    from tracking.pull import study_experiment

    client = make_client(tracking_uri)
    experiment = study_experiment(client, tracking_uri, study_name)
    run = _trial_run(client, experiment.experiment_id, trial_id)
    found = _version_of_run(client, study_name, run.info.run_id)
    created = found is None
    model_id: str | None
    if found is None:
        found, model_id = _new_version(
            client, run, study_name, run_config, input_spec, metrics or {}, input_example
        )
    else:  # the same trial again (a study launched again): refresh its numbers only
        model_id = getattr(found, "model_id", None)
        for key, value in (metrics or {}).items():
            if value is not None:
                client.set_model_version_tag(study_name, found.version, key, _number_tag(value))
    return RegisteredBest(
        name=study_name,
        version=str(found.version),
        alias=alias,
        run_id=run.info.run_id,
        trial_id=trial_id,
        model_id=model_id,
        created=created,
        alias_moved=_point_alias(client, study_name, alias, str(found.version)),
    )


def _new_version(
    client: MlflowClient,
    run: Any,
    name: str,
    run_config: Mapping[str, Any],
    input_spec: Mapping[str, Any],
    metrics: Mapping[str, Any],
    input_example: np.ndarray | None,
) -> tuple[Any, str]:
    """Log ``run``'s model and register it as a new version of ``name``: (version, model id)."""
    trial_id = run.data.tags.get(TAG_TRIAL_ID, "")
    c, s = int(input_spec["in_channels"]), int(input_spec["image_size"])
    example = (
        np.full((1, c, s, s), 0.5, np.float32)
        if input_example is None
        else np.asarray(input_example, dtype=np.float32)
    )
    config = {
        "architecture": (run_config.get("model") or {}).get("arch"),
        "input": dict(input_spec),
        "run_config": dict(run_config),
        "study": name,
        "trial_id": trial_id,
        "run_id": run.info.run_id,
        "output": "predict(images) -> {'class': (N,) int64, 'logits': (N, classes) float32}",
    }
    with tempfile.TemporaryDirectory(prefix="s2ap-model-") as tmp:
        folder = Path(tmp)
        files = _model_files(client, run, folder / "files", config)
        files_config = json.loads(Path(files["config"]).read_text(encoding="utf-8"))
        logged = _log_model(client, run, files, input_spec, example, folder)
    _ensure_registered_model(client, name)
    # The source is the logged model's artifact location, not ``models:/<model id>``: MLflow
    # 3.17's sqlite registry resolves a models:/ source with the process's global tracking URI
    # (a TODO in its code), not this client's, and would look in ./mlflow.db.
    version = client.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=run.info.run_id,
        tags=_version_tags(run, trial_id, metrics, files_config),
        model_id=logged.model_id,
    )
    return version, logged.model_id


def delete_versions_of_runs(client: MlflowClient, name: str, run_ids: set[str]) -> int:
    """The versions of ``name`` registered from ``run_ids`` (runs being deleted: a study
    started over) go with them, and the registered model too once it holds no version;
    return how many versions were deleted."""
    versions = list(client.search_model_versions(f"name = {filter_quote(name)}"))
    gone = [v for v in versions if v.run_id in run_ids]
    for v in gone:
        client.delete_model_version(name, v.version)
    if gone and len(gone) == len(versions):
        client.delete_registered_model(name)
    return len(gone)


def _point_alias(client: MlflowClient, name: str, alias: str, version: str) -> bool:
    """Set ``alias`` to ``version``; True if it pointed elsewhere (or nowhere) before."""
    try:
        if str(client.get_model_version_by_alias(name, alias).version) == version:
            return False
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    client.set_registered_model_alias(name, alias, version)
    return True
