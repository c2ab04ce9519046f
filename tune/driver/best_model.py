"""The end of a study: its best trial's pruned model in the MLflow Model Registry.

:func:`register_best_model` gives :func:`tracking.registry.register_best_model` what only the
study service knows: the best trial (:func:`tune.results.trials.best_trial`), its run config
(from its checkpoint's ``trial.json``), the input spec of its data, a few test images as the
model's input example, and the numbers to tag the version with (the validation metrics the
trial reported last, the test numbers). The result is ``models:/<study>@best``.

The input spec is read from the data (classes, channels, image size, normalisation): the
driver loads the dataset once, or finds it cached by the test evaluation that ran in the driver
just before. A driver that cannot read the data (a cluster head without ``data.root``) registers
nothing and says why; the study's results are not affected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import IO, Any

from tune.common.console import warn
from tune.study.file import Study

__all__ = ["register_best_model"]

_log = logging.getLogger(__name__)

#: Test images in the model's input example (what the MLflow UI shows and serving documents).
EXAMPLE_IMAGES = 2


def _spec_and_example(run_config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The input spec of the trial's data and a few test images (float32, ``(N, C, H, W)``)."""
    import torch

    from s2ap.config import RunConfig
    from tracking.registry import input_spec_of
    from tune.trial.pipelines import cached_data

    cfg = RunConfig.model_validate(run_config)
    data = cached_data(cfg, torch.device("cpu"))
    spec = input_spec_of(data.num_classes, data.in_channels, data.image_size, data.mean, data.std)
    images, _ = next(iter(data.test.batches(EXAMPLE_IMAGES)))
    return spec, images.detach().cpu().float().numpy()


def _version_metrics(
    best: Mapping[str, Any], test: dict[str, Any] | None
) -> dict[str, float | None]:
    """The numbers a version is tagged with: the trial's validation metrics, its test numbers."""
    numbers: dict[str, float | None] = dict(best.get("metrics") or {})
    for key, value in (test or {}).items():
        if key.startswith("test_") and isinstance(value, int | float):
            numbers[key] = float(value)
    return numbers


def register_best_model(
    study: Study,
    tracking_uri: str,
    best: Mapping[str, Any] | None,
    test: dict[str, Any] | None,
    out: IO[str],
) -> dict[str, Any] | None:
    """Register the best trial's model as ``models:/<study>@best`` (a new version only when the
    best trial changed); return what ``summary.json`` records (``None``: nothing registered,
    with a warning on ``out`` saying why)."""
    from tracking import registry
    from tune.trial.checkpoint import read_trial_info

    if best is None:
        return None
    if not best.get("checkpoint"):
        warn(f"best trial {best['trial_id']} has no checkpoint; no model registered", out)
        return None
    try:
        run_config = read_trial_info(best["checkpoint"])["run_config"]
        spec, example = _spec_and_example(run_config)
        version = registry.register_best_model(
            tracking_uri,
            study.name,
            best["trial_id"],
            run_config=run_config,
            input_spec=spec,
            metrics=_version_metrics(best, test),
            input_example=example,
        )
    except Exception as exc:  # the study's results stand without the registered model
        _log.debug("registering the best model", exc_info=True)
        warn(
            f"could not register the best trial's model in MLflow: {type(exc).__name__}: {exc}", out
        )
        return None
    news = (
        "new version"
        if version.created
        else ("alias moved" if version.alias_moved else "already registered")
    )
    print(
        f"best model: {version.uri} = version {version.version} of {study.name!r} "
        f"(trial {version.trial_id}; {news})",
        file=out,
        flush=True,
    )
    return {
        "uri": version.uri,
        "name": version.name,
        "version": version.version,
        "alias": version.alias,
        "trial_id": version.trial_id,
        "run_id": version.run_id,
        "model_id": version.model_id,
    }
