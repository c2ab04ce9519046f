"""A trial actor's last moments, without a traceback on the study's console.

When Ray Tune is done with an actor it calls ``stop()`` (the Trainable's ``cleanup``), then,
as soon as that returns, drops the actor's handle and frees its placement group, both at once.
The dropped handle makes the worker exit (Python's exit path: ``threading``'s shutdown, the
``atexit`` callbacks, Ray's own ``shutdown`` among them); the freed placement group makes the
raylet send the worker a SIGTERM (and a SIGKILL 200 ms later). Ray's SIGTERM handler raises
``SystemExit`` wherever the main thread is: when that is inside an exit callback, Python prints
``Exception ignored in atexit callback: <function shutdown ...>``, a traceback and
``SystemExit: 1``, and Ray forwards it to the driver: a traceback on the output of a study
that went well, which came and went with the timing of the two messages.

After ``stop()`` the actor has nothing left to save (its MLflow run is closed, its checkpoints
are written), so :func:`exit_quietly_on_sigterm` gives SIGTERM back its default action: the
raylet's signal ends the process at once, silently, as its SIGKILL would 200 ms later.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["exit_quietly_on_sigterm"]


def exit_quietly_on_sigterm() -> bool:
    """In a Ray actor's main thread, let SIGTERM end the process without Python's exit path
    (see the module docstring). Does nothing elsewhere (a Trainable stopped in a test, a
    driver). Returns whether the handler was changed."""
    import ray

    if threading.current_thread() is not threading.main_thread() or not ray.is_initialized():
        return False
    try:
        in_actor = ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # not a Ray worker after all: leave the process as it is
        return False
    if not in_actor:
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return True
