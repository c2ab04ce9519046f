"""Bad input to every ``s2ap`` command is refused up front: exit code 2, a message naming the
field, flag or file, no traceback, and nothing created (not even an empty MLflow store).

One table of cases; each runs the real command line (in-process ``tune.cli.main``, a few
through the installed console script) in a folder snapshotted before and after. Every refusal
comes before Ray starts or anything trains: the whole table runs in seconds.
"""

from __future__ import annotations

import dataclasses
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.files import snapshot
from tests.tune.conftest import run_cli, write_study
from tracking.artifacts import save_masks
from tune.cli import main

RUN = {
    "device": "cpu",
    "data": {"source": "digits", "batch_size": 128},
    "prune": {"epochs": 1, "warmup_epochs": 0},
}


@dataclasses.dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    """The command line; ``{d}`` is the case folder."""
    names: str
    """What the message must name (the field, flag or file)."""
    console: bool = False
    """Run through the installed ``s2ap`` script instead of in-process."""


def _run(*args: str, names: str, console: bool = False) -> Case:
    return Case(args, names, console)


OUT = ("--out", "{d}/out")
S = "{d}/study.yaml"
R = "{d}/run.yaml"
MASK, OTHER, DENSE = "{d}/mask.s2mask", "{d}/other.s2mask", "{d}/dense.pt"
PULL = ("masks", "pull")
APPLY = ("masks", "apply")

CASES: dict[str, Case] = {
    # --- s2ap run -------------------------------------------------------------------------------
    "run: empty run file": _run("run", "{d}/empty.yaml", *OUT, names="empty.yaml", console=True),
    "run: config is a folder": _run("run", "{d}/folder", *OUT, names="is a folder"),
    "run: config missing": _run("run", "{d}/nope.yaml", *OUT, names="nope.yaml"),
    "run: --out is a file": _run("run", R, "--out", "{d}/afile.txt", names="--out"),
    "run: --out under a file": _run("run", R, "--out", "{d}/afile.txt/sub", names="--out"),
    "run: --out not empty": _run("run", R, "--out", "{d}/full", names="--out"),
    "run: --resume without checkpoint": _run("run", R, *OUT, "--resume", names="checkpoint.pt"),
    "run: --set broken YAML": _run("run", R, *OUT, "--set", "prune.rho=[1,", names="--set"),
    "run: --set without =": _run("run", R, *OUT, "--set", "prune.rho", names="--set"),
    "run: rho inf": _run("run", R, *OUT, "--set", "prune.rho=.inf", names="prune.rho"),
    "run: rho nan": _run("run", R, *OUT, "--set", "prune.rho=.nan", names="prune.rho"),
    "run: eps inf": _run("run", R, *OUT, "--set", "threat.eps=.inf", names="threat.eps"),
    "run: lr negative": _run("run", R, *OUT, "--set", "prune.lr=-0.1", names="prune.lr"),
    "run: sparsity 1.5": _run("run", R, *OUT, "--set", "prune.sparsity=1.5", names="sparsity"),
    "run: epochs negative": _run("run", R, *OUT, "--set", "prune.epochs=-1", names="prune.epochs"),
    "run: unknown field": _run("run", R, *OUT, "--set", "prune.rhoo=0.1", names="prune.rhoo"),
    "run: dense.checkpoint missing": _run(
        "run", R, *OUT, "--set", "dense.checkpoint={d}/nope.pt", names="dense.checkpoint"
    ),
    "run: --device bogus": _run("run", R, *OUT, "--device", "bogus", names="--device"),
    # --- s2ap tune ------------------------------------------------------------------------------
    "tune: study is a folder": _run("tune", "{d}/folder", names="is a folder"),
    "tune: study missing": _run("tune", "{d}/nope.yaml", names="nope.yaml"),
    "tune: empty study file": _run("tune", "{d}/empty.yaml", names="search_space"),
    "tune: --num-samples 0": _run("tune", S, "--num-samples", "0", names="--num-samples"),
    "tune: --num-samples -3": _run("tune", S, "--num-samples", "-3", names="--num-samples"),
    "tune: --num-cpus 0": _run("tune", S, "--num-cpus", "0", names="--num-cpus"),
    "tune: --num-gpus -1": _run("tune", S, "--num-gpus", "-1", names="--num-gpus"),
    "tune: --num-cpus 1.5": _run("tune", S, "--num-cpus", "1.5", names="--num-cpus"),
    "tune: time budget inf": _run(
        "tune", S, "--set", "study.time_budget_s=.inf", names="study.time_budget_s"
    ),
    "tune: resources.cpu nan": _run(
        "tune", S, "--set", "study.resources.cpu=.nan", names="study.resources.cpu"
    ),
    "tune: resources.gpu inf": _run(
        "tune", S, "--set", "study.resources.gpu=.inf", names="study.resources.gpu"
    ),
    "tune: reduction_factor inf": _run(
        "tune", S, "--set", "study.scheduler.reduction_factor=.inf", names="reduction_factor"
    ),
    "tune: num_samples 0": _run(
        "tune", S, "--set", "study.num_samples=0", names="study.num_samples"
    ),
    "tune: test_eval.n_examples 0": _run(
        "tune", S, "--set", "study.test_eval.n_examples=0", names="study.test_eval.n_examples"
    ),
    "tune: checkpoint.frequency 0": _run(
        "tune", S, "--set", "study.checkpoint.frequency=0", names="study.checkpoint.frequency"
    ),
    "tune: max_failures -1": _run(
        "tune", S, "--set", "study.max_failures=-1", names="study.max_failures"
    ),
    "tune: rho inf in the study": _run("tune", S, "--set", "prune.rho=.inf", names="prune.rho"),
    "tune: --set broken YAML": _run("tune", S, "--set", "prune.rho=[1,", names="--set"),
    "tune: --resume and --overwrite": _run(
        "tune", S, "--resume", "--overwrite", names="--overwrite"
    ),
    "tune: --resume of a study never run": _run("tune", S, "--resume", names="nothing to resume"),
    "tune: --storage-root is a file": _run(
        "tune", S, "--storage-root", "{d}/afile.txt", names="--storage-root"
    ),
    "tune: storage_root is a file": _run(
        "tune", S, "--set", "study.storage_root=afile.txt", names="study.storage_root"
    ),
    "tune: --ray-temp-dir is a file": _run(
        "tune", S, "--ray-temp-dir", "{d}/afile.txt", names="--ray-temp-dir"
    ),
    "tune: relative sqlite URI": _run(
        "tune", S, "--tracking-uri", "sqlite:///rel.db", names="tracking_uri"
    ),
    # --- s2ap evaluate --------------------------------------------------------------------------
    "evaluate: --n-examples -5": _run(
        "evaluate", S, "--n-examples", "-5", names="--n-examples", console=True
    ),
    "evaluate: --n-examples 0": _run("evaluate", S, "--n-examples", "0", names="--n-examples"),
    "evaluate: --n-examples abc": _run("evaluate", S, "--n-examples", "abc", names="--n-examples"),
    "evaluate: study never run": _run("evaluate", S, names="no results for study 'tiny'"),
    "evaluate: study is a folder": _run("evaluate", "{d}/folder", names="is a folder"),
    # --- s2ap status ----------------------------------------------------------------------------
    "status: study never run": _run("status", S, names="no results for study 'tiny'"),
    "status: study missing": _run("status", "{d}/nope.yaml", names="nope.yaml"),
    "status: unknown searcher": _run(
        "status", S, "--set", "study.searcher.kind=bogus", names="study.searcher.kind"
    ),
    # --- s2ap masks pull|apply|diff -------------------------------------------------------------
    "pull: study never run": _run(*PULL, S, names="no MLflow store", console=True),
    "pull: --out is a file": _run(*PULL, S, "--out", "{d}/afile.txt", names="--out"),
    "pull: name without --tracking-uri": _run(*PULL, "tiny", names="--tracking-uri"),
    "pull: store missing": _run(
        *PULL, "tiny", "--tracking-uri", "sqlite:///{d}/none/mlflow.db", names="no MLflow store"
    ),
    "pull: --mode sideways": _run(*PULL, S, "--mode", "sideways", names="--mode"),
    "apply: mask missing": _run(
        *APPLY, "{d}/nope.s2mask", "--checkpoint", DENSE, *OUT, names="nope.s2mask"
    ),
    "apply: --checkpoint missing": _run(
        *APPLY, MASK, "--checkpoint", "{d}/nope.pt", *OUT, names="--checkpoint"
    ),
    "apply: --checkpoint not tensors": _run(
        *APPLY, MASK, "--checkpoint", "{d}/afile.txt", *OUT, names="afile.txt"
    ),
    "apply: --out is a folder": _run(
        *APPLY, MASK, "--checkpoint", DENSE, "--out", "{d}/folder", names="--out"
    ),
    "apply: --out exists": _run(
        *APPLY, MASK, "--checkpoint", DENSE, "--out", "{d}/afile.txt", names="--force"
    ),
    "apply: not a mask file": _run(
        *APPLY, "{d}/afile.txt", "--checkpoint", DENSE, *OUT, names="afile.txt"
    ),
    "apply: mask does not fit": _run(
        *APPLY, OTHER, "--checkpoint", DENSE, *OUT, names="does not fit"
    ),
    "diff: mask missing": _run("masks", "diff", "{d}/nope.s2mask", MASK, names="nope.s2mask"),
    "diff: not a mask file": _run("masks", "diff", MASK, "{d}/afile.txt", names="afile.txt"),
    "diff: different layers": _run("masks", "diff", MASK, OTHER, names="cannot be compared"),
    # --- s2ap report ----------------------------------------------------------------------------
    "report: study never run": _run("report", S, "--out", "{d}/r.md", names="no MLflow store"),
    "report: --out is a folder": _run("report", S, "--out", "{d}/folder", names="--out"),
    "report: --figures-dir is a file": _run(
        "report", S, "--out", "{d}/r.md", "--figures-dir", "{d}/afile.txt", names="--figures-dir"
    ),
    "report: name without --tracking-uri": _run("report", "tiny", names="--tracking-uri"),
    # --- s2ap ui / submit -----------------------------------------------------------------------
    "ui: --port 0": _run("ui", S, "--port", "0", names="--port"),
    "ui: --port 70000": _run("ui", S, "--port", "70000", names="--port"),
    "ui: --port abc": _run("ui", S, "--port", "abc", names="--port"),
    "ui: study never run": _run("ui", S, names="no MLflow store"),
    "submit: --working-dir missing": _run(
        "submit",
        S,
        "--address",
        "http://127.0.0.1:1",
        "--working-dir",
        "{d}/nope",
        names="--working-dir",
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs every case picks from: a study that never ran, a run file, masks, files."""
    d = tmp_path_factory.mktemp("bad-input")
    write_study(d)  # storage_root: studies (never created)
    (d / "run.yaml").write_text(yaml.safe_dump(RUN))
    (d / "empty.yaml").write_text("")
    (d / "folder").mkdir()
    (d / "full").mkdir()
    (d / "full" / "x.txt").write_text("x")
    (d / "afile.txt").write_text("not a tensor file\n")
    torch.save({"net.0.weight": torch.randn(4, 4)}, d / "dense.pt")
    save_masks(d / "mask.s2mask", {"net.0.weight": torch.rand(4, 4) > 0.5})
    save_masks(d / "other.s2mask", {"net.9.weight": torch.rand(3, 2) > 0.5})
    return d


def _main(argv: list[str]) -> tuple[int, str]:
    """``s2ap ARGV`` in-process: (exit code, stderr); argparse errors exit via SystemExit."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused(folder: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)  # defaults such as --out best-mask land here, in the snapshot
    argv = [a.format(d=folder) for a in case.argv]
    before = snapshot(folder)
    if case.console:
        res = run_cli(*argv, cwd=folder, timeout=120)
        code, err = res.returncode, res.stderr
    else:
        code, err = _main(argv)
    assert code == 2, err
    assert case.names.format(d=folder) in err, err
    assert "Traceback" not in err
    assert snapshot(folder) == before, "a refused command created or changed files"


def test_the_table_covers_every_command() -> None:
    commands = {c.argv[0] if c.argv[0] != "masks" else " ".join(c.argv[:2]) for c in CASES.values()}
    expected = {"run", "tune", "evaluate", "status", "report", "ui", "submit"}
    assert commands >= expected | {"masks pull", "masks apply", "masks diff"}
    assert len(CASES) >= 40


def test_no_case_left_ray_or_mlflow_state_behind(folder: Path) -> None:
    assert not (folder / "studies").exists()
    assert not list(folder.rglob("mlflow.db")) and not list(folder.rglob("optuna.db"))
    assert not os.path.exists(folder / "best-mask")
