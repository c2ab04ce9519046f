"""The best trial's model in the MLflow Model Registry, through MLflow's own tools: a real tiny
pruned model logged by a trial run, registered by :func:`tracking.registry.register_best_model`,
loaded as ``models:/<study>@best``, served by ``mlflow models serve``, its mask pulled by
``s2ap masks pull models:/...``; the alias moves to a better trial. The tests share one store
and run in file order (the alias names trial ``a`` until the third test moves it)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from s2ap.masking import ScoreMasking
from s2ap.models import create_model
from tracking.artifacts import load_masks
from tracking.registry import (
    BEST_ALIAS,
    TAG_MASK_SHA256,
    RegisteredBest,
    input_spec_of,
    register_best_model,
)
from tracking.runs import StudyTracker
from tracking.server import free_port
from tune.cli import main

STUDY = "reg"
SPEC = input_spec_of(num_classes=4, in_channels=1, image_size=8, mean=[0.4], std=[0.3])
RUN_CONFIG = {"model": {"arch": "mlp"}, "data": {"source": "synthetic"}}


@dataclasses.dataclass
class Store:
    """A study with two completed trials (``a`` worse, ``b`` better), each holding a real
    pruned MLP as the trainable logs it, and the models to compare predictions with."""

    uri: str
    tracker: StudyTracker
    models: dict[str, torch.nn.Module]
    mask_sha: dict[str, str]
    first: RegisteredBest


def _log_trial(tracker: StudyTracker, trial_id: str, seed: int, acc: float) -> tuple:
    torch.manual_seed(seed)
    model = create_model("mlp", **SPEC)
    masking = ScoreMasking(model, sparsity=0.8, scope="layer", score_init="scaled")
    trial = tracker.open_trial(trial_id, {"model": {"arch": "mlp"}, "seed": seed})
    trial.log_metrics({"val_robust_acc": acc}, step=1)
    sha = trial.log_masks(masking.masks(), {"architecture": "mlp"})
    trial.log_state_dict(masking.to_dense().state_dict())
    trial.set_tags({"s2ap.outcome": "completed", "s2ap.method": "s2ap"})
    trial.finish("FINISHED")
    return masking.to_dense().eval(), sha


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("registry")
    tracker = StudyTracker(None, STUDY, study_config={}, storage_root=root)
    tracker.start()
    models, shas = {}, {}
    for trial_id, seed, acc in (("a", 0, 0.5), ("b", 1, 0.7)):
        models[trial_id], shas[trial_id] = _log_trial(tracker, trial_id, seed, acc)
    first = register_best_model(
        tracker.tracking_uri,
        STUDY,
        "a",
        run_config=RUN_CONFIG,
        input_spec=SPEC,
        metrics={"val_robust_acc": 0.5, "test_clean_acc": 0.9, "missing": None},
    )
    yield Store(tracker.tracking_uri, tracker, models, shas, first)


@pytest.fixture
def tracking_env(store: Store, monkeypatch: pytest.MonkeyPatch) -> str:
    """MLflow's own tools find the store through ``MLFLOW_TRACKING_URI``."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert mlflow.get_tracking_uri() == store.uri
    return store.uri


def _images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)


def _expected(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def test_the_best_trial_loads_and_predicts_by_alias(store: Store, tracking_env: str) -> None:
    import mlflow

    client = MlflowClient(store.uri)
    version = client.get_model_version_by_alias(STUDY, BEST_ALIAS)
    tags = version.tags
    runs = {t["trial_id"]: t["run_id"] for t in store.tracker.trials()}
    assert tags["s2ap.trial_id"] == "a" and version.run_id == runs["a"]
    assert tags[TAG_MASK_SHA256] == store.mask_sha["a"]
    assert tags["val_robust_acc"] == "0.5" and tags["test_clean_acc"] == "0.9"
    assert "missing" not in tags and tags["s2ap.method"] == "s2ap"
    # The model is a logged model of the trial's run, in the study's experiment.
    assert store.first.created and store.first.alias_moved and store.first.version == "1"
    logged = client.get_logged_model(store.first.model_id)
    assert logged.source_run_id == version.run_id and str(logged.status) == "READY"
    assert logged.experiment_id == client.get_run(version.run_id).info.experiment_id

    model = mlflow.pyfunc.load_model(f"models:/{STUDY}@{BEST_ALIAS}")
    images = _images()
    out = model.predict(images)
    np.testing.assert_allclose(out["logits"], _expected(store.models["a"], images), atol=1e-5)
    assert out["class"].tolist() == out["logits"].argmax(axis=1).tolist()
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        model.predict(images * 2)
    # The same trial is not registered twice.
    again = register_best_model(store.uri, STUDY, "a", run_config=RUN_CONFIG, input_spec=SPEC)
    assert (again.version, again.created, again.alias_moved) == ("1", False, False)


def test_the_model_holds_code_and_data_only(store: Store, tmp_path: Path) -> None:
    client = MlflowClient(store.uri)
    version = client.get_model_version_by_alias(STUDY, BEST_ALIAS)
    import mlflow.artifacts

    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(tmp_path / "model"), tracking_uri=store.uri
        )
    )
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".cloudpickle"))], names
    assert {"MLmodel", "artifacts/final.safetensors", "artifacts/final.s2mask"} <= names
    config = json.loads((folder / "artifacts" / "config.json").read_text())
    assert config["architecture"] == "mlp" and config["input"] == SPEC
    assert config["trial_id"] == "a"


def test_a_better_trial_moves_the_alias(store: Store, tracking_env: str, tmp_path: Path) -> None:
    import mlflow

    moved = register_best_model(
        store.uri, STUDY, "b", run_config=RUN_CONFIG, input_spec=SPEC, metrics={"x": 1}
    )
    assert moved.created and moved.alias_moved and moved.uri == f"models:/{STUDY}@best"
    client = MlflowClient(store.uri)
    assert client.get_model_version_by_alias(STUDY, "best").tags["s2ap.trial_id"] == "b"
    again = register_best_model(store.uri, STUDY, "b", run_config=RUN_CONFIG, input_spec=SPEC)
    assert again.version == moved.version and not again.created
    assert len(client.search_model_versions(f"name = '{STUDY}'")) == 2
    images = _images(3)
    out = mlflow.pyfunc.load_model(f"models:/{STUDY}@best").predict(images)
    np.testing.assert_allclose(out["logits"], _expected(store.models["b"], images), atol=1e-5)

    # `s2ap masks pull models:/<study>@best` pulls the mask of the version's trial.
    out_dir = tmp_path / "pulled"
    code = main(["masks", "pull", f"models:/{STUDY}@best", "--tracking-uri", store.uri,
                 "--out", str(out_dir)])  # fmt: skip
    assert code == 0
    info = json.loads((out_dir / "pulled.json").read_text())
    assert info["trial_id"] == "b" and info["model"]["version"] == moved.version
    _, header = load_masks(out_dir / "final.s2mask")
    assert header["payload_sha256"] == store.mask_sha["b"]
    # ... a version by number, through MLFLOW_TRACKING_URI.
    assert main(["masks", "pull", f"models:/{STUDY}/1", "--out", str(tmp_path / "v1")]) == 0
    assert json.loads((tmp_path / "v1" / "pulled.json").read_text())["trial_id"] == "a"


def test_masks_pull_models_uri_errors(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    args = ["masks", "pull", f"models:/{STUDY}@nope", "--tracking-uri", store.uri]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "aliases: best" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["masks", "pull", f"models:/{STUDY}@best", "--out", str(tmp_path / "b")]) == 2
    assert "--tracking-uri" in capsys.readouterr().err


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def test_mlflow_models_serve_answers_a_prediction(store: Store, tmp_path: Path) -> None:
    """The real ``mlflow models serve`` on loopback, stopped by PID (its process group)."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # serve starts `uvicorn` from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store.uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    argv = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{STUDY}@best",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError("mlflow models serve did not answer /ping within 120 s")
        images = _images(2)
        answer = _post(f"{url}/invocations", {"inputs": images.tolist()})["predictions"]
        version = MlflowClient(store.uri).get_model_version_by_alias(STUDY, "best")
        model = store.models[version.tags["s2ap.trial_id"]]
        np.testing.assert_allclose(answer["logits"], _expected(model, images), atol=1e-5)
        assert len(answer["class"]) == 2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
