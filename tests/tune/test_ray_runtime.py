"""The launch's Ray runtime: its CPUs for the driver's test evaluation, and an early release
whose shutdown runs beside that evaluation."""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

import pytest

from tests.tune.conftest import short_tmp
from tune.common.timings import StepTimes
from tune.driver.options import LaunchOptions
from tune.driver.ray_runtime import ray_runtime

pytestmark = pytest.mark.ray


def test_a_started_runtime_gives_its_cpus_and_shuts_down_beside_the_caller() -> None:
    import ray

    temp = short_tmp()
    times = StepTimes()
    try:
        with ray_runtime(LaunchOptions(num_cpus=2, ray_temp_dir=temp), times) as runtime:
            assert runtime.started and runtime.cpus == 2.0
            runtime.release()
            runtime.release()  # again: still one shutdown
            assert len([t for t in threading.enumerate() if t.name == "s2ap-ray-shutdown"]) <= 1
            # Ray stops while the caller is still in the block (its evaluation runs meanwhile).
            deadline = time.monotonic() + 60
            while ray.is_initialized() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not ray.is_initialized()
        assert not ray.is_initialized()
        assert not [t for t in threading.enumerate() if t.name == "s2ap-ray-shutdown"]
        assert set(times) == {"ray_start_s", "ray_shutdown_s"}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_runtime_it_joined_is_left_running(ray_local: Any) -> None:
    with ray_runtime(LaunchOptions()) as runtime:
        assert not runtime.started
        assert runtime.cpus == 2.0  # the fixture's num_cpus: the driver evaluates with them
        runtime.release()  # not this launch's to stop
    assert ray_local.is_initialized()
