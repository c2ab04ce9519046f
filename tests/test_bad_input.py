"""Bad input to every ``s2ap`` command is refused up front: exit code 2, a message naming the
field, flag or file, no traceback, nothing created (not even an empty MLflow store), and in
seconds (:data:`LIMIT_S`).

One table of cases; each runs the real command line (in-process ``tune.cli.main``, a few
through the installed console script) in a folder snapshotted before and after. Every refusal
comes before Ray starts or anything trains (``tune.driver.preflight`` checks the data, the
storage, the tracking server and the cluster first): the whole table runs in seconds.

The classes of input a user can get wrong, and the rows that cover them: files (missing, a
folder, empty, not UTF-8, not YAML, not a mapping, a pipe, far too large), paths (an output
that exists, is a file, lies under a file, on a read-only or kernel filesystem, too long for
Ray's sockets), types (a ``true`` where a count or a number goes, ``2.5`` or ``2.0`` for a
count, ``1`` or ``'yes'`` for a flag, bad source options), ranges (inf, nan, negative, zero),
cross-field (the validation split against the training pool and the batch size), data (an
image folder's layout, class folders and images, a torchvision set neither on disk nor
downloadable), the tracking store (a server that is down, hangs, or is not MLflow; an sqlite
path that is a folder or not a database; a database without its driver), the cluster (an
address nobody answers on, a dashboard URL given to ``tune``, ``auto`` sizing flags), this
machine (more CPUs or GPUs per trial than it has) and ports (in use, a host not of this
machine).
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.files import snapshot
from tests.tune.conftest import run_cli, write_study
from tracking.artifacts import save_masks
from tune.cli import main

#: Every refusal comes within this many seconds on an idle machine (the slowest in-process rows
#: wait out a 3 s timeout; a console row pays the interpreter's start and imports, ~5 s).
LIMIT_S = 15.0


def _limit_s() -> float:
    """:data:`LIMIT_S`, stretched by how oversubscribed the CPUs are right now (at most 4x):
    a shared 2-core box running other suites must not fail a refusal that does its work in
    seconds, while one that waits (MLflow's minutes of retries, a Ray timeout) still fails."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return LIMIT_S * min(4.0, max(1.0, load))


RUN = {
    "device": "cpu",
    "data": {"source": "digits", "batch_size": 128},
    "prune": {"epochs": 1, "warmup_epochs": 0},
}


@dataclasses.dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    """The command line; ``{d}`` is the case folder, ``{hang}`` the port of a server that
    accepts and never answers, ``{http}`` the port of an HTTP server that is not MLflow."""
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
#: An image folder as the study's data (``data.options={}``: the synthetic source's are unknown).
IMAGES = ("--set", "data.source=imagefolder", "--set", "data.options={{}}", "--set")
CIFAR = ("--set", "data.source=cifar10", "--set", "data.options={{}}")
DOWN = "http://127.0.0.1:1"  # nothing listens on port 1

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
    "run: run file is a pipe": _run("run", "{d}/pipe.yaml", *OUT, names="not a regular file"),
    "run: count given true": _run(
        "run", R, *OUT, "--set", "prune.epochs=true", names="prune.epochs: must be a whole number"
    ),
    "run: flag given 1": _run(
        "run", R, *OUT, "--set", "data.download=1", names="data.download: must be true or false"
    ),
    "run: image folder missing": _run(
        "run", R, *OUT, *IMAGES, "data.root={d}/nope", names="data.root", console=True
    ),
    "run: validation split leaves no batch": _run(
        "run", R, *OUT, "--set", "data.val_size=1430", names="data.val_size"
    ),
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
    # the study file
    "tune: study file not UTF-8": _run("tune", "{d}/binary.yaml", names="not a text file"),
    "tune: study file not YAML": _run("tune", "{d}/broken.yaml", names="not valid YAML"),
    "tune: study file a list": _run("tune", "{d}/list.yaml", names="expected a mapping"),
    "tune: study file is a pipe": _run("tune", "{d}/pipe.yaml", names="not a regular file"),
    "tune: study file far too large": _run("tune", "{d}/big.yaml", names="far too large"),
    # types: counts, numbers and flags
    "tune: count given true": _run(
        "tune", S, "--set", "prune.epochs=true", names="prune.epochs: must be a whole number, not"
    ),
    "tune: count given 2.5": _run(
        "tune", S, "--set", "study.num_samples=2.5", names="study.num_samples: must be a whole"
    ),
    "tune: count given 64.0": _run(
        "tune", S, "--set", "data.batch_size=64.0", names="data.batch_size: must be a whole"
    ),
    "tune: seed list with true": _run(
        "tune", S, "--set", "study.seeds=[0, true]", names="study.seeds.1: must be a whole"
    ),
    "tune: number given true": _run(
        "tune", S, "--set", "threat.eps=true", names="threat.eps: must be a number, not true"
    ),
    "tune: flag given 1": _run(
        "tune", S, "--set", "study.reuse_actors=1", names="study.reuse_actors: must be true or"
    ),
    "tune: flag given 'yes'": _run(
        "tune", S, "--set", "data.download='yes'", names="data.download: must be true or false"
    ),
    "tune: source option given true": _run(
        "tune", S, "--set", "data.options.n_train=true", names="data.options.n_train"
    ),
    "tune: unknown source option": _run(
        "tune", S, "--set", "data.source=digits", names="data.options: channels"
    ),
    "tune: mean without std": _run(
        "tune", S, "--set", "data.options.mean=[0.5]", names="mean and std"
    ),
    # data: the validation split
    "tune: validation split takes the pool": _run(
        "tune", S, "--set", "data.val_size=240", names="data.val_size", console=True
    ),
    "tune: validation split leaves less than a batch": _run(
        "tune", S, "--set", "data.val_size=200", names="less than one batch"
    ),
    "tune: validation split empty": _run(
        "tune", S, "--set", "data.val_size=0.001", names="nothing to validate"
    ),
    # data: an image folder, a torchvision set
    "tune: image folder missing": _run("tune", S, *IMAGES, "data.root=nope", names="data.root"),
    "tune: image folder is a file": _run(
        "tune", S, *IMAGES, "data.root=afile.txt", names="is a file"
    ),
    "tune: image folder without test/": _run(
        "tune", S, *IMAGES, "data.root=img_notest", names="no test/ folder"
    ),
    "tune: image folder without classes": _run(
        "tune", S, *IMAGES, "data.root=img_noclasses", names="no class folders"
    ),
    "tune: image folder classes differ": _run(
        "tune", S, *IMAGES, "data.root=img_mismatch", names="same class folders"
    ),
    "tune: image folder class without images": _run(
        "tune", S, *IMAGES, "data.root=img_empty", names="without image files"
    ),
    "tune: image folder image not square": _run(
        "tune", S, *IMAGES, "data.root=img_nonsquare", names="square"
    ),
    "tune: image folder image unreadable": _run(
        "tune", S, *IMAGES, "data.root=img_junk", names="not an image"
    ),
    "tune: image folder smaller than a batch": _run(
        "tune", S, *IMAGES, "data.root=img_small", names="less than one batch"
    ),
    "tune: image folder option channels 2": _run(
        "tune",
        S,
        *IMAGES,
        "data.root=img_small",
        "--set",
        "data.options.channels=2",
        names="data.options.channels",
    ),
    "tune: cifar10 not on disk, no download": _run(
        "tune", S, *CIFAR, "--set", "data.root=nocifar", names="data.download: true"
    ),
    "tune: cifar10 download into /proc": _run(
        "tune",
        S,
        *CIFAR,
        "--set",
        "data.download=true",
        "--set",
        "data.root=/proc/cifar",
        names="data.root (the download goes there)",
    ),
    # storage
    "tune: --storage-root on /proc": _run(
        "tune", S, "--storage-root", "/proc/s2ap-studies", names="/proc"
    ),
    "tune: storage_root under a file": _run(
        "tune", S, "--set", "study.storage_root=afile.txt/sub", names="study.storage_root"
    ),
    "tune: --ray-temp-dir too long for sockets": _run(
        "tune", S, "--ray-temp-dir", "{d}/ray-temp-with-a-name-far-too-long", names="too long"
    ),
    "tune: --ray-temp-dir on /sys": _run("tune", S, "--ray-temp-dir", "/sys/ray", names="/sys"),
    # the tracking store
    "tune: tracking server down": _run(
        "tune", S, "--tracking-uri", DOWN, names=f"--tracking-uri {DOWN}", console=True
    ),
    "tune: tracking server hangs": _run(
        "tune", S, "--tracking-uri", "http://127.0.0.1:{hang}", names="does not answer"
    ),
    "tune: tracking server is not MLflow": _run(
        "tune", S, "--tracking-uri", "http://127.0.0.1:{http}", names="HTTP 404"
    ),
    "tune: study.tracking_uri down": _run(
        "tune", S, "--set", f"study.tracking_uri={DOWN}", names="study.tracking_uri"
    ),
    "tune: --wait-for-tracking runs out": _run(
        "tune", S, "--tracking-uri", DOWN, "--wait-for-tracking", "2", names="waited 2 s"
    ),
    "tune: --wait-for-tracking -1": _run(
        "tune", S, "--wait-for-tracking", "-1", names="--wait-for-tracking"
    ),
    "tune: sqlite store not a database": _run(
        "tune", S, "--tracking-uri", "sqlite:///{d}/afile.txt", names="not an SQLite database"
    ),
    "tune: sqlite store is a folder": _run(
        "tune", S, "--tracking-uri", "sqlite:///{d}/folder", names="is a folder"
    ),
    "tune: sqlite store on /proc": _run(
        "tune", S, "--tracking-uri", "sqlite:////proc/s2ap/mlflow.db", names="/proc"
    ),
    "tune: database store unreachable": _run(
        "tune", S, "--tracking-uri", "postgresql://u:pw@127.0.0.1:1/db", names="127.0.0.1:1"
    ),
    # the cluster and this machine
    "tune: --address nobody answers": _run(
        "tune", S, "--address", "127.0.0.1:1", names="--address 127.0.0.1:1"
    ),
    "tune: --address a dashboard URL": _run(
        "tune", S, "--address", "http://127.0.0.1:8265", names="s2ap submit"
    ),
    "tune: --address not HOST:PORT": _run(
        "tune", S, "--address", "head:port", names="expected HOST:PORT"
    ),
    "tune: --num-cpus with --address": _run(
        "tune", S, "--address", "127.0.0.1:1", "--num-cpus", "2", names="--num-cpus"
    ),
    "tune: more CPUs per trial than here": _run(
        "tune", S, "--set", "study.resources.cpu=4096", names="study.resources.cpu"
    ),
    "tune: more GPUs per trial than here": _run(
        "tune", S, "--set", "study.resources.gpu=64", names="study.resources.gpu"
    ),
    "tune: GPU trials, --num-gpus 0": _run(
        "tune", S, "--set", "study.resources.gpu=1", "--num-gpus", "0", names="--num-gpus 0"
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
    "ui: --port in use": _run("ui", S, "--port", "{hang}", names="already in use"),
    "ui: --host not of this machine": _run("ui", S, "--host", "203.0.113.7", names="--host"),
    "submit: --working-dir missing": _run(
        "submit",
        S,
        "--address",
        "http://127.0.0.1:1",
        "--working-dir",
        "{d}/nope",
        names="--working-dir",
    ),
    "submit: dashboard nobody answers": _run("submit", S, "--address", DOWN, names="--address"),
    "submit: --address not a dashboard URL": _run(
        "submit", S, "--address", "ftp://head:8265", names="dashboard URL"
    ),
    "submit: validation split takes the pool": _run(
        "submit", S, "--address", DOWN, "--set", "data.val_size=240", names="data.val_size"
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
    _bad_files(d)
    _image_folders(d)
    return d


def _bad_files(d: Path) -> None:
    """Study files that are not what they claim to be."""
    (d / "binary.yaml").write_bytes(bytes(range(256)))
    (d / "broken.yaml").write_text("name: [1,\n")
    (d / "list.yaml").write_text("- data\n- model\n")
    os.mkfifo(d / "pipe.yaml")  # reading it would wait for a writer forever
    with open(d / "big.yaml", "wb") as fh:  # sparse: 11 MB on paper, nothing on disk
        fh.truncate(11_000_000)


def _image(path: Path, size: tuple[int, int] = (8, 8)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=128).save(path)


def _image_folders(d: Path) -> None:
    """Image folders, each wrong in one way (``img_small`` is right, but holds 4 images)."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _image(d / "img_small" / split / cls / "0.png")
            _image(d / "img_empty" / split / cls / "0.png")
            _image(
                d / "img_nonsquare" / split / cls / "0.png", (8, 6) if split == "train" else (8, 8)
            )
            _image(d / "img_junk" / split / cls / "1.png")
        _image(d / "img_mismatch" / split / ("b" if split == "train" else "c") / "0.png")
        (d / "img_noclasses" / split).mkdir(parents=True)
    _image(d / "img_notest" / "train" / "a" / "0.png")
    (d / "img_empty" / "train" / "b" / "0.png").unlink()
    (d / "img_empty" / "train" / "b" / "notes.txt").write_text("no image here\n")
    (d / "img_junk" / "train" / "a" / "0.png").write_bytes(b"not a png")
    _image(d / "img_mismatch" / "train" / "a" / "0.png")
    _image(d / "img_mismatch" / "test" / "a" / "0.png")


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404, "no such page")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    """``hang``: a port that accepts connections and never answers (a server that hangs);
    ``http``: an HTTP server that answers 404 everywhere (not MLflow)."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # the kernel completes connections into the backlog; nothing reads them
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"hang": hang.getsockname()[1], "http": web.server_address[1]}
    finally:
        web.shutdown()
        web.server_close()
        hang.close()


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
def test_bad_input_is_refused(
    folder: Path, servers: dict[str, int], case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)  # defaults such as --out best-mask land here, in the snapshot
    argv = [a.format(d=folder, **servers) for a in case.argv]
    before = snapshot(folder)
    limit = _limit_s()
    start = time.monotonic()
    if case.console:
        res = run_cli(*argv, cwd=folder, timeout=120)
        code, err = res.returncode, res.stderr
    else:
        code, err = _main(argv)
    took = time.monotonic() - start
    assert code == 2, err
    assert case.names.format(d=folder, **servers) in err, err
    assert "Traceback" not in err
    assert snapshot(folder) == before, "a refused command created or changed files"
    assert took < limit, f"refused after {took:.1f} s (limit {limit:.0f} s at this load)"


def test_the_table_covers_every_command() -> None:
    commands = {c.argv[0] if c.argv[0] != "masks" else " ".join(c.argv[:2]) for c in CASES.values()}
    expected = {"run", "tune", "evaluate", "status", "report", "ui", "submit"}
    assert commands >= expected | {"masks pull", "masks apply", "masks diff"}
    assert len(CASES) >= 120


def test_no_case_left_ray_or_mlflow_state_behind(folder: Path) -> None:
    assert not (folder / "studies").exists()
    assert not list(folder.rglob("mlflow.db")) and not list(folder.rglob("optuna.journal"))
    assert not os.path.exists(folder / "best-mask")
