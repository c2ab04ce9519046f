"""The Ray runtime a study runs on: a local one started here, or a cluster joined with
``--address``; and the checks that a trial can ever be placed on it.

Ray would leave a trial asking for more than any node has PENDING forever, so
:func:`check_cluster` fails fast with the request, what the cluster has and the fixes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tune.common.console import warn
from tune.common.timings import StepTimes
from tune.driver.options import LaunchOptions
from tune.study.file import Study, StudyError

__all__ = ["RayRuntime", "check_cluster", "check_cluster_resources", "is_local", "ray_runtime"]


def is_local(address: str | None) -> bool:
    """True for a local Ray runtime started by this process (no ``--address``)."""
    return address in (None, "", "local")


def _short_temp_dir(requested: str | None) -> str:
    """A Ray temp dir with a short path (Ray's unix sockets must stay under 107 bytes)."""
    if requested:
        path = Path(requested).absolute()
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    # One folder per user (Ray keeps one session_* folder per runtime inside, like /tmp/ray).
    base = Path("/tmp" if os.name == "posix" else tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = base / f"s2ap-ray-{uid}"
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


def _ray_log_level(verbose: int) -> int:
    """The driver's ``ray`` logger: its INFO lines ("Started a local Ray instance.", Tune's
    "Wrote the latest version of all result files ...") only with ``-v 2`` and up."""
    return logging.INFO if verbose >= 2 else logging.WARNING


def _init_ray(options: LaunchOptions) -> bool:
    """Start or join Ray; return True if this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if is_local(options.address):
        ray.init(
            address="local",
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            _temp_dir=_short_temp_dir(options.ray_temp_dir),
            include_dashboard=False,
            log_to_driver=options.verbose > 0,
            logging_level=_ray_log_level(options.verbose),
        )
        return True
    if options.num_cpus is not None or options.num_gpus is not None:
        raise StudyError(
            "--num-cpus/--num-gpus size a local Ray runtime; a cluster (--address) has its own"
        )
    try:
        ray.init(
            address=options.address,
            log_to_driver=options.verbose > 0,
            logging_level=_ray_log_level(options.verbose),
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StudyError(
            f"--address {options.address}: cannot connect to a Ray cluster ({exc}); check "
            "the address (HOST:PORT of the head's GCS, or auto on a cluster node) and that "
            "the cluster is up (`ray status`)"
        ) from None
    return True


class RayRuntime:
    """The Ray runtime of one launch, as :func:`ray_runtime` yields it.

    :meth:`release` lets a runtime this launch started go early: once the search is over a local
    runtime is not used again (the driver evaluates the best trial itself), so its shutdown runs
    in a thread beside that evaluation instead of after it, and its idle processes leave the
    CPUs to it (``benchmarks/service_overhead.py``: shutdown 1.4 s on the quickstart).
    """

    def __init__(self, started: bool, local: bool) -> None:
        import ray

        self.started = started
        #: A local runtime (no ``--address``): its driver does the work it waits on alone.
        self.local = local
        #: The runtime's CPUs (``--num-cpus``, else the machine's), read while it is up.
        self.cpus = float(ray.cluster_resources().get("CPU", 0.0)) if ray.is_initialized() else 0.0
        self._shutdown: threading.Thread | None = None

    @property
    def driver_cpus(self) -> float | None:
        """The torch threads of the driver's own work: a local runtime's CPUs (the trials'
        are idle then); ``None`` on a cluster (a Ray task with a trial's resources does it)."""
        return self.cpus if self.local else None

    def release(self) -> None:
        """Start shutting down a runtime this launch started (no-op otherwise, or again)."""
        import ray

        if self.started and self._shutdown is None:
            self._shutdown = threading.Thread(
                target=ray.shutdown, name="s2ap-ray-shutdown", daemon=True
            )
            self._shutdown.start()

    def close(self) -> None:
        """Shut down a runtime this launch started, or wait for :meth:`release`'s shutdown."""
        import ray

        if not self.started:
            return
        if self._shutdown is None:
            ray.shutdown()
        else:
            self._shutdown.join()


@contextlib.contextmanager
def ray_runtime(options: LaunchOptions, times: StepTimes | None = None) -> Iterator[RayRuntime]:
    """Ray started or joined for the block; shut down afterwards if this block started it
    (an already initialised Ray, e.g. a test's, is used as is and left running). ``times``
    gets the seconds of ``ray_start`` and ``ray_shutdown`` (what the shutdown still cost at the
    block's end, after an early :meth:`RayRuntime.release`)."""
    times = times if times is not None else StepTimes()
    with times.step("ray_start"):
        runtime = RayRuntime(_init_ray(options), is_local(options.address))
    try:
        yield runtime
    finally:
        if runtime.started:
            with times.step("ray_shutdown"):
                runtime.close()


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_cluster_resources(cpu: float, gpu: float, *, where: str = "the Ray cluster") -> None:
    """Fail fast if no alive node can ever hold one trial (``cpu`` CPUs and ``gpu`` GPUs).

    Ray would otherwise leave every trial PENDING forever. The message names the request,
    what the cluster has, and the fixes.
    """
    import ray

    nodes = _alive_nodes()

    def fits(res: dict[str, float]) -> bool:
        return res.get("CPU", 0.0) >= cpu - 1e-9 and res.get("GPU", 0.0) >= gpu - 1e-9

    if any(fits(n.get("Resources", {})) for n in nodes):
        return
    totals = ray.cluster_resources()
    per_node = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
        f"{n.get('Resources', {}).get('GPU', 0):g} GPU"
        for n in nodes
    )
    if gpu > 0 and totals.get("GPU", 0) == 0:
        what = f"{where} has no GPU"
        fix = (
            "set study.resources.gpu: 0 to train on CPUs, or run on a cluster with GPU nodes "
            "(--address HOST:PORT)"
        )
    else:
        what = f"no node of {where} has that much"
        fix = (
            "lower study.resources (cpu/gpu per trial), or add bigger nodes; on an autoscaling "
            "cluster pass --skip-resource-check"
        )
    raise StudyError(
        f"study.resources: each trial asks for {cpu:g} CPU and {gpu:g} GPU, but {what} "
        f"(total {totals.get('CPU', 0):g} CPU, {totals.get('GPU', 0):g} GPU; nodes: "
        f"{per_node or 'none alive'}); the trials would wait forever. Fix: {fix}"
    )


def check_cluster(study: Study, options: LaunchOptions, err: IO[str]) -> None:
    """Before anything is written: a trial fits some node, and a multi-node cluster writes
    to shared storage (a warning otherwise)."""
    from tune.cluster import check_storage_for_address

    resources = study.settings.resources
    if not options.skip_resource_check:
        check_cluster_resources(resources.cpu, resources.gpu)
    if is_local(options.address):
        return
    warning = check_storage_for_address(
        options.address,
        study.storage_root,
        shared=options.shared_storage,
        num_nodes=len(_alive_nodes()),
    )
    if warning:
        warn(warning, err)
