"""The driver's own slow first steps, done while Ray starts.

``ray.init`` spends most of its seconds waiting for Ray's processes to come up, and it must run
in the main thread. Meanwhile :class:`StoreWarmup` imports MLflow in a thread and, for a new
sqlite store, creates it: MLflow runs its whole chain of schema migrations on a fresh database
(about 2 s on a 2-core machine; ``benchmarks/service_overhead.py`` measures it), then the
imports of the test evaluation at the end.

The store is created in a private temp folder and put into place only by
:meth:`StoreWarmup.install`, once the launch checks have passed, and never over an existing
file (a hard link fails rather than replace): a refused launch writes nothing, and a store that
another launch created meanwhile is kept. Any failure leaves the work to MLflow, as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["StoreWarmup"]

_log = logging.getLogger(__name__)
_DB = "mlflow.db"


class StoreWarmup:
    """Import MLflow and build a missing sqlite store in a thread (see the module docstring)."""

    def __init__(self, tracking_uri: str) -> None:
        from tracking.client import sqlite_path

        target = sqlite_path(tracking_uri)
        self._target = target if target is not None and not target.exists() else None
        self._folder = Path(tempfile.mkdtemp(prefix="s2ap-store-"))
        self._built = False
        self._store_done = threading.Event()  # the imports after it are never waited for
        threading.Thread(target=self._prepare, name="s2ap-warmup", daemon=True).start()

    def _prepare(self) -> None:
        try:
            import tracking.runs  # noqa: F401  (MLflow's imports: every study pays them once)
            from tracking.client import make_client

            if self._target is not None:
                # Any read makes MLflow create (migrate) the store.
                make_client(f"sqlite:///{self._folder / _DB}").search_experiments(max_results=1)
                self._built = True
        except Exception as exc:  # an optimisation only: MLflow does it later, as before
            _log.debug("MLflow warm-up failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._store_done.set()
        try:
            # The best trial's test evaluation runs in the driver of a local runtime: its
            # imports are paid here, while Ray starts: torchattacks (scipy.stats with it, ~1 s)
            # and torch._dynamo (~2 s; every torch optimizer imports it when first built).
            import torch._dynamo  # noqa: F401
            import torchattacks  # noqa: F401
        except Exception as exc:  # same: the evaluation imports it itself
            _log.debug("evaluation warm-up failed: %s: %s", type(exc).__name__, exc)
        try:
            # Saving the best model (tune.driver.best_model) makes MLflow map every installed
            # package to its modules, once per process: ~3-5 s on 2 cores, paid here instead.
            # A private function of MLflow's: if it moves, the save pays it again, nothing else.
            from mlflow.utils.requirements_utils import _init_packages_to_modules_map

            _init_packages_to_modules_map()
        except Exception as exc:
            _log.debug("model-registry warm-up failed: %s: %s", type(exc).__name__, exc)

    def install(self) -> None:
        """Put the new store in place if it is still missing; then clean up."""
        self._store_done.wait()
        try:
            target = self._target
            if self._built and target is not None and target.parent.is_dir():
                _link_new(self._folder / _DB, target)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop whatever was prepared (a launch that stopped before :meth:`install`)."""
        self._store_done.wait()
        shutil.rmtree(self._folder, ignore_errors=True)


def _link_new(built: Path, target: Path) -> None:
    """Copy ``built`` to ``target`` unless ``target`` exists by then (checked atomically)."""
    staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(built, staged)
        os.link(staged, target)
    except OSError as exc:  # FileExistsError: another launch was first; or no hard links
        _log.debug("MLflow store not installed: %s", exc)
    finally:
        staged.unlink(missing_ok=True)
