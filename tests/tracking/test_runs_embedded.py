"""Study and trial runs on an embedded sqlite store (no server)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType

from tests.tracking.conftest import STUDY_CONFIG, fake_masks, run_fake_study, trial_params
from tracking.artifacts import load_masks
from tracking.client import TAG_BEST_TRIAL_ID, TAG_OBJECTIVE_METRIC, TAG_OBJECTIVE_MODE
from tracking.outbox import is_transient
from tracking.pull import NoFinishedTrialError, StudyNotFoundError, find_best_trial, pull_best_mask
from tracking.runs import (
    EXPERIMENT_TAGS,
    ParamConflictError,
    StudyTracker,
    TrackingUnavailableError,
    TrialTracker,
    check_tracking_server,
    flatten_params,
    make_client,
    resolve_tracking_uri,
)
from tracking.selection import Objective
from tracking.server import free_port


def test_resolve_tracking_uri(tmp_path: Path) -> None:
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri(None, tmp_path).startswith("sqlite:////")
    assert resolve_tracking_uri("http://h:5000/", tmp_path) == "http://h:5000"
    assert resolve_tracking_uri("sqlite:////a/b.db", tmp_path) == "sqlite:////a/b.db"
    assert resolve_tracking_uri("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="relative sqlite"):
        resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    for bad in ("file:///tmp/mlruns", "./mlruns", "mlruns", "/abs/mlruns"):
        with pytest.raises(ValueError, match="file store"):
            resolve_tracking_uri(bad, tmp_path)
    with pytest.raises(ValueError, match="unsupported scheme"):
        resolve_tracking_uri("ftp://x", tmp_path)


def test_flatten_params() -> None:
    flat = flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None, "f": {}, "g": True})
    assert flat == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None", "f": "{}", "g": "True"}


def test_fake_study_embedded(storage_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = storage_root.parent / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)  # nothing may land in the working directory
    study = run_fake_study(None, storage_root, "embedded-study")
    uri = study.tracker.tracking_uri
    assert uri == f"sqlite:///{storage_root}/mlflow.db"
    client = make_client(uri)

    exp = client.get_experiment_by_name("embedded-study")
    for key, value in EXPERIMENT_TAGS.items():
        assert exp.tags[key] == value
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    parents = [r for r in runs if r.data.tags.get("s2ap.role") == "study"]
    children = [r for r in runs if r.data.tags.get("s2ap.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_id == study.parent_run_id
    assert parent.data.tags["s2ap.ray_version"] == "test"
    assert parent.data.tags["s2ap.torch_version"] and parent.data.tags["s2ap.mlflow_version"]
    assert parent.data.params == flatten_params(STUDY_CONFIG)
    study_yaml = Path(client.download_artifacts(parent.info.run_id, "study.yaml", str(cwd / "d")))
    assert study_yaml.read_text().startswith("name: embedded-study")

    for child in children:
        tid = child.data.tags["s2ap.trial_id"]
        assert child.data.tags["mlflow.parentRunId"] == study.parent_run_id
        assert child.data.tags["s2ap.study"] == "embedded-study"
        assert child.data.tags["s2ap.device"] == "cpu"
        assert child.data.tags["s2ap.phase"] == "done"
        assert child.info.status == "FINISHED"
        assert child.data.params == flatten_params(study.params[tid])
        assert child.data.params["s2ap.rho"] == str(study.params[tid]["s2ap"]["rho"])
        for key, logged in study.metrics[tid].items():
            hist = client.get_metric_history(child.info.run_id, key)
            assert sorted((m.step, m.value) for m in hist) == logged
        arts = {a.path for a in client.list_artifacts(child.info.run_id, "masks")}
        assert arts == {"masks/final.s2mask"}
        weights = [a.path for a in client.list_artifacts(child.info.run_id, "weights")]
        assert len(weights) == 1 and weights[0].startswith("weights/final.")
        assert child.data.tags["s2ap.masks.final.sha256"] == study.mask_sha[tid]

    study.tracker.log_study_plots()
    plots = {a.path for a in client.list_artifacts(study.parent_run_id, "plots")}
    assert plots == {"plots/val_robust_acc_vs_rho.png", "plots/val_robust_acc_vs_ascent_steps.png"}

    assert list(cwd.iterdir()) == [cwd / "d"]  # only the download we asked for
    assert not list(storage_root.glob("mlflow-outbox/*.jsonl"))  # nothing left unsent


def test_reopen_reuses_runs_and_refuses_param_changes(storage_root: Path) -> None:
    study = run_fake_study(None, storage_root, "reopen", n_trials=1, epochs=1)
    run_id = study.runs["trial_0000"]
    uri = study.tracker.tracking_uri
    client = make_client(uri)

    # The trial restarts (same id, same config): same run, RUNNING again, logs continue.
    again = TrialTracker.open(
        **study.tracker.trial_context(), trial_id="trial_0000", params=trial_params(0)
    )
    assert again.run_id == run_id and again.resumed
    assert client.get_run(run_id).info.status == "RUNNING"
    again.log_params({"extra": {"new": 1}})  # a missing param may be added
    again.log_metrics({"val_robust_acc": 0.9}, step=1)
    again.finish()
    assert client.get_run(run_id).data.params["extra.new"] == "1"

    changed = trial_params(0)
    changed["s2ap"]["rho"] = 0.7
    before = client.get_run(run_id)
    with pytest.raises(ParamConflictError, match=r"s2ap\.rho: logged '0\.02', now '0\.7'"):
        TrialTracker.open(**study.tracker.trial_context(), trial_id="trial_0000", params=changed)
    after = client.get_run(run_id)
    assert after.info.status == before.info.status == "FINISHED"  # nothing was written

    # Resuming the study reuses its parent run.
    resumed = StudyTracker(None, "reopen", study_config=STUDY_CONFIG, storage_root=storage_root)
    assert resumed.start() == study.parent_run_id and resumed.resumed
    exp = client.get_experiment_by_name("reopen")
    parents = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'study'")
    assert len(parents) == 1
    trials = client.search_runs([exp.experiment_id], "tags.`s2ap.role` = 'trial'")
    assert len(trials) == 1
    with pytest.raises(ParamConflictError, match="num_samples"):
        StudyTracker(
            None,
            "reopen",
            study_config={**STUDY_CONFIG, "num_samples": 4},
            storage_root=storage_root,
        ).start()
    resumed.finish()


def test_best_trial_and_pull_embedded(storage_root: Path, tmp_path: Path) -> None:
    study = run_fake_study(None, storage_root, "best", n_trials=3, epochs=2, fail_trial=2)
    uri = study.tracker.tracking_uri
    best = find_best_trial(uri, "best")
    # trial 2 has the highest accuracy but FAILED: it does not count.
    assert best.trial_id == "trial_0001" and best.run_id == study.runs["trial_0001"]
    assert best.value == pytest.approx(0.2 + 0.1 + 0.01)
    assert best.params["s2ap.rho"] == "0.1"
    assert find_best_trial(uri, "best", mode="min").trial_id == "trial_0000"

    pulled = pull_best_mask(uri, "best", tmp_path / "pulled", with_weights=True)
    assert Path(pulled.mask_path).read_bytes() == study.mask_bytes["trial_0001"]
    masks, header = load_masks(pulled.mask_path)
    assert all(masks[n].equal(m) for n, m in study.masks["trial_0001"].items())
    assert header["trial_id"] == "trial_0001" and header["method"] == "s2ap"
    assert pulled.payload_sha256 == study.mask_sha["trial_0001"]
    assert pulled.weights_path and os.path.exists(pulled.weights_path)

    with pytest.raises(StudyNotFoundError, match=r"studies there: .*best"):
        find_best_trial(uri, "nope")
    with pytest.raises(NoFinishedTrialError, match="val_loss"):
        find_best_trial(uri, "best", metric="val_loss")
    run_fake_study(None, storage_root, "all-failed", n_trials=1, epochs=1, fail_trial=0)
    with pytest.raises(NoFinishedTrialError, match="1 FAILED"):
        find_best_trial(uri, "all-failed")


def test_a_trial_stopped_early_ends_finished_but_is_never_the_best(storage_root: Path) -> None:
    """ASHA's stopped trials end FINISHED (as Ray Tune's MLflow callback ends them); only the
    outcome tag says they are not results: the best-trial lookup and the report skip them."""
    from tracking.report.trials import load_trial_runs

    study = run_fake_study(None, storage_root, "stopped", n_trials=2, epochs=1)
    uri = study.tracker.tracking_uri
    client = make_client(uri)
    client.set_tag(study.runs["trial_0000"], "s2ap.outcome", "completed")
    # trial 1 has the higher accuracy, from fewer epochs: the scheduler stopped it.
    client.set_tag(study.runs["trial_0001"], "s2ap.outcome", "stopped_early")
    assert client.get_run(study.runs["trial_0001"]).info.status == "FINISHED"
    assert find_best_trial(uri, "stopped").trial_id == "trial_0000"
    runs, notes = load_trial_runs(uri, ["stopped"], history_keys=())
    assert [r.trial_id for r in runs] == ["trial_0000"]
    assert any("1 stopped_early" in note for note in notes)
    client.set_tag(study.runs["trial_0000"], "s2ap.outcome", "stopped_early")
    with pytest.raises(NoFinishedTrialError, match="2 stopped_early"):
        find_best_trial(uri, "stopped")


def test_check_tracking_server_closed_port_is_fast(tmp_path: Path) -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="unreachable"):
        check_tracking_server(f"http://127.0.0.1:{port}", timeout_s=5)
    assert time.monotonic() - start < 3
    check_tracking_server(f"sqlite:///{tmp_path}/sub/mlflow.db")  # folder is created
    assert (tmp_path / "sub").is_dir()


def test_trial_open_needs_the_study(storage_root: Path) -> None:
    uri = resolve_tracking_uri(None, storage_root)
    make_client(uri).create_experiment("other", artifact_location=(storage_root / "a").as_uri())
    with pytest.raises(ValueError, match="start the study first"):
        TrialTracker.open(uri, "missing", "0" * 32, "t", {})


def test_is_transient() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    assert is_transient(MlflowException("API request failed with exception ConnectionError"))
    assert is_transient(MlflowException("locked", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("bug"))


def test_best_trial_ties_go_to_the_smaller_trial_id_and_the_study_tag_wins(
    storage_root: Path, tmp_path: Path
) -> None:
    """One definition of the best trial (tracking.selection), and the study's own choice."""
    study = StudyTracker(
        None,
        "ties",
        study_config={"n": 3},
        storage_root=storage_root,
        objectives=[Objective("val_robust_acc", "max"), Objective("sparsity", "max")],
    )
    study.start()
    # trial_b finishes first: an end-time tie-break would pick it, the rule picks trial_a.
    for i, (tid, acc) in enumerate((("trial_b", 0.5), ("trial_a", 0.5), ("trial_c", 0.4))):
        trial = study.open_trial(tid, trial_params(i))
        trial.log_metrics({"val_robust_acc": acc, "sparsity": 0.9}, step=0)
        trial.log_masks(fake_masks(i), {"architecture": "small_cnn"})
        trial.finish()
    uri = study.tracking_uri
    assert find_best_trial(uri, "ties").trial_id == "trial_a"
    assert pull_best_mask(uri, "ties", tmp_path / "a").trial_id == "trial_a"

    study.set_tags({TAG_BEST_TRIAL_ID: "trial_b"})  # what the study service records at the end
    best = find_best_trial(uri, "ties")
    assert (best.trial_id, best.metric, best.value) == ("trial_b", "val_robust_acc", 0.5)
    assert pull_best_mask(uri, "ties", tmp_path / "b").trial_id == "trial_b"
    # Another objective than the study's: the tag says nothing about it.
    assert find_best_trial(uri, "ties", mode="min").trial_id == "trial_c"
    assert find_best_trial(uri, "ties", metric="sparsity").trial_id == "trial_a"
    study.finish()


def test_study_records_its_objectives(storage_root: Path) -> None:
    study = StudyTracker(
        None,
        "by-loss",
        study_config={},
        storage_root=storage_root,
        objectives=[Objective("val_loss", "min")],
    )
    study.start()
    client = make_client(study.tracking_uri)
    tags = client.get_experiment_by_name("by-loss").tags  # what the UI sorts and charts by
    assert tags["mlflow.experiment.primaryMetric.name"] == "val_loss"
    assert tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "false"
    run_tags = client.get_run(study.parent_run_id).data.tags
    assert (run_tags[TAG_OBJECTIVE_METRIC], run_tags[TAG_OBJECTIVE_MODE]) == ("val_loss", "min")
    study.finish()


def test_one_request_per_epoch(storage_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch's metrics and tags go in one log_batch; a write over MLflow's limits is split."""
    from mlflow.tracking import MlflowClient

    calls: list[tuple[int, int, int]] = []
    real = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kw):  # a spy: calls the real one
        calls.append((len(metrics), len(params), len(tags)))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    study = run_fake_study(None, storage_root, "batches", n_trials=1, epochs=1)
    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    trial = study.tracker.open_trial("trial_0000", trial_params(0))
    calls.clear()
    trial.log_metrics({"val_robust_acc": 0.5, "val_clean_acc": 0.8, "phase": "prune"}, step=1)
    assert calls == [(2, 0, 1)]
    calls.clear()
    many = {f"m{i}": float(i) for i in range(1500)}
    trial.set_tags({f"s2ap.t{i}": i for i in range(150)})
    trial.log_metrics(many, step=2)
    assert calls == [(0, 0, 100), (0, 0, 50), (1000, 0, 0), (500, 0, 0)]
    trial.finish()
    run = make_client(study.tracker.tracking_uri).get_run(trial.run_id)
    assert run.data.metrics["m1499"] == 1499.0 and run.data.tags["s2ap.t149"] == "149"
    assert run.data.tags["s2ap.phase"] == "prune"


def test_a_retried_create_run_leaves_one_run(storage_root: Path) -> None:
    """MLflow retries ``create_run`` after a timeout; a first attempt the server completed must
    not leave the trial with two runs. ``_create_once`` twice = the retry's second run."""
    study = run_fake_study(None, storage_root, "retried", n_trials=1, epochs=1)
    tracker = TrialTracker.open(
        **study.tracker.trial_context(), trial_id="trial_0000", params=trial_params(0)
    )
    parent = study.parent_run_id
    flt = f"tags.`s2ap.trial_id` = 'trial_0000' AND tags.`mlflow.parentRunId` = '{parent}'"
    kept = tracker._create_once(
        tracker.experiment_id,
        flt,
        "trial 'trial_0000'",
        "trial_0000",
        {"s2ap.trial_id": "trial_0000", "mlflow.parentRunId": study.parent_run_id},
    )
    assert kept == study.runs["trial_0000"]
    client = make_client(study.tracker.tracking_uri)
    active = client.search_runs([tracker.experiment_id], flt, run_view_type=ViewType.ACTIVE_ONLY)
    assert [r.info.run_id for r in active] == [kept]


def test_background_metrics_are_sent_in_order_and_survive_a_dead_writer(
    storage_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's epochs go through the sender thread: every epoch lands once, in order, before
    the next tag; what the sender had not sent when the trial checkpointed (``spill``) is in
    the outbox and sent by the next process of the trial, even if this one dies."""
    import threading

    from mlflow.tracking import MlflowClient

    study = run_fake_study(None, storage_root, "background", n_trials=1, epochs=1)
    client = make_client(study.tracker.tracking_uri)
    trial = study.tracker.open_trial("trial_0009", trial_params(0))
    trial.start_background()
    for epoch in range(1, 6):
        trial.log_metrics({"val_robust_acc": epoch / 10, "epoch": epoch}, step=epoch)
    trial.set_tags({"s2ap.after": "epochs"})  # waits for the sender: the order holds
    history = sorted((m.step, m.value) for m in client.get_metric_history(trial.run_id, "epoch"))
    assert history == [(e, float(e)) for e in range(1, 6)]

    # The store stalls: the sender holds epoch 6, epochs 7-8 wait; the trial checkpoints.
    gate, entered = threading.Event(), threading.Event()
    real = MlflowClient.log_batch

    def stalled(self, *args, **kwargs):  # the real call, once the gate opens
        entered.set()
        gate.wait(10)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", stalled)
    for epoch in (6, 7, 8):
        trial.log_metrics({"val_robust_acc": epoch / 10, "epoch": epoch}, step=epoch)
    assert entered.wait(10)
    assert trial.spill() == 3  # 6 (also still with the sender), 7 and 8 into the outbox
    assert len(trial._outbox) == 3
    monkeypatch.setattr(MlflowClient, "log_batch", real)
    gate.set()  # the sender finishes epoch 6; then the process "dies" (the writer is dropped)

    again = TrialTracker.open(
        **study.tracker.trial_context(), trial_id="trial_0009", params=trial_params(0)
    )
    assert again.run_id == trial.run_id
    again.finish()
    steps = [m.step for m in client.get_metric_history(trial.run_id, "epoch")]
    assert sorted(steps) == list(range(1, 9)), "every epoch exactly once"
    assert client.get_run(trial.run_id).info.status == "FINISHED"
