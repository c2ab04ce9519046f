"""Against a real ``mlflow server`` on 127.0.0.1: logging through http, pulling, and an outage.

One server per module (it takes a few seconds to start); the outage test restarts it, so it
runs last.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.tracking.conftest import fake_masks, run_fake_study, trial_params
from tracking.artifacts import load_masks
from tracking.outbox import flush_outbox, pending_outbox
from tracking.pull import find_best_trial, pull_best_mask
from tracking.runs import StudyTracker, TrialTracker, check_tracking_server, make_client
from tracking.server import MlflowServer, mlflow_executable, mlflow_server_command

pytestmark = pytest.mark.mlflow


def test_server_command_flags_exist_in_this_mlflow() -> None:
    argv = mlflow_server_command(
        host="0.0.0.0",
        port=5000,
        backend_store_uri="sqlite:////data/mlflow.db",
        artifacts_destination="/data/artifacts",
        workers=2,
        allowed_hosts=["mlflow", "mlflow:5000"],
    )
    assert argv[:2] == ["mlflow", "server"]
    assert argv[argv.index("--allowed-hosts") + 1] == "mlflow,mlflow:5000"
    assert "--serve-artifacts" in argv and argv[argv.index("--workers") + 1] == "2"
    help_text = subprocess.run(
        [*mlflow_executable(), "server", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in help_text, f"mlflow server has no {flag} flag any more"


def test_study_through_http_and_pull(
    mlflow_server: MlflowServer, storage_root: Path, tmp_path: Path
) -> None:
    check_tracking_server(mlflow_server.url)
    study = run_fake_study(mlflow_server.url, storage_root, "http-study", n_trials=2, epochs=2)
    client = make_client(mlflow_server.url)
    run = client.get_run(study.runs["trial_0001"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert run.data.tags["mlflow.parentRunId"] == study.parent_run_id
    hist = client.get_metric_history(run.info.run_id, "val_robust_acc")
    assert sorted((m.step, m.value) for m in hist) == study.metrics["trial_0001"]["val_robust_acc"]

    best = find_best_trial(mlflow_server.url, "http-study")
    assert best.trial_id == "trial_0001"
    pulled = pull_best_mask(mlflow_server.url, "http-study", tmp_path / "out", with_weights=True)
    # Byte-identical to what the trial logged.
    assert Path(pulled.mask_path).read_bytes() == study.mask_bytes["trial_0001"]
    masks, header = load_masks(pulled.mask_path)
    assert header["payload_sha256"] == study.mask_sha["trial_0001"]
    assert all(masks[n].equal(m) for n, m in study.masks["trial_0001"].items())
    assert pulled.weights_path is not None and Path(pulled.weights_path).stat().st_size > 0
    assert Path(pulled.info_path).exists()


def test_outage_loses_no_metric(
    mlflow_server: MlflowServer, storage_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop the server mid-study, keep logging, restart it: every metric arrives, in order."""
    # MLflow's own retry, kept short: one immediate retry, then the write goes to the outbox.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    study = StudyTracker(
        mlflow_server.url, "outage", study_config={"n": 2}, storage_root=storage_root
    )
    study.start()
    ctx = study.trial_context()
    live = TrialTracker.open(**ctx, trial_id="live", params=trial_params(0))
    ends = TrialTracker.open(**ctx, trial_id="ends", params=trial_params(1))
    logged: list[tuple[int, float]] = []

    def log(epoch: int) -> None:
        value = 0.5 + epoch / 100
        live.log_metrics({"val_robust_acc": value, "phase": f"epoch{epoch}"}, step=epoch)
        logged.append((epoch, value))

    log(0)
    log(1)
    mlflow_server.stop()
    for epoch in range(2, 6):  # the server is down: writes go to the outbox
        log(epoch)
    live.log_masks(fake_masks(3), {"architecture": "small_cnn"}, name="epoch5")
    ends.log_metrics({"val_robust_acc": 0.42}, step=0)
    assert ends.finish() > 0  # it ends during the outage; its writes wait on disk
    pending = {p.key: p for p in pending_outbox(storage_root)}
    assert pending["live"].metric_values == 4 and pending["live"].artifacts == 1
    assert pending["ends"].operations >= 2
    assert "unsent operations" in pending["live"].summary()

    mlflow_server.restart()
    log(6)  # the next write replays the queue first, in order
    assert live.finish() == 0
    report = flush_outbox(storage_root, mlflow_server.url)  # what the CLI does after a study
    assert report.remaining == 0 and not report.errors and report.sent >= 2
    assert pending_outbox(storage_root) == []

    client = make_client(mlflow_server.url)
    hist = client.get_metric_history(live.run_id, "val_robust_acc")
    assert sorted((m.step, m.value) for m in hist) == logged
    run = client.get_run(live.run_id)
    assert run.data.tags["s2ap.phase"] == "epoch6"  # tags applied in order
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(live.run_id, "masks")] == ["masks/epoch5.s2mask"]
    ended = client.get_run(ends.run_id)
    assert ended.info.status == "FINISHED" and ended.data.metrics["val_robust_acc"] == 0.42
    study.finish()
