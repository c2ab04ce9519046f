"""Process helpers for tests that start a study in a subprocess and kill it: find what it
started, and make sure nothing of it survives (by PID; never by name across the machine)."""

from __future__ import annotations

import time

from tests.support.ray_cluster import import_psutil, is_alive

__all__ = ["descendants", "kill_leftovers"]


def descendants(pid: int) -> list:
    """The processes started under ``pid`` (Ray's GCS, raylet, workers of that driver)."""
    psutil = import_psutil()
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_leftovers(procs: list, temp_dir: str, timeout: float = 30.0) -> None:
    """Wait for the given processes (and any naming ``temp_dir``) to exit; SIGKILL stragglers.

    Only processes this test started are touched: the recorded descendants of its driver and
    processes whose command line names its own Ray temp dir.
    """
    psutil = import_psutil()

    def alive() -> list:
        found = {p.pid: p for p in procs}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if temp_dir in " ".join(p.info["cmdline"] or []):
                    found[p.pid] = p
            except (psutil.Error, TypeError):
                continue
        return [p for p in found.values() if is_alive(p)]

    deadline = time.monotonic() + timeout
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
