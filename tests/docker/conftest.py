"""The cluster test's summary (tests/docker/test_stack.py), printed after the test results."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.docker_stack import REPORT


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not REPORT:
        return
    terminalreporter.section("s2ap cluster test summary")
    for line in REPORT:
        terminalreporter.write_line(line)
    target = os.environ.get("S2AP_CLUSTER_REPORT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text("\n".join(REPORT) + "\n", encoding="utf-8")
