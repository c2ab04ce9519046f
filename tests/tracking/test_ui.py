"""``s2ap ui``: the MLflow UI served on a study's store, landing on its trials; safe exposure.

The server is a real ``mlflow server`` started by :func:`tracking.ui.serve_study_ui` (in a
thread, stopped through its ``stop`` event); the page itself is JavaScript, so the test checks
what the page is made of: the printed URL names the study's experiment and saved view, the view
filters the trial runs, and the server answers the page and the REST calls the page makes.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.tracking.conftest import run_fake_study
from tracking.client import make_client
from tracking.selection import Objective
from tracking.server import (
    default_allowed_hosts,
    exposure_warning,
    is_loopback,
    mlflow_server_command,
)
from tracking.ui import (
    TRIALS_FILTER,
    VIEW_KEY,
    VIEW_TAG,
    StudyNotFoundError,
    StudyPages,
    serve_study_ui,
)

pytestmark = pytest.mark.mlflow


class _Lines(io.StringIO):
    """Collects what ``serve_study_ui`` prints, for another thread to read."""

    def wait_for(self, text: str, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while text not in self.getvalue():
            assert time.monotonic() < deadline, f"no {text!r} in {self.getvalue()!r}"
            time.sleep(0.2)
        return self.getvalue()


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def test_ui_lands_on_the_trials(storage_root: Path) -> None:
    study = run_fake_study(None, storage_root, "ui-study", n_trials=3, epochs=2, fail_trial=2)
    study.tracker.log_study_plots()
    study.tracker.finish()
    uri = study.tracker.tracking_uri
    exp_id = make_client(uri).get_experiment_by_name("ui-study").experiment_id
    out, err, stop = _Lines(), _Lines(), threading.Event()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            serve_study_ui(uri, "ui-study", storage_root=storage_root, out=out, err=err, stop=stop)
        )
    )
    thread.start()
    try:
        lines = out.wait_for("Ctrl-C").splitlines()
        runs_url, plot_url = lines[0].split(": ", 1)[1], lines[1].split(": ", 1)[1]
        base, port = _check_runs_page(runs_url, exp_id, study)
        _check_study_run_page(plot_url, base, exp_id, study.parent_run_id)
        assert err.getvalue() == ""  # loopback: no exposure warning
    finally:
        stop.set()
        thread.join(timeout=60)
    assert codes == [0]
    assert not _port_open("127.0.0.1", port)  # the server was stopped


def _check_runs_page(url: str, exp_id: str, study) -> tuple[str, int]:
    """The printed URL: the study's runs page in the trials view; what the page loads answers."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path, _, query = parts.fragment.partition("?")
    assert parts.hostname == "127.0.0.1" and path == f"/experiments/{exp_id}/runs"
    assert parse_qs(query) == {
        "viewStateShareKey": [VIEW_KEY],
        "workflowType": ["machine_learning"],
    }
    page = requests.get(base + "/", timeout=30)
    assert page.status_code == 200 and '<div id="root"' in page.text  # the UI's single page
    # The view the page reads from the experiment's tags (the UI does this through /graphql).
    exp = requests.get(
        f"{base}/ajax-api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id}, timeout=30
    )
    assert exp.status_code == 200
    tags = {t["key"]: t["value"] for t in exp.json()["experiment"]["tags"]}
    envelope = json.loads(tags[VIEW_TAG])
    state = json.loads(envelope["state"])
    assert envelope["name"] == "s2ap: trials" and state["searchFilter"] == TRIALS_FILTER
    assert state["orderByKey"] == "metrics.`val_robust_acc`" and state["orderByAsc"] is False
    columns = state["selectedColumns"]
    assert columns[0] == "metrics.`val_robust_acc`" and "params.`s2ap.rho`" in columns
    assert "params.`model.arch`" not in columns  # the same in every trial: not a column
    # The REST call that lists the runs, as the page makes it: the three trials, best first.
    found = requests.post(
        f"{base}/ajax-api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": [exp_id],
            "filter": state["searchFilter"],
            "run_view_type": "ACTIVE_ONLY",
            "order_by": ["metrics.`val_robust_acc` DESC"],
            "max_results": 100,
        },
        timeout=30,
    )
    assert found.status_code == 200
    run_ids = [r["info"]["run_id"] for r in found.json()["runs"]]
    assert run_ids == [study.runs[f"trial_000{i}"] for i in (2, 1, 0)]  # the study run is not
    # A Host header the server was not told about is refused (--allowed-hosts on loopback):
    # a page on another site cannot reach the UI through DNS rebinding.
    for host in ("evil.example.com", "192.168.1.10:" + str(parts.port)):
        refused = requests.get(base + "/", headers={"Host": host}, timeout=30)
        assert refused.status_code == 403, host
    return base, int(parts.port or 0)


def _check_study_run_page(url: str, base: str, exp_id: str, parent_run_id: str) -> None:
    """The second URL: the study run's comparison plot, which the server serves as a PNG."""
    path, _, query = urlsplit(url).fragment.partition("?")
    prefix = f"/experiments/{exp_id}/runs/{parent_run_id}/artifactPath/"
    assert path.startswith(prefix) and parse_qs(query) == {"workflowType": ["machine_learning"]}
    plot = path[len(prefix) :]
    assert plot == "plots/val_robust_acc_vs_ascent_steps.png"
    png = requests.get(
        f"{base}/get-artifact", params={"path": plot, "run_uuid": parent_run_id}, timeout=30
    )
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_ui_needs_a_store_and_the_study(tmp_path: Path) -> None:
    db = tmp_path / "none" / "mlflow.db"
    with pytest.raises(StudyNotFoundError, match="run the study first"):
        serve_study_ui(f"sqlite:///{db}", "x", storage_root=tmp_path)
    assert not db.exists()  # looking did not create an empty store
    study = run_fake_study(None, tmp_path / "s", "present", n_trials=1, epochs=1)
    with pytest.raises(StudyNotFoundError, match=r"studies there: .*present"):
        serve_study_ui(study.tracker.tracking_uri, "absent", storage_root=tmp_path / "s")


def test_facets_url_without_the_view() -> None:
    pages = StudyPages("s", "7", None, (Objective("val_loss", "min"),))
    query = parse_qs(urlsplit(pages.runs_url("http://127.0.0.1:5000/")).fragment.split("?")[1])
    assert query == {
        "searchFilter": [TRIALS_FILTER],
        "orderByKey": ["metrics.`val_loss`"],
        "orderByAsc": ["true"],
        "workflowType": ["machine_learning"],
    }
    assert pages.study_run_url("http://h") is None


# --------------------------------------------------------------------------------------------
# exposure


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # sqlalchemy, via mlflow.server
def test_loopback_server_accepts_only_its_own_names() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    argv = mlflow_server_command(
        port=5123, backend_store_uri="sqlite:////x/mlflow.db", artifacts_destination="/x/a"
    )
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    assert allowed == ["localhost:5123", "127.0.0.1:5123"]
    for host in ("localhost:5123", "127.0.0.1:5123"):
        assert is_allowed_host_header(allowed, host)
    for host in ("evil.example.com:5123", "10.0.0.5:5123", "localhost:5124"):
        assert not is_allowed_host_header(allowed, host)
    # Explicit lists (the docker and KubeRay recipes) are kept as given.
    argv = mlflow_server_command(
        host="0.0.0.0", port=5000, backend_store_uri="b", artifacts_destination="a",
        allowed_hosts=["mlflow:5000"],
    )  # fmt: skip
    assert argv[argv.index("--allowed-hosts") + 1] == "mlflow:5000"


def test_exposure_defaults_and_warning() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert exposure_warning("127.0.0.1", 5000) is None
    assert default_allowed_hosts("0.0.0.0", 5000) is None  # MLflow's own default
    assert default_allowed_hosts("10.0.0.5", 5000) == [
        "10.0.0.5:5000",
        "localhost:5000",
        "127.0.0.1:5000",
    ]
    for host in ("0.0.0.0", "10.0.0.5"):
        text = exposure_warning(host, 5000)
        assert text and "no authentication" in text and "delete" in text
        assert "--app-name basic-auth" in text
