"""The cluster users are promised, for real: docker/compose.yaml run as it is, studies submitted
from the host, faults injected into the containers.

What runs: ``docker compose``/``docker-compose`` on the unmodified compose file (an env file with
a fresh token, password and free host ports; ``--scale ray-worker=2``, one CPU per worker), i.e.
PostgreSQL, the MLflow server on it, a Ray head and two Ray worker containers. From the host, as
a user would: ``s2ap submit`` (Ray Job API on 127.0.0.1, token auth), ``s2ap masks pull``
(MLflow on 127.0.0.1). Then ``docker kill`` of a worker mid-trial, ``docker stop``/``start`` of
MLflow mid-study and a restart of the head followed by ``s2ap submit --resume``.

Marked ``cluster`` and left out of ``make test`` (pyproject's addopts): it needs a Docker daemon,
the image (``make image``) and 11-15 minutes on two cores. Run it with ``make test-cluster``, which
builds what is missing first, or ``pytest -m cluster tests/docker/test_stack.py``. It skips, saying
why, when no Docker daemon answers or an image is missing. The summary it prints at the end is
what docs/cluster.md ("Tested here") quotes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker_stack import (
    REPORT,
    ROOT,
    ComposeStack,
    MlflowQueries,
    RayJobs,
    docker_unavailable,
    image_exists,
    job_id_of,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
STORAGE = "/shared/studies"  # the compose file's shared volume, as every Ray container sees it
TRACKING = "http://mlflow:5000"  # the MLflow service, as the containers see it
IMAGE = os.environ.get("S2AP_IMAGE", "s2ap:latest")
POSTGRES_CANDIDATES = ("postgres:17", "s2ap-local/postgres:15-bookworm")
WORKER_CPUS = 1
EPOCHS = (8, 8)  # prune, finetune epochs of the fault studies: 16 results per trial


def _s2ap() -> list[str]:
    script = Path(sys.executable).with_name("s2ap")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tune.cli"]


def _postgres_image() -> str | None:
    chosen = os.environ.get("POSTGRES_IMAGE")
    if chosen:
        return chosen if image_exists(chosen) else None
    return next((name for name in POSTGRES_CANDIDATES if image_exists(name)), None)


def report(line: str) -> None:
    REPORT.append(line)


# ---------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"{reason}: the cluster test needs Docker (make test-cluster sets it up)")
    if not image_exists(IMAGE):
        pytest.skip(f"image {IMAGE} is not built: make image (or make test-cluster)")
    postgres = _postgres_image()
    if postgres is None:
        pytest.skip("no PostgreSQL image (postgres:17 or a local one): make postgres-image")
    workdir = tmp_path_factory.mktemp("stack")
    project = f"s2aptest{uuid.uuid4().hex[:8]}"
    stack = ComposeStack(
        project,
        workdir,
        settings={
            "S2AP_IMAGE": IMAGE,
            "POSTGRES_IMAGE": postgres,
            "RAY_WORKER_CPUS": str(WORKER_CPUS),
            "RAY_HEAD_NUM_CPUS": "0",
            "RAY_SHM_SIZE": "1gb",
        },
    )
    started = time.monotonic()
    version = stack.compose("version", "--short", check=False).stdout.strip()
    report(
        f"stack: {' '.join(stack.command)} {version} on docker/compose.yaml (project {project}); "
        f"image {IMAGE}; postgres image {postgres}"
    )
    try:
        try:
            seconds = stack.up()
        except Exception as exc:
            raise AssertionError(f"the stack did not come up: {exc}\n{stack.logs()}") from None
        report(
            f"stack up and healthy in {seconds:.0f} s: postgres, mlflow, ray-head, "
            f"{stack.workers} x ray-worker ({WORKER_CPUS} CPU each)"
        )
        yield stack
    finally:
        stack.down()
        left = stack.container_ids() + stack.volumes()
        report(
            f"teardown: compose down -v; containers and volumes left: {len(left)}; "
            f"whole test {time.monotonic() - started:.0f} s"
        )
        assert not left, f"left behind: {left}"


@pytest.fixture(scope="module")
def jobs(stack: ComposeStack) -> RayJobs:
    return RayJobs(stack.dashboard_url, stack.token)


@pytest.fixture(scope="module")
def mlflow(stack: ComposeStack) -> MlflowQueries:
    return MlflowQueries(stack.mlflow_url)


@pytest.fixture
def client_dir(tmp_path: Path) -> Path:
    """The host-side working folder of s2ap commands (nothing relative leaks into the repo)."""
    return tmp_path


def workers(stack: ComposeStack) -> dict[str, dict[str, str]]:
    """{container id: {name, hostname, ip}} of the ray-worker containers."""
    found = {}
    for cid in stack.container_ids("ray-worker"):
        info = stack.inspect(cid)
        networks = info["NetworkSettings"]["Networks"]
        found[cid] = {
            "name": info["Name"].lstrip("/"),
            "hostname": info["Config"]["Hostname"],
            "ip": next(iter(networks.values()))["IPAddress"] if networks else "",
        }
    return found


def alive_nodes(jobs: RayJobs) -> list[dict[str, Any]]:
    try:
        return [n for n in jobs.nodes() if n["state"] == "ALIVE"]
    except Exception:
        return []  # the head is (re)starting


def wait_for_cluster(stack: ComposeStack, jobs: RayJobs, timeout: float = 300) -> None:
    """Every container healthy and the head + all workers ALIVE as Ray nodes."""
    stack.wait_healthy(timeout=timeout)
    wait_until(
        f"{stack.workers + 1} Ray nodes alive",
        lambda: len(alive_nodes(jobs)) == stack.workers + 1,
        timeout=timeout, interval=3,
        detail=lambda: json.dumps(alive_nodes(jobs))[:2000],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Studies: submitted from the host; their records read from the shared volume and from MLflow
# ---------------------------------------------------------------------------------------------


def fault_study(name: str, *, samples: int, concurrent: int, cpu: float = 1.0) -> list[str]:
    """``--set`` overrides of the quickstart for a fault study: every trial runs all epochs."""
    values = {
        "study.name": name,
        "study.num_samples": samples,
        "study.max_concurrent_trials": concurrent,
        "study.resources.cpu": cpu,
        "study.scheduler.kind": "none",
        "prune.epochs": EPOCHS[0],
        "finetune.epochs": EPOCHS[1],
        "study.test_eval.enabled": "false",
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def submit(stack: ComposeStack, cwd: Path, *extra: str) -> str:
    """``s2ap submit configs/quickstart.yaml`` from the host; the job id."""
    argv = [
        *_s2ap(), "submit", str(QUICKSTART),
        "--address", stack.dashboard_url,
        "--storage-root", STORAGE,
        "--tracking-uri", TRACKING,
        *extra,
    ]  # fmt: skip
    done = subprocess.run(
        argv, env=stack.client_env(), cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"s2ap submit failed:\n{done.stdout}\n{done.stderr}"
    return job_id_of(done.stdout)


_RESULTS_SCRIPT = """
import glob, json, os, sys
keys = ("trial_id", "training_iteration", "iterations_since_restore", "hostname", "node_ip", "pid")
out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "trial_*", "result.json"))):
    rows = []
    with open(path) as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line being written
            rows.append({k: r.get(k) for k in keys})
    out[os.path.basename(os.path.dirname(path)).removeprefix("trial_")] = rows
print(json.dumps(out))
"""


def trial_results(stack: ComposeStack, study: str) -> dict[str, list[dict[str, Any]]]:
    """Ray's per-result records of each trial (``<trial>/result.json`` on the shared volume):
    epoch, epochs since the last restore, and where it ran (host name, node IP, PID)."""
    done = stack.exec(
        "ray-head", "python", "-c", _RESULTS_SCRIPT, f"{STORAGE}/{study}", check=False
    )
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}


def study_summary(stack: ComposeStack, study: str) -> dict[str, Any]:
    done = stack.exec("ray-head", "cat", f"{STORAGE}/{study}/summary.json")
    return json.loads(done.stdout)


def trials_by_id(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["trial_id"]: t for t in summary["trials"]}


def epochs_in_mlflow(mlflow: MlflowQueries, study: str) -> dict[str, list[int]]:
    """{trial id: the steps of its val_robust_acc history} of the study's trial runs."""
    out: dict[str, list[int]] = {}
    for run in mlflow.runs(study, role="trial"):
        trial = run.data.tags["s2ap.trial_id"]
        assert trial not in out, f"trial {trial} has more than one MLflow run"
        out[trial] = [step for step, _ in mlflow.history(run.info.run_id, "val_robust_acc")]
    return out


def assert_nothing_lost(mlflow: MlflowQueries, study: str, summary: dict[str, Any]) -> int:
    """Every trial completed, and MLflow holds each of its epochs exactly once; the count."""
    total = sum(EPOCHS)
    trials = trials_by_id(summary)
    assert all(t["completed"] and t["state"] == "TERMINATED" for t in trials.values()), trials
    logged = epochs_in_mlflow(mlflow, study)
    assert set(logged) == set(trials), (sorted(logged), sorted(trials))
    for trial, steps in logged.items():
        assert steps == list(range(1, total + 1)), (trial, steps)
    study_runs = mlflow.runs(study, role="study")
    assert len(study_runs) == 1 and study_runs[0].info.status == "FINISHED", study_runs
    return len(logged)


def restored_at(rows: list[dict[str, Any]]) -> list[int]:
    """Epochs a trial continued from after a restore: the epoch before each result whose
    ``iterations_since_restore`` starts again at 1 (0 would mean it started from scratch)."""
    return [
        row["training_iteration"] - 1
        for i, row in enumerate(rows)
        if i > 0 and row["iterations_since_restore"] == 1
    ]


# ---------------------------------------------------------------------------------------------
# The tests, in order: the stack, the quickstart, 4 concurrent trials with an MLflow outage,
# a worker killed mid-trial, the head restarted mid-study and resumed.
# ---------------------------------------------------------------------------------------------


def test_stack_runs_the_compose_file(stack: ComposeStack, jobs: RayJobs) -> None:
    nodes = alive_nodes(jobs)
    head = [n for n in nodes if n["is_head_node"]]
    worker_nodes = [n for n in nodes if not n["is_head_node"]]
    assert len(head) == 1 and len(worker_nodes) == stack.workers, nodes
    assert head[0]["resources_total"].get("CPU", 0) == 0, "trials must not run on the head"
    assert [n["resources_total"]["CPU"] for n in worker_nodes] == [WORKER_CPUS] * stack.workers
    # each worker container is its own Ray node (own IP on the compose network, own CPUs)
    ips = {w["ip"] for w in workers(stack).values()}
    assert {n["node_ip"] for n in worker_nodes} == ips and len(ips) == stack.workers

    # token auth on the job API, as in the recipes
    assert RayJobs(stack.dashboard_url, None).get("/api/jobs/").status_code == 401
    assert RayJobs(stack.dashboard_url, "0" * 64).get("/api/jobs/").status_code in (401, 403)
    assert jobs.get("/api/jobs/").status_code == 200

    # published: the job API and MLflow, on the host's 127.0.0.1 only; PostgreSQL not at all
    published = {}
    for cid in stack.container_ids():
        info = stack.inspect(cid)
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        for port, bindings in (info["HostConfig"]["PortBindings"] or {}).items():
            for binding in bindings or []:
                published.setdefault(service, set()).add((port, binding["HostIp"]))
    assert published == {
        "ray-head": {("8265/tcp", "127.0.0.1")},
        "mlflow": {("5000/tcp", "127.0.0.1")},
    }, published
    mlflow_cmd = stack.inspect(stack.container("mlflow"))["Config"]["Cmd"]
    backend = mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg://") and "@postgres:5432/" in backend
    assert RayJobs(stack.mlflow_url, None).get("/health").text.strip() == "OK"
    report(
        f"stack checks: {len(nodes)} Ray nodes alive (head 0 CPU, workers "
        f"{[n['resources_total']['CPU'] for n in worker_nodes]} CPU, one per container IP); "
        "job API 401 without the token; only 127.0.0.1:8265->ray-head and "
        "127.0.0.1:5000->mlflow published; MLflow backend postgresql+psycopg"
    )


def test_quickstart_study_end_to_end(
    stack: ComposeStack, jobs: RayJobs, mlflow: MlflowQueries, client_dir: Path
) -> None:
    start = time.monotonic()
    job = submit(stack, client_dir)
    status = jobs.wait(job, timeout=1800)
    elapsed = time.monotonic() - start
    assert status == "SUCCEEDED", jobs.logs(job)[-6000:]

    # Trials ran on both worker containers: Ray's result records -> node IP -> node id
    rows = trial_results(stack, "quickstart")
    node_of_ip = {n["node_ip"]: n["node_id"] for n in jobs.nodes() if n["state"] == "ALIVE"}
    worker_info = {w["ip"]: w for w in workers(stack).values()}
    trial_nodes = {}
    for trial, results in rows.items():
        assert results, trial
        assert len({r["node_ip"] for r in results}) == 1, (trial, results)
        trial_nodes[trial] = node_of_ip[results[0]["node_ip"]]
    per_node = Counter(trial_nodes.values())
    worker_node_ids = {node_of_ip[ip] for ip in worker_info}
    assert set(per_node) <= worker_node_ids and len(per_node) >= 2, per_node

    # ... and MLflow on PostgreSQL holds the study: one study run, one run per trial
    summary = study_summary(stack, "quickstart")
    trials = trials_by_id(summary)
    assert len(trials) == 16 == len(rows)
    study_runs = mlflow.runs("quickstart", role="study")
    trial_runs = mlflow.runs("quickstart", role="trial")
    assert len(study_runs) == 1 and study_runs[0].info.status == "FINISHED"
    assert {r.data.tags["s2ap.trial_id"] for r in trial_runs} == set(trials)
    hostnames = {w["hostname"] for w in worker_info.values()}
    node_tags = 0
    for run in trial_runs:
        trial = run.data.tags["s2ap.trial_id"]
        assert "val_robust_acc" in run.data.metrics, trial
        assert run.data.tags.get("s2ap.hostname") in hostnames, run.data.tags
        if "s2ap.node_id" in run.data.tags:  # recorded by newer versions of the service
            node_tags += 1
            assert run.data.tags["s2ap.node_id"] == trial_nodes[trial]
        epochs = trials[trial]["epochs"]
        steps = [s for s, _ in mlflow.history(run.info.run_id, "val_robust_acc")]
        assert steps == list(range(1, epochs + 1)), (trial, steps)
    psql = stack.exec(
        "postgres", "psql", "-U", "mlflow", "-d", "mlflow", "-tAc",
        "select count(distinct r.run_uuid), count(m.key) from runs r "
        "join experiments e on e.experiment_id = r.experiment_id "
        "left join metrics m on m.run_uuid = r.run_uuid where e.name = 'quickstart'",
    ).stdout.strip()  # fmt: skip
    db_runs, db_metrics = (int(x) for x in psql.split("|"))
    assert db_runs == 17 and db_metrics > 16 * 10, psql

    # The best mask, pulled from the host, verified three ways
    out = client_dir / "best-mask"
    done = subprocess.run(
        [*_s2ap(), "masks", "pull", "quickstart", "--tracking-uri", stack.mlflow_url,
         "--out", str(out)],
        env=stack.client_env(), cwd=client_dir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    from tracking.artifacts import load_masks

    pulled = json.loads((out / "pulled.json").read_text())
    mask = Path(pulled["mask_path"])
    _, header = load_masks(mask)  # checks the payload against the sha256 in its header
    run = mlflow.client.get_run(pulled["run_id"])
    assert run.data.tags["s2ap.masks.final.sha256"] == header["payload_sha256"]
    assert pulled["trial_id"] == summary["best"]["trial_id"]
    file_sha = hashlib.sha256(mask.read_bytes()).hexdigest()
    stored = stack.exec(
        "mlflow", "sh", "-c",
        f"sha256sum /mlflow/artifacts/*/{pulled['run_id']}/artifacts/masks/final.s2mask",
    ).stdout.split()[0]  # fmt: skip
    assert stored == file_sha

    names = {node_of_ip[ip]: w["name"] for ip, w in worker_info.items()}
    placement = ", ".join(
        f"{names[node]} (node {node[:8]}) {count}" for node, count in sorted(per_node.items())
    )
    node_ids = f"{node_tags} trials" if node_tags else "none yet (node ids from the node IPs)"
    report(
        f"quickstart: s2ap submit -> {status} in {elapsed:.0f} s; {summary['counts']}; trials "
        f"per node: {placement}; s2ap.node_id tags: {node_ids}; PostgreSQL: {db_runs} runs, "
        f"{db_metrics} metric values; best "
        f"trial {pulled['trial_id']}: s2ap masks pull from {stack.mlflow_url} -> mask payload "
        f"sha256 {header['payload_sha256'][:16]}... = run tag, file sha256 = the artifact in "
        "the mlflow volume"
    )


def test_concurrent_trials_survive_an_mlflow_restart(
    stack: ComposeStack, jobs: RayJobs, mlflow: MlflowQueries, client_dir: Path
) -> None:
    name, total = "concurrent", sum(EPOCHS)
    start = time.monotonic()
    job = submit(stack, client_dir, *fault_study(name, samples=4, concurrent=4, cpu=0.5))

    def four_running() -> dict[str, dict[str, Any]] | None:
        rows = trial_results(stack, name)
        running = {t: r[-1] for t, r in rows.items() if r and 2 <= len(r) < total - 4}
        return running if len(running) >= 4 else None

    running = wait_until(
        "4 trials running at once", four_running, timeout=900, interval=2,
        detail=lambda: jobs.logs(job)[-3000:],
    )  # fmt: skip
    hosts = Counter(r["hostname"] for r in running.values())
    assert len(hosts) == 2, hosts

    mlflow_container = stack.container("mlflow")
    stopped = time.time()
    stack.docker("stop", "--time", "10", mlflow_container)
    time.sleep(30)
    stack.docker("start", mlflow_container)
    restarted = time.time()
    stack.wait_healthy(timeout=180)

    status = jobs.wait(job, timeout=1200)
    elapsed = time.monotonic() - start
    assert status == "SUCCEEDED", jobs.logs(job)[-6000:]
    summary = study_summary(stack, name)
    n = assert_nothing_lost(mlflow, name, summary)
    # the outage fell in the middle of the trials: epochs logged before it and after it
    straddle = 0
    for run in mlflow.runs(name, role="trial"):
        times = [
            m.timestamp / 1000 for m in mlflow.client.get_metric_history(run.info.run_id, "epoch")
        ]
        straddle += min(times) < stopped and max(times) > restarted
    assert straddle >= 1
    report(
        f"concurrent: 4 trials at 0.5 CPU running at once ({dict(hosts)} per worker host); "
        f"mlflow container stopped for {restarted - stopped:.0f} s mid-study, then started; "
        f"{status} in {elapsed:.0f} s; {n} trials x {total} epochs each exactly once in MLflow "
        f"({straddle} trials logged epochs before and after the outage)"
    )


def test_worker_killed_mid_trial_resumes_on_another_node(
    stack: ComposeStack, jobs: RayJobs, mlflow: MlflowQueries, client_dir: Path
) -> None:
    name, total = "fault-worker", sum(EPOCHS)
    start = time.monotonic()
    job = submit(stack, client_dir, *fault_study(name, samples=2, concurrent=2))

    def victim() -> tuple[str, dict[str, Any]] | None:
        for trial, rows in trial_results(stack, name).items():
            if 3 <= len(rows) <= total - 6:
                return trial, rows[-1]
        return None

    trial, last = wait_until("a trial 3 epochs in", victim, timeout=900, interval=1)
    by_host = {w["hostname"]: cid for cid, w in workers(stack).items()}
    killed = by_host[last["hostname"]]
    killed_node = {n["node_ip"]: n["node_id"] for n in jobs.nodes()}[last["node_ip"]]
    stack.docker("kill", killed)
    try:
        status = jobs.wait(job, timeout=1200)
        elapsed = time.monotonic() - start
        assert status == "SUCCEEDED", jobs.logs(job)[-6000:]

        # Tune restarts the trial as soon as its actor is gone; the GCS declares the node dead
        # after its missed heartbeats (~30 s), possibly after the study is done.
        def nodes_now() -> dict[str, dict[str, Any]]:
            return {n["node_id"]: n for n in jobs.nodes()}

        wait_until(
            "Ray marks the killed node DEAD",
            lambda: nodes_now().get(killed_node, {}).get("state") == "DEAD",
            timeout=180, interval=3,
        )  # fmt: skip
        nodes = nodes_now()
    finally:
        stack.docker("start", killed)  # back to two workers for the next test
        wait_for_cluster(stack, jobs)

    rows = trial_results(stack, name)[trial]
    assert sorted({r["training_iteration"] for r in rows}) == list(range(1, total + 1))
    before = [r for r in rows if r["hostname"] == last["hostname"]]
    after = rows[len(before) :]
    assert before and after and rows[: len(before)] == before, rows
    assert {r["hostname"] for r in after} == {next(h for h in by_host if h != last["hostname"])}
    resumed_node = next(
        node
        for node, n in nodes.items()
        if n["node_ip"] == after[0]["node_ip"] and n["state"] == "ALIVE"
    )
    assert resumed_node != killed_node
    from_epoch = after[0]["training_iteration"] - 1
    assert after[0]["iterations_since_restore"] == 1 and from_epoch >= 1, rows
    summary = study_summary(stack, name)
    assert trials_by_id(summary)[trial]["retries"] >= 1
    n = assert_nothing_lost(mlflow, name, summary)
    report(
        f"worker kill: docker kill {workers(stack)[killed]['name']} while trial {trial} ran "
        f"epoch {before[-1]['training_iteration']} on it (node {killed_node[:8]}, now DEAD); the "
        f"trial resumed on node {resumed_node[:8]} from its epoch-{from_epoch} checkpoint "
        f"(retries {trials_by_id(summary)[trial]['retries']}); {status} in {elapsed:.0f} s; "
        f"{n} trials x {total} epochs each exactly once in MLflow"
    )


def test_head_restart_then_resume(
    stack: ComposeStack, jobs: RayJobs, mlflow: MlflowQueries, client_dir: Path
) -> None:
    name, total = "fault-head", sum(EPOCHS)
    args = fault_study(name, samples=3, concurrent=2)
    start = time.monotonic()
    submit(stack, client_dir, *args)

    def two_running() -> dict[str, int] | None:
        rows = trial_results(stack, name)
        running = {t: len(r) for t, r in rows.items() if 3 <= len(r) <= total - 6}
        return running if len(running) >= 2 else None

    running = wait_until("two trials 3 epochs in", two_running, timeout=900, interval=1)
    head = stack.container("ray-head")
    restart_start = time.monotonic()
    # --time 5: the head gets 5 s to stop (Ray's drain would otherwise let the trials finish)
    stack.docker("restart", "--time", "5", head)
    wait_for_cluster(stack, jobs)
    rejoined = time.monotonic() - restart_start
    interrupted = trial_results(stack, name)
    unfinished = [t for t, r in interrupted.items() if len(r) < total]
    assert unfinished, "the restart came too late: every trial had finished"

    job = submit(stack, client_dir, *args, "--resume")
    status = jobs.wait(job, timeout=1200)
    elapsed = time.monotonic() - start
    assert status == "SUCCEEDED", jobs.logs(job)[-6000:]
    rows = trial_results(stack, name)
    resumed = {t: restored_at(rows[t]) for t in unfinished if restored_at(rows.get(t, []))}
    assert any(epoch >= 1 for points in resumed.values() for epoch in points), rows
    summary = study_summary(stack, name)
    n = assert_nothing_lost(mlflow, name, summary)
    report(
        f"head restart: docker restart ray-head while trials {running} (epochs done) ran; head "
        f"and both workers back as Ray nodes in {rejoined:.0f} s; s2ap submit --resume -> "
        f"{status}; resumed from checkpoints at epochs {resumed}; whole study {elapsed:.0f} s; "
        f"{n} trials x {total} epochs each exactly once in MLflow, one study run"
    )
