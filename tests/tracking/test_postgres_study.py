"""A real study logging to ``mlflow server`` on a real PostgreSQL, as the docker recipes run it.

docker/compose.yaml and docker/kuberay/mlflow.yaml put the tracking server on PostgreSQL
(``postgresql+psycopg://``, psycopg 3); the other server tests use sqlite. Here the same server
argv (``tracking.server.MlflowServer``) runs on a throw-away PostgreSQL (``initdb`` in a temp
dir, as an unprivileged user when the tests run as root), a two-trial study goes through
``s2ap tune --tracking-uri``, and the runs are checked through the server and in the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.support.mlflow_study import assert_study_runs, pull_final_mask, run_two_trial_study
from tests.support.postgres import LocalPostgres
from tests.support.ray_cluster import import_psutil
from tracking.server import MlflowServer

pytestmark = [pytest.mark.postgres, pytest.mark.mlflow, pytest.mark.ray]

#: prune 3 epochs + finetune 1 (TINY_STUDY): one validation point per epoch.
EPOCH_STEPS = [1, 2, 3, 4]


@pytest.fixture
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server on 127.0.0.1 with an empty ``mlflow`` database; stopped by PID."""
    with LocalPostgres(database="mlflow", user="mlflow") as server:
        yield server


def test_study_on_a_postgres_backed_mlflow_server(postgres: LocalPostgres, tmp_path: Path) -> None:
    backend = postgres.sqlalchemy_uri()
    assert backend.startswith("postgresql+psycopg://mlflow@127.0.0.1:")  # the recipes' driver
    with MlflowServer(
        backend_store_uri=backend,
        artifacts_destination=tmp_path / "server" / "artifacts",
        log_dir=tmp_path / "server",
        startup_timeout_s=180,  # the first start creates MLflow's schema (alembic migrations)
    ) as server:
        run_two_trial_study(tmp_path / "study", server.url)
        client = MlflowClient(server.url)
        parent, trials = assert_study_runs(client, "tiny", trials=2, epoch_steps=EPOCH_STEPS)
        for run in trials:  # the sampled values, inside TINY_STUDY's search space
            params = run.data.params
            assert 0.01 <= float(params["prune.rho"]) <= 0.5
            assert params["prune.ascent_steps"] in {"1", "2"}
            assert float(params["prune.sparsity"]) == 0.8
        pull_final_mask(client, "tiny", tmp_path / "pulled")

        # The rows are in PostgreSQL: the runs the server returned, nothing else.
        run_ids = {parent.info.run_id, *(run.info.run_id for run in trials)}
        with postgres.connect() as conn:
            rows = conn.execute("select run_uuid, status from runs").fetchall()
            points = conn.execute(
                "select run_uuid, count(*) from metrics where key = 'val_robust_acc' "
                "and value between 0 and 1 group by run_uuid"
            ).fetchall()
        assert {run_uuid for run_uuid, _ in rows} == run_ids
        assert {status for _, status in rows} == {"FINISHED"}
        assert dict(points) == {run.info.run_id: len(EPOCH_STEPS) for run in trials}
        with postgres.connect() as conn:  # the best trial's model is in the registry's tables
            (aliased,) = conn.execute(
                "select v.run_id from model_versions v join registered_model_aliases a "
                "on a.name = v.name and a.version = v.version where a.alias = 'best'"
            ).fetchall()
        assert aliased[0] in run_ids
    # Nothing fell back to a local store next to the study file.
    assert not list((tmp_path / "study").rglob("mlflow.db"))


def test_server_runs_unprivileged_and_stops_by_pid() -> None:
    """The fixture's server: not root (PostgreSQL refuses it), its own socket dir, and gone,
    temp dir included, after stop()."""
    psutil = import_psutil()
    server = LocalPostgres(database="probe", user="probe").start()
    try:
        pid, root = server.pid, server.root
        assert pid is not None and root is not None
        assert psutil.Process(pid).uids().real != 0
        assert (root / f".s.PGSQL.{server.port}").is_socket()
        with server.connect() as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == (
                "probe",
                "probe",
            )
    finally:
        server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not root.exists()
