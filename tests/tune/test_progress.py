"""What ``s2ap tune`` prints while a study runs (tune.driver.progress): one line per trial event
and a progress line, no Ray result box, no traceback; Ray's reporter back with ``-v 2``; and the
trial actor's quiet exit (tune.trial.worker_exit)."""

from __future__ import annotations

import io
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from ray.tune.experiment import Trial

from tests.tune.conftest import run_cli, short_tmp, write_study
from tune.driver.progress import (
    StudyProgress,
    describe_config,
    format_duration,
    quiet_libraries,
    ray_verbosity,
)
from tune.results.summary import format_trials_table
from tune.study.file import load_study
from tune.trial.context import CONTEXT_KEY

#: Lines that only Ray Tune's own reporter prints (its boxes, its status table).
RAY_BOX = re.compile(r"[╭│╰]|Trial status:|finished iteration|started with configuration")
PROGRESS = re.compile(r"^\[\d+/\d+ done(?: \(\d+ failed\))?, \d+ running, \d+ left\]")


def _trial(trial_id: str, config: dict[str, Any], status: str = Trial.PENDING) -> Trial:
    """A real Ray Tune trial record (a stub: no trainable, no storage)."""
    trial = Trial("S2APTrainable", config=config, trial_id=trial_id, stub=True)
    trial.set_status(status)
    return trial


def _ended(trial: Trial, epochs: int, value: float, *, done: bool = True) -> Trial:
    trial.update_last_result(
        {"training_iteration": epochs, "val_robust_acc": value, "done": done, "time_total_s": 62}
    )
    trial.set_status(Trial.TERMINATED)
    return trial


class _FailedTrial(Trial):
    """A trial whose error file is given (Ray writes it only with a running Ray)."""

    path: str = ""

    @property
    def error_file(self) -> str:
        return self.path


def _context(perturbation: str = "score", host: str = "hydra") -> dict[str, Any]:
    return {CONTEXT_KEY: {"base": {"prune": {"perturbation": perturbation, "host": host}}}}


def test_trial_configs_read_as_method_and_searched_values() -> None:
    s2ap = {"prune.perturbation": "score", "prune.rho": 0.0978912, "prune.ascent_steps": 2}
    assert describe_config({**s2ap, **_context()}) == "s2ap rho=0.09789 ascent_steps=2"
    random = {"prune.perturbation": "random", "prune.rho": 0.005}
    assert describe_config({**random, **_context()}) == "random-perturbation rho=0.005"
    hydra = {"prune.perturbation": "none", "baseline": "hydra", **_context()}
    assert describe_config(hydra) == "hydra (baseline hydra)"
    # The arm from the base config when it is not searched; HARP as the host.
    assert describe_config({"prune.rho": 0.1, **_context(host="harp")}) == "harp+s2ap rho=0.1"
    # Two values whose last names read alike keep their full paths.
    both = {"prune.lr": 0.1, "finetune.lr": 0.01, **_context()}
    assert describe_config(both) == "s2ap prune.lr=0.1 finetune.lr=0.01"
    assert [format_duration(s) for s in (4.4, 151, 3725)] == ["4s", "2m31s", "1h02m"]
    assert [ray_verbosity(v) for v in range(4)] == [0, 0, 1, 2]


def test_one_line_per_trial_event_and_a_bounded_progress_line(tmp_path: Path) -> None:
    out = io.StringIO()
    progress = StudyProgress(
        metric="val_robust_acc",
        mode="max",
        epochs_per_trial=10,
        scheduler="ASHA",
        max_failures=2,
        out=out,
        interval_s=30.0,
    )
    progress.setup(total_num_samples=4)
    config = {"prune.perturbation": "score", "prune.rho": 0.1, "prune.ascent_steps": 1}
    a, b = _trial("aaaa", {**config, **_context()}), _trial("bbbb", {**config, **_context()})
    trials = [a, b]
    for t in trials:
        t.set_status(Trial.RUNNING)
        progress.on_trial_start(iteration=1, trials=trials, trial=t)
    progress.on_trial_complete(iteration=2, trials=trials, trial=_ended(a, 10, 0.7014))
    progress.on_trial_complete(iteration=3, trials=trials, trial=_ended(b, 4, 0.441))

    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\nTraceback ...\nRuntimeError: out of memory\n")
    c = _FailedTrial("S2APTrainable", config={**config, **_context()}, trial_id="cccc", stub=True)
    c.path = str(error)
    c.set_status(Trial.RUNNING)
    c.run_metadata.num_failures = 1
    trials.append(c)
    progress.on_trial_recover(iteration=4, trials=trials, trial=c)
    c.update_last_result({"training_iteration": 3})
    progress.on_trial_start(iteration=5, trials=trials, trial=c)
    c.set_status(Trial.ERROR)  # out of retries: Tune marks it, then calls on_trial_error
    progress.on_trial_error(iteration=6, trials=trials, trial=c)

    # The progress line comes at most once per interval, however many steps Tune takes.
    for i in range(1000):
        progress.on_step_end(iteration=10 + i, trials=trials)
    progress._last_progress -= 31  # half a minute later
    progress.on_step_end(iteration=2000, trials=trials)
    progress.on_experiment_end(trials=trials)

    lines = out.getvalue().splitlines()
    assert lines[:7] == [
        "trial aaaa started: s2ap rho=0.1 ascent_steps=1",
        "trial bbbb started: s2ap rho=0.1 ascent_steps=1",
        "trial aaaa completed: val_robust_acc 0.7014 after 10 epochs (1m02s)",
        "trial bbbb stopped by ASHA at epoch 4 (val_robust_acc 0.441)",
        f"trial cccc failed (retry 1/2): RuntimeError: out of memory (full traceback: {error})",
        "trial cccc resumed at epoch 3",
        f"trial cccc failed: RuntimeError: out of memory (full traceback: {error})",
    ]
    assert len(lines) == 9, lines  # one periodic progress line, one at the end
    for line in lines[7:]:
        assert line.startswith("[3/4 done (1 failed), 0 running, 1 left] best 0.7014 (trial aaaa)")
        assert "elapsed" in line
    assert "\r" not in out.getvalue()  # not a terminal: plain lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_line_is_a_status_line() -> None:
    out = _Terminal()
    progress = StudyProgress(metric="val_robust_acc", mode="max", epochs_per_trial=4, out=out)
    progress.setup(total_num_samples=2)
    trial = _trial("aaaa", {"prune.rho": 0.1, **_context()}, Trial.RUNNING)
    progress.on_trial_start(iteration=1, trials=[trial], trial=trial)
    progress.on_trial_complete(iteration=2, trials=[trial], trial=_ended(trial, 4, 0.5))
    progress.on_experiment_end(trials=[trial])
    text = out.getvalue()
    # Each event clears the status line, prints its line, and redraws the status line.
    assert text.startswith("trial aaaa started: s2ap rho=0.1\n\r\x1b[K[0/2 done, 1 running")
    assert "\r\x1b[Ktrial aaaa completed: val_robust_acc 0.5 after 4 epochs" in text
    assert text.endswith("\r\x1b[K[1/2 done, 0 running, 1 left] best 0.5 (trial aaaa) elapsed 0s\n")


def test_the_callback_travels_in_the_tuner_pickle() -> None:
    """Ray pickles the run config (callbacks included) into the experiment folder, and
    ``Tuner.restore`` brings it back: the stream is not pickled, the clock starts again."""
    import pickle

    progress = StudyProgress(metric="m", mode="min", epochs_per_trial=3, out=io.StringIO())
    back = pickle.loads(pickle.dumps(progress))
    assert back.out is not progress.out and back.epochs_per_trial == 3 and back.mode == "min"


def test_quiet_libraries_restores_what_it_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import os

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.setenv("TUNE_PRINT_ALL_TRIAL_ERRORS", "1")  # the user's: kept
    with quiet_libraries(1):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
        assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "1"
        assert logging.getLogger("ray.tune").level == logging.WARNING
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    assert logging.getLogger("ray.tune").level == logging.NOTSET
    with quiet_libraries(2):
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ


def test_a_large_study_table_shows_its_best_rows(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    rows = [
        {
            "trial_id": f"t{i:03d}",
            "state": "TERMINATED",
            "epochs": 4 if i % 2 else 2,
            "completed": bool(i % 2),
            "retries": 0,
            "baseline": None,
            "config": {"prune.rho": 0.1, "prune.ascent_steps": 1},
            "metrics": {"val_robust_acc": i / 1000},
        }
        for i in range(1000)
    ]
    table = format_trials_table(study, rows, limit=25).splitlines()
    assert len(table) == 27  # header, 25 rows, the "more" line
    assert table[1].startswith("t999") and table[25].startswith("t951")
    assert table[-1].startswith("... 975 more trials") and "s2ap status" in table[-1]
    assert len(format_trials_table(study, rows[:10], limit=25).splitlines()) == 11


@pytest.mark.ray
def test_study_console_output(tmp_path: Path) -> None:
    """`s2ap tune` as a user runs it: a line per trial start and end, a progress line, no Ray
    box, no INFO line, no traceback (from the driver or the actors); the end summary."""
    # No pretraining: the trials prune a random network (the output is what is tested).
    path = write_study(tmp_path, {"study.num_samples": 3, "pretrain.epochs": 0})
    res = run_cli("tune", str(path), "--no-test-eval", "--ray-temp-dir", short_tmp(), timeout=300)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    lines = output.splitlines()
    started = [ln.split()[1] for ln in lines if re.match(r"trial \S+ started: ", ln)]
    ended = [
        ln.split()[1]
        for ln in lines
        if re.match(r"trial \S+ (completed: |stopped by ASHA at epoch \d+ \()", ln)
    ]
    assert len(started) == 3 and sorted(started) == sorted(ended), output
    assert any(PROGRESS.match(ln) for ln in lines), output
    for noise in ("Traceback", "Exception ignored", "SystemExit", " INFO ", "[I 20"):
        assert noise not in output, output
    assert not RAY_BOX.search(output), output
    assert "study tiny: 3 trials" in res.stdout
    assert len(lines) < 50, output


@pytest.mark.ray
def test_verbose_2_brings_back_rays_reporter(
    tmp_path: Path, ray_local: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tune.driver.launch import LaunchOptions, run_study

    one = {"study.num_samples": 1, "pretrain.epochs": 0, "prune.epochs": 2, "finetune.epochs": 1}
    study = load_study(write_study(tmp_path, one))
    assert run_study(study, LaunchOptions(verbose=2, test_eval=False)).exit_code == 0
    out = capsys.readouterr().out
    assert RAY_BOX.search(out) and "Trial status:" in out, out
    assert re.search(r"^trial \S+ started: ", out, re.MULTILINE), out


def test_trial_actor_exits_without_python_exit_path(ray_local: Any) -> None:
    """After ``stop()`` a trial actor dies of the raylet's SIGTERM at once (no SystemExit
    raised into its exit callbacks); a driver or a test process is left alone."""
    import ray

    from tune.trial.worker_exit import exit_quietly_on_sigterm

    @ray.remote(num_cpus=1)
    class Actor:
        def stopped(self) -> tuple[bool, bool]:
            changed = exit_quietly_on_sigterm()
            return changed, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    assert ray.get(Actor.remote().stopped.remote()) == (True, True)
    before = signal.getsignal(signal.SIGTERM)
    assert exit_quietly_on_sigterm() is False
    assert signal.getsignal(signal.SIGTERM) == before
