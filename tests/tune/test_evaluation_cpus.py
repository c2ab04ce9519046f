"""After the search, a local runtime's driver evaluates the best trial with every CPU the
runtime has (the trials are done with them), not with one trial's share."""

from __future__ import annotations

from typing import Any

import pytest

from tune.trial.evaluation import _runtime_cpus

pytestmark = pytest.mark.ray


def test_the_runtimes_cpus_with_a_runtime(ray_local: Any) -> None:
    assert ray_local.cluster_resources()["CPU"] == 2.0  # the fixture's num_cpus
    assert _runtime_cpus(1.0) == 2.0


def test_the_trials_share_without_one() -> None:
    import ray

    assert not ray.is_initialized()
    assert _runtime_cpus(1.0) == 1.0
