"""The results page (``s2ap report``): statistics, verdict rule, and a page built from MLflow runs.

The runs are created with the tracking API in a tmp sqlite store, shaped like the trials of a
real study (flattened params, per-epoch metrics, end-of-trial test metrics), with numbers chosen
so that every verdict kind appears.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracking.params import version_tags
from tracking.report import (
    CANNOT_TELL,
    REFUTES,
    SUPPORTS,
    Cell,
    TrialRun,
    build_report,
    judge,
    load_trial_runs,
    mean_std,
    overall,
    render_markdown,
)
from tracking.runs import StudyTracker, TrialTracker
from tune.cli import main

# --------------------------------------------------------------------------------------------
# statistics and the verdict rule


def test_mean_std_is_sample_std() -> None:
    m = mean_std([0.80, 0.82, 0.84])
    assert m.n == 3
    assert m.mean == pytest.approx(0.82)
    assert m.std == pytest.approx(0.02)  # ddof 1
    assert m.fmt(100) == "82.0 ± 2.0"
    assert mean_std([0.5]).fmt(100) == "50.0"  # one seed: no spread shown
    assert mean_std([]).n == 0 and mean_std([float("nan")]).fmt() == "–"


def test_judge_rule() -> None:
    hydra = [0.80, 0.81, 0.82]  # std 0.01
    # beyond the spread, right direction
    v = judge([0.85, 0.86, 0.87], hydra, "greater")
    assert (
        v.verdict == SUPPORTS and v.diff == pytest.approx(0.05) and v.noise == pytest.approx(0.01)
    )
    # beyond the spread, wrong direction
    assert judge([0.75, 0.76, 0.77], hydra, "greater").verdict == REFUTES
    assert judge([0.85, 0.86, 0.87], hydra, "less").verdict == REFUTES
    assert judge([0.75, 0.76, 0.77], hydra, "less").verdict == SUPPORTS
    # a difference smaller than the larger seed std: cannot tell
    v = judge([0.805, 0.815, 0.825], hydra, "greater")
    assert v.verdict == CANNOT_TELL and v.diff == pytest.approx(0.005)
    v = judge([0.79, 0.83, 0.87], hydra, "greater")  # diff 0.02, std 0.04
    assert v.verdict == CANNOT_TELL and v.noise == pytest.approx(0.04)
    # one seed: no spread to compare with
    assert judge([0.95], [0.80], "greater").verdict == CANNOT_TELL
    with pytest.raises(ValueError):
        judge([1.0], [0.0], "bigger")


def test_overall() -> None:
    assert overall([SUPPORTS, SUPPORTS]) == SUPPORTS
    assert overall([REFUTES]) == REFUTES
    assert overall([CANNOT_TELL, CANNOT_TELL]) == CANNOT_TELL
    assert overall([]) == CANNOT_TELL
    assert overall([SUPPORTS, CANNOT_TELL, REFUTES]) == (
        "mixed (1 support, 1 refute, 1 cannot tell)"
    )


# --------------------------------------------------------------------------------------------
# a page from MLflow runs

PRUNE_EPOCHS, WARMUP, FINETUNE_EPOCHS = 4, 1, 2
IMAGES = 1000  # training images per epoch (images_per_s x epoch_time_s)
SEEDS = (0, 1, 2)
NOISE = (-0.01, 0.0, 0.01)  # per seed: sample std 0.01
#: arm -> (AutoAttack, Hamming after warm-up, sharpness, Hessian, prune seconds after warm-up)
ARMS = {
    "none": (0.60, 0.010, 0.50, 2.0, 1.00),
    "score": (0.65, 0.004, 0.50, 3.0, 1.15),  # +5 points; stabler; same sharpness; sharper
    "random": (0.60, 0.010, 0.50, 2.0, 1.10),
}


def _params(perturbation: str, seed: int, *, awp: bool, sparsity: float, rho: float, steps: int):
    perturbs = {"warmup_epochs": WARMUP, "rho": rho, "ascent_steps": steps}
    return {
        "name": "fake",
        "seed": seed,
        "data": {"source": "digits"},
        "model": {"arch": "small_cnn"},
        "threat": {"eps": 0.1, "steps": 5},
        "pretrain": {"epochs": 15},
        "prune": {
            "epochs": PRUNE_EPOCHS,
            "sparsity": sparsity,
            "perturbation": perturbation,
            # as real runs: a HYDRA trial logs none of the params its arm never reads
            **({} if perturbation == "none" else perturbs),
        },
        "finetune": {"epochs": FINETUNE_EPOCHS, "awp": {"enabled": awp, "gamma": 0.005}},
        "validation": {"sharpness_rho": 0.1, "hessian_iters": 20},
        "evaluate": {"n_examples": 359, "pgd_steps": 20, "autoattack_examples": 200},
    }


def _log_trial(
    study: StudyTracker,
    tid: str,
    params: dict,
    *,
    aa: float,
    hamming: float,
    sharpness: float,
    hessian: float,
    seconds: float,
    status: str = "FINISHED",
    val: float = 0.5,
    prune_only: bool = False,
) -> str:
    """A trial run as a real one logs it; ``prune_only``: a ``study.trainable: prune`` trial
    (prune epochs only, no finetuning, no test numbers)."""
    trial = TrialTracker.open(**study.trial_context(), trial_id=tid, params=params, tags={})
    for epoch in range(1, PRUNE_EPOCHS + 1):
        warm = epoch <= WARMUP
        trial.log_metrics(
            {
                "mask_hamming": 0.02 if warm else hamming,
                "sharpness": sharpness,
                "epoch_time_s": 1.0 if warm else seconds,
                "images_per_s": IMAGES / (1.0 if warm else seconds),
                "val_robust_acc": val,
                "phase": "prune",
            },
            step=epoch,
        )
    trial.log_metrics({"hessian_top_eig": hessian}, step=PRUNE_EPOCHS)
    if prune_only:
        trial.finish(status)
        return trial.run_id
    last = PRUNE_EPOCHS + FINETUNE_EPOCHS
    for epoch in range(PRUNE_EPOCHS + 1, last + 1):
        trial.log_metrics({"epoch_time_s": 0.5, "val_robust_acc": 0.55}, step=epoch)
    trial.log_metrics(
        {"test_clean_acc": 0.9, "test_pgd_acc": aa + 0.05, "test_autoattack_acc": aa}, step=last
    )
    trial.finish(status)
    return trial.run_id


def _study(uri: str, root: Path, name: str, description: str | None = None) -> StudyTracker:
    config = {"study": {"name": name, "description": description, "max_concurrent_trials": 2}}
    study = StudyTracker(uri, name, study_config=config, storage_root=root)
    study.start()
    return study


@pytest.fixture
def fake_store(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Two studies in one sqlite store: arms (3 arms x AT/AWP x 2 sparsities x 3 seeds, one
    extra failed run) and a radius sweep (S2AP, 2 rho x 2 steps x 3 seeds)."""
    root = tmp_path / "store"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_ids: dict[str, str] = {}
    arms = _study(uri, root, "fake-arms")
    n = 0
    for perturbation, (aa, ham, sharp, hess, secs) in ARMS.items():
        for awp in (False, True):
            for sparsity in (0.9, 0.99):
                for seed, eps in zip(SEEDS, NOISE):
                    tid = f"arms_{n:03d}"
                    n += 1
                    params = _params(
                        perturbation, seed, awp=awp, sparsity=sparsity, rho=0.1, steps=1
                    )
                    run_ids[tid] = _log_trial(
                        arms,
                        tid,
                        params,
                        aa=aa + eps,
                        hamming=ham * (1 + eps),
                        sharpness=sharp + eps,
                        hessian=hess + eps,
                        seconds=secs * (1 + eps / 10),
                    )
    _log_trial(
        arms,
        "arms_failed",
        _params("score", 7, awp=False, sparsity=0.9, rho=0.1, steps=1),
        aa=0.0,
        hamming=1.0,
        sharpness=9.0,
        hessian=9.0,
        seconds=9.0,
        status="FAILED",
    )
    arms.finish()
    sweep = _study(uri, root, "fake-radius")
    for rho, base in ((0.05, 0.62), (0.5, 0.70)):
        for steps in (1, 2):
            for seed, eps in zip(SEEDS, NOISE):
                tid = f"radius_{n:03d}"
                n += 1
                params = _params("score", seed, awp=False, sparsity=0.9, rho=rho, steps=steps)
                run_ids[tid] = _log_trial(
                    sweep,
                    tid,
                    params,
                    aa=base + eps,
                    hamming=0.004,
                    sharpness=0.5,
                    hessian=3.0,
                    seconds=1.15,
                )
    sweep.finish()
    return uri, run_ids


def _claims(report) -> dict[str, str]:
    return {c.claim: c.verdict for c in report.claims}


def _find(claims: dict[str, str], start: str) -> str:
    hits = [v for k, v in claims.items() if k.startswith(start)]
    assert len(hits) == 1, (start, list(claims))
    return hits[0]


def test_report_from_mlflow_runs(fake_store: tuple[str, dict[str, str]]) -> None:
    uri, run_ids = fake_store
    runs, notes = load_trial_runs(uri, ["fake-arms", "fake-radius"])
    assert len(runs) == len(run_ids)  # the failed run is left out ...
    assert any("1 FAILED" in note for note in notes)  # ... and said so
    report = build_report(runs, notes)

    # one setting (digits, small_cnn): one section
    (section,) = report.sections
    assert section.info.title == "digits (scikit-learn 8x8), small_cnn"
    # cells: 3 arms x 2 finetunings x 2 sparsities in the arms study, 4 in the sweep
    assert len(section.arm_cells) == 12 and len(section.sweep_cells) == 4
    s2ap = [c for c in section.arm_cells if c.arm == "S2AP" and c.finetune == "AWP"]
    assert [c.sparsity for c in s2ap] == [0.9, 0.99]
    rs = section.arm_cells[s2ap[0]]
    assert [r.seed for r in rs] == [0, 1, 2]
    m = mean_std(r.metrics["test_autoattack_acc"] for r in rs)
    assert (m.mean, m.std) == (pytest.approx(0.65), pytest.approx(0.01))
    # prune epochs are the steps that logged mask_hamming (finetune times are not among them)
    assert rs[0].prune_series("epoch_time_s") == [1.0] + [pytest.approx(1.15 * 0.999)] * 3
    assert rs[1].mean_post_warmup("mask_hamming") == pytest.approx(0.004)
    # HYDRA runs log no warm-up, yet skip the same warm-up epochs as the arms they are compared to
    hydra = section.arm_cells[Cell("HYDRA", "AT", 0.9)]
    assert all("prune.warmup_epochs" not in r.params and r.warmup == WARMUP for r in hydra)
    assert hydra[1].mean_post_warmup("mask_hamming") == pytest.approx(0.010)

    claims = _claims(report)
    assert _find(claims, "S2AP has higher AutoAttack accuracy than HYDRA") == SUPPORTS
    assert _find(claims, "… with identical finetuning for both arms (AWP") == SUPPORTS
    assert _find(claims, "The gain comes from the sharpness-aware direction") == SUPPORTS
    assert _find(claims, "S2AP keeps clean accuracy") == SUPPORTS  # equal clean accuracy
    assert _find(claims, "S2AP masks are more stable") == SUPPORTS
    assert _find(claims, "… and at the last prune epoch") == SUPPORTS
    assert _find(claims, "S2AP finds flatter score landscapes: smaller score-space") == CANNOT_TELL
    assert _find(claims, "S2AP finds flatter score landscapes: smaller top Hessian") == REFUTES
    assert _find(claims, "S2AP costs about 15% more pruning time") == SUPPORTS
    # the sweep: every setting beats HYDRA (0.62 and 0.70 vs 0.60 +- 0.01), rho matters
    # (0.70 vs 0.62), the second ascent step changes nothing
    assert _find(claims, "S2AP beats HYDRA over a range of radii") == SUPPORTS
    assert _find(claims, "The radius rho changes AutoAttack accuracy") == SUPPORTS
    assert _find(claims, "More ascent steps") == CANNOT_TELL


def test_report_command_writes_page(fake_store: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    uri, run_ids = fake_store
    out = tmp_path / "docs" / "RESULTS.md"
    code = main(["report", "fake-arms", "fake-radius", "--tracking-uri", uri, "--out", str(out)])
    assert code == 0
    text = out.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the mode open() would give it
    # tables: mean +- std per cell (percent), verdicts, every run id in the appendix
    assert (
        "| AWP | 0.9 | S2AP (rho 0.1, 1 step) | 3 | 90.0 ± 0.0 | 70.0 ± 1.0 | 65.0 ± 1.0 |" in text
    )
    assert "| AT | 0.99 | HYDRA | 3 | 90.0 ± 0.0 | 65.0 ± 1.0 | 60.0 ± 1.0 |" in text
    assert "**refutes**" in text and "**supports**" in text and "cannot tell" in text
    for run_id in run_ids.values():
        assert f"`{run_id}`" in text
    for name in ("robust_vs_sparsity", "hamming", "rho"):
        png = tmp_path / "docs" / "figures" / f"digits-small_cnn-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/digits-small_cnn-{name}.png)" in text
    # prune-time ratio S2AP/HYDRA after warm-up
    assert "| 0.9 | S2AP | 6 |" in text and "| 1.15 |" in text


def test_report_unknown_study(
    fake_store: tuple[str, dict[str, str]], tmp_path: Path, capsys
) -> None:
    uri, _ = fake_store
    code = main(["report", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "r.md")])
    assert code == 2
    assert "no study 'nope'" in capsys.readouterr().err


def _run(study: str, arm: str, seed: int, *, seconds: float, aa: float = 0.5) -> TrialRun:
    """A TrialRun built directly (no MLflow): 4 prune epochs (warm-up 1), then finetuning."""
    perturbation = {"HYDRA": "none", "S2AP": "score"}[arm]
    params = {
        "prune.perturbation": perturbation,
        "prune.sparsity": "0.9",
        "prune.rho": "0.1",
        "prune.ascent_steps": "1",
        "prune.warmup_epochs": "1",
        "finetune.awp.enabled": "False",
        "seed": str(seed),
    }
    history = {
        "mask_hamming": [(1, 0.01), (2, 0.01), (3, 0.01), (4, 0.01)],
        # prune epochs 1-4 (one slow outlier: contention; the median ignores it), finetune 5
        "epoch_time_s": [(1, 1.0), (2, seconds), (3, seconds), (4, 50 * seconds), (5, 9.0)],
        "sharpness": [(1, 0.1), (2, 0.1), (3, 0.1)],
    }
    metrics = {"test_autoattack_acc": aa, "test_clean_acc": 0.9, "test_pgd_acc": aa}
    return TrialRun(study, f"{study}-{arm}-{seed}", f"t{seed}", params, metrics, history)


@pytest.mark.parametrize(
    ("s2ap_seconds", "verdict"),
    [
        ((1.14, 1.15, 1.16), SUPPORTS),  # +15% +- 1%
        ((1.50, 1.55, 1.60), REFUTES),  # +55%: outside 5-25%
        ((0.90, 1.30, 1.70), CANNOT_TELL),  # +30% +- 40%: the band and the noise overlap
    ],
)
def test_time_claim(s2ap_seconds: tuple[float, ...], verdict: str) -> None:
    runs = [_run("a", "HYDRA", i, seconds=1.0) for i in range(3)]
    runs += [_run("a", "S2AP", i, seconds=t) for i, t in enumerate(s2ap_seconds)]
    report = build_report(runs)
    assert runs[0].prune_seconds() == 1.0  # median of the post-warm-up epochs 2-4
    assert _find(_claims(report), "S2AP costs about 15% more pruning time") == verdict


def test_repeat_check_note() -> None:
    runs = [_run("a", "HYDRA", i, seconds=1.0) for i in range(3)]
    runs += [_run("a", "S2AP", i, seconds=1.1, aa=0.6) for i in range(3)]
    runs.append(_run("b", "S2AP", 0, seconds=1.1, aa=0.6))  # the same config + seed again
    report = build_report(runs)
    notes = report.sections[0].notes
    assert len(notes) == 1 and "1 configuration(s) ran in several studies (a, b)" in notes[0]
    assert "0.00 points (bit-identical runs)" in notes[0]
    # the repeat counts once in its cell (the first study's run), not as a fourth seed
    cell = next(c for c in report.sections[0].arm_cells if c.arm == "S2AP")
    assert [(r.study, r.seed) for r in report.sections[0].arm_cells[cell]] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
    ]
    runs[-1].metrics["test_autoattack_acc"] = 0.61
    assert "1.00 points (runs are not bit-identical)" in build_report(runs).sections[0].notes[0]


def test_runs_without_a_logged_warmup_share_the_window() -> None:
    """A real HYDRA run does not log ``prune.warmup_epochs`` (its arm never reads it): its
    after-warm-up window must still skip the warm-up of the S2AP runs it is compared with, or the
    Hamming and prune-time claims measure different epochs for the two arms."""
    runs = []
    for seed in SEEDS:
        hydra = _run("a", "HYDRA", seed, seconds=2.0)
        for key in ("prune.warmup_epochs", "prune.rho", "prune.ascent_steps"):
            del hydra.params[key]
        s2ap = _run("a", "S2AP", seed, seconds=2.3)
        s2ap.params["prune.warmup_epochs"] = "2"
        runs += [hydra, s2ap]
    for r, seconds in zip(runs, [2.0, 2.3] * len(SEEDS)):
        # two warm-up epochs that change the mask more and run faster than the others
        r.history["mask_hamming"] = [(1, 0.05), (2, 0.05), (3, 0.01), (4, 0.01)]
        r.history["epoch_time_s"] = [(1, 0.5), (2, 0.5), (3, seconds), (4, seconds)]
    report = build_report(runs)
    windows = {
        c.arm: {(r.warmup, r.post_warmup("epoch_time_s")[0]) for r in rs}
        for c, rs in report.sections[0].arm_cells.items()
    }
    assert windows == {"HYDRA": {(2, 2.0)}, "S2AP": {(2, 2.3)}}
    # Over the same epochs the masks are equally stable and S2AP's epochs cost 15% more; with
    # HYDRA's warm-up in its window, S2AP would look stabler and +84% slower.
    claims = _claims(report)
    assert _find(claims, "S2AP masks are more stable") == CANNOT_TELL
    assert _find(claims, "S2AP costs about 15% more pruning time") == SUPPORTS
    # The page's setup line shows the warm-up the runs logged, not a "?" for HYDRA's.
    text = render_markdown(report, studies=["a"], tracking_uris=["sqlite://"], figures={})
    assert "warm-up epochs 2." in text and "warm-up epochs ?" not in text


# --------------------------------------------------------------------------------------------
# several settings on one page, both hosts, a prune-only radius sweep


def _cifar_params(host: str, perturbation: str, seed: int, root: Path, rho: float = 0.1):
    params = _params(perturbation, seed, awp=False, sparsity=0.9, rho=rho, steps=1)
    params["data"] = {"source": "imagefolder", "root": str(root), "val_size": 30000}
    params["model"] = {"arch": "vgg6_narrow"}
    params["threat"] = {"eps": 8 / 255, "steps": 3}
    params["prune"]["host"] = host
    params["evaluate"] = {"n_examples": 10000, "pgd_steps": 20, "autoattack_examples": 1000}
    return params


def _image_folder(root: Path) -> Path:
    """A CIFAR-shaped image folder (10 classes, one 32x32 RGB image each) named like the JPEG
    re-encoding: enough for the page to read the data's shape and name."""
    from PIL import Image

    for split in ("train", "test"):
        for k in range(10):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(folder / "0.png")
    return root


#: (host, perturbation) -> (AutoAttack, prune seconds after warm-up) of the CIFAR-like study:
#: S2AP beats HYDRA, HARP+S2AP loses to HARP; S2AP costs the expected +25% of PGD-3, HARP+S2AP
#: +60%.
CIFAR_ARMS = {
    ("hydra", "none"): (0.40, 1.00),
    ("hydra", "score"): (0.45, 1.25),
    ("hydra", "random"): (0.40, 1.25),
    ("harp", "none"): (0.50, 1.00),
    ("harp", "score"): (0.44, 1.60),
}


@pytest.fixture
def settings_store(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Three studies in one store: a CIFAR-like arm study (five methods x 3 seeds, both
    hosts), its prune-only radius sweep (seed 0, no test numbers) and a digits study (HYDRA and
    S2AP x 3 seeds) whose cells must not merge with CIFAR's."""
    root = tmp_path / "store"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data = _image_folder(tmp_path / "data" / "cifar10-jpeg")
    run_ids: dict[str, str] = {}
    main_study = _study(uri, root, "c-main", description="CIFAR-10 at a CPU budget")
    for (host, perturbation), (aa, secs) in CIFAR_ARMS.items():
        for seed, eps in zip(SEEDS, NOISE):
            tid = f"c_{host}_{perturbation}_{seed}"
            run_ids[tid] = _log_trial(
                main_study,
                tid,
                _cifar_params(host, perturbation, seed, data),
                aa=aa + eps,
                hamming=0.01,
                sharpness=0.5 + eps,
                hessian=2.0 + eps,
                seconds=secs * (1 + eps / 10),
                val=0.30,
            )
    main_study.finish()
    sweep = _study(uri, root, "c-radius")
    for rho, val in ((0.01, 0.31), (0.1, 0.34)):
        tid = f"c_radius_{rho}"
        params = _cifar_params("hydra", "score", 0, data, rho=rho)
        params["study"] = {"trainable": "prune"}
        params["validation"]["max_examples"] = 2000
        run_ids[tid] = _log_trial(
            sweep,
            tid,
            params,
            aa=float("nan"),
            hamming=0.01,
            sharpness=0.5,
            hessian=2.0,
            seconds=1.25,
            val=val,
            prune_only=True,
        )
    sweep.finish()
    digits = _study(uri, root, "d-arms")
    for perturbation, aa in (("none", 0.80), ("score", 0.85)):
        for seed, eps in zip(SEEDS, NOISE):
            tid = f"d_{perturbation}_{seed}"
            params = _params(perturbation, seed, awp=False, sparsity=0.9, rho=0.1, steps=1)
            run_ids[tid] = _log_trial(
                digits,
                tid,
                params,
                aa=aa + eps,
                hamming=0.01,
                sharpness=0.5,
                hessian=2.0,
                seconds=1.0,
            )
    digits.finish()
    return uri, run_ids


def _section_claims(section) -> dict[str, str]:
    return {c.claim: c.verdict for c in section.claims}


def test_sections_per_setting_hosts_and_prune_only_sweep(
    settings_store: tuple[str, dict[str, str]],
) -> None:
    from tracking.report import load_studies

    uri, run_ids = settings_store
    names = ["c-main", "c-radius", "d-arms"]
    runs, notes = load_trial_runs(uri, names)
    assert len(runs) == len(run_ids)
    # a prune-only study has no test numbers by design: no "missing AutoAttack" note
    assert notes == []
    report = build_report(runs, notes, studies=load_studies(uri, names))

    # one section per setting, in the order the studies are named; no cell mixes settings
    cifar, digits = report.sections
    assert cifar.info.title == "CIFAR-10 (JPEG re-encoding), vgg6_narrow"
    assert digits.info.title == "digits (scikit-learn 8x8), small_cnn"
    assert {r.study for r in cifar.runs} == {"c-main", "c-radius"}
    assert [len(rs) for c, rs in digits.arm_cells.items()] == [3, 3]
    assert {c.arm for c in cifar.arm_cells} == {"HYDRA", "S2AP", "random", "HARP", "HARP+S2AP"}
    setup = "\n".join(cifar.info.lines)
    assert "246,682 parameters" in setup and "1,000 training images per epoch" in setup
    assert "training PGD-3" in setup and "eps 8/255" in setup
    assert "AutoAttack (standard, L-inf) on 1,000" in setup
    assert "CIFAR-10 at a CPU budget" in setup  # the study's description
    assert "2 trial(s) at a time" in setup

    # claims are judged within a setting: CIFAR's S2AP wins, HARP+S2AP loses to HARP; digits'
    # S2AP wins against digits' HYDRA only
    c = _section_claims(cifar)
    assert _find(c, "S2AP has higher AutoAttack accuracy than HYDRA") == SUPPORTS
    assert _find(c, "HARP+S2AP has higher AutoAttack accuracy than HARP") == REFUTES
    assert _find(c, "HARP+S2AP has higher PGD accuracy than HARP") == REFUTES
    assert _find(c, "HARP+S2AP masks are more stable than HARP masks") == CANNOT_TELL
    assert _find(c, "HARP+S2AP finds flatter score landscapes than HARP: smaller top") == (
        CANNOT_TELL
    )
    # the random control exists on HYDRA only: no HARP+random claim
    assert not [k for k in c if "(HARP+random)" in k]
    # prune time, judged against 1/(3+1) = 25% for PGD-3 training
    assert _find(c, "S2AP costs about 15% more pruning time than HYDRA") == SUPPORTS
    assert _find(c, "HARP+S2AP costs about 15% more pruning time than HARP") == REFUTES
    assert "expected with PGD-3 training: +25%" in next(k for k in c if k.startswith("S2AP costs"))
    # the sweep has no test numbers: judged on validation (one seed: cannot tell)
    assert _find(c, "S2AP beats HYDRA over a range of radii") == CANNOT_TELL
    assert "validation robust accuracy" in next(k for k in c if k.startswith("S2AP beats"))
    d = _section_claims(digits)
    assert _find(d, "S2AP has higher AutoAttack accuracy than HYDRA") == SUPPORTS
    assert not [k for k in d if k.startswith("HARP")]
    # the sweep's prune-only trial at rho 0.1, seed 0 is no repeat of the main study's S2AP
    # seed 0 (it has no test numbers): no repeat note
    assert cifar.notes == []

    text = render_markdown(report, studies=names, tracking_uris=[uri], figures={})
    assert text.index("## CIFAR-10 (JPEG re-encoding), vgg6_narrow") < text.index(
        "## digits (scikit-learn 8x8), small_cnn"
    )
    # the random arm has no ascent steps; the test attack and AutoAttack's sample are named;
    # the sweep table shows validation, no test columns
    assert "| AT | 0.9 | random (rho 0.1) | 3 |" in text
    assert "| seeds | clean | PGD-20 | AutoAttack (1,000) |" in text
    assert "| rho | ascent steps | seeds | val robust, last prune epoch | Hamming" in text
    assert "| 0.1 | 1 | 1 | 34.0 |" in text
    assert "Best mean validation robust accuracy at the last prune epoch: S2AP (rho 0.1" in text
    for run_id in run_ids.values():
        assert f"`{run_id}`" in text


def test_report_command_labels_and_machine(
    settings_store: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    uri, _ = settings_store
    out = tmp_path / "RESULTS.md"
    args = ["report", "c-main", "c-radius", "d-arms", "--tracking-uri", uri, "--out", str(out)]
    label = ["--label", "c-main=CIFAR-10, 20k images", "--machine", "c-radius=2 shared vCPUs"]
    assert main([*args, *label]) == 0
    text = out.read_text()
    assert "## CIFAR-10, 20k images" in text
    assert "**Machine**: 2 shared vCPUs; 2 trial(s) at a time" in text
    # runs that record their machine (the s2ap.machine tag of every new run) need no --machine
    assert f"**Machine**: {version_tags()['s2ap.machine']};" in text
    assert (tmp_path / "figures" / "cifar10-jpeg-vgg6_narrow-rho.png").is_file()
    assert "](figures/cifar10-jpeg-vgg6_narrow-rho.png)" in text
    assert (tmp_path / "figures" / "digits-small_cnn-hamming.png").is_file()
    assert not (tmp_path / "figures" / "digits-small_cnn-rho.png").exists()  # no sweep there
    assert main([*args, "--label", "nope=x"]) == 2


def test_expected_overhead_and_labels() -> None:
    from tracking.report import expected_overhead
    from tracking.report.setting import dataset_name, model_parameters

    assert expected_overhead(3) == pytest.approx(0.25)
    assert expected_overhead(10) == pytest.approx(1 / 11)
    assert expected_overhead(None) == pytest.approx(0.15)
    assert Cell("random", "AT", 0.9, 0.03, None).method() == "random (rho 0.03)"
    assert Cell("S2AP", "AT", 0.9, 0.1, 2).method() == "S2AP (rho 0.1, 2 steps)"
    assert dataset_name("imagefolder", "cifar10-jpeg") == "CIFAR-10 (JPEG re-encoding)"
    assert dataset_name("imagefolder", "CIFAR-100") == "CIFAR-100 (image folder)"
    assert dataset_name("imagefolder", "birds") == "image folder birds"
    assert dataset_name("cifar10", "") == "CIFAR-10"
    arch = {"data.source": "cifar10", "model.arch": "vgg6_narrow"}
    assert model_parameters(arch) == 246_682
    assert model_parameters({"data.source": "digits", "model.arch": "small_cnn"}) > 0
    assert model_parameters({"data.source": "nope", "model.arch": "small_cnn"}) is None
