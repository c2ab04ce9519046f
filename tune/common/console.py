"""How the service talks while it works: warnings to the user, bookkeeping that must not fail."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import IO

__all__ = ["best_effort", "warn"]

_log = logging.getLogger("tune")


def warn(message: str, stream: IO[str]) -> None:
    """One ``warning: ...`` line, flushed (the study's output interleaves with Ray's)."""
    print(f"warning: {message}", file=stream, flush=True)


@contextlib.contextmanager
def best_effort(what: str) -> Iterator[None]:
    """Run bookkeeping (plots, closing runs) that must never hide the study's own outcome:
    an error is logged and swallowed; an interrupt still goes through."""
    try:
        yield
    except Exception as exc:
        _log.warning("ignored while %s: %s: %s", what, type(exc).__name__, exc)
