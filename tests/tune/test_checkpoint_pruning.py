"""A finished trial keeps its newest complete checkpoints; nothing newer is touched."""

from __future__ import annotations

from pathlib import Path

from tune.driver.checkpoints import prune_checkpoints


def _checkpoint(trial: Path, n: int, *, complete: bool = True) -> Path:
    folder = trial / f"checkpoint_{n:06d}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"x")
    if complete:
        (folder / "trial.json").write_text("{}")
    return folder


def test_keeps_the_newest_complete_checkpoints(tmp_path: Path) -> None:
    folders = [_checkpoint(tmp_path, n) for n in range(5)]
    half_written = _checkpoint(tmp_path, 5, complete=False)
    removed = prune_checkpoints(tmp_path, keep=2)
    assert removed == folders[:3]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [folders[3].name, folders[4].name, half_written.name]


def test_an_incomplete_older_checkpoint_goes_and_a_lone_one_stays(tmp_path: Path) -> None:
    old = _checkpoint(tmp_path, 0, complete=False)
    only = _checkpoint(tmp_path, 1)
    assert prune_checkpoints(tmp_path, keep=1) == [old]
    assert prune_checkpoints(tmp_path, keep=1) == []
    assert [p.name for p in tmp_path.iterdir()] == [only.name]
