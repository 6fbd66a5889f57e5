"""The garbage collector's settings while a server runs (``ServerSettings.tune_gc``).

A streaming server allocates container objects at a high rate (the coroutine
frames of every send, Trio's cancel scopes, hypercorn's and h11's event
objects) and holds many of them across a checkpoint while thousands of
streams are in flight. With CPython's defaults (a young collection every 700
net allocations) the collector runs every few deliveries, promotes what is
in flight at that moment, and the promotions trigger full collections that
walk every object the process holds: the modules, the app, every
connection. Measured (docs/performance.md, the server section), the
collector was about half of the server's CPU while a run with 4000 streams
ended.

:func:`tuned_gc` applies two standard remedies for a long-running server,
and undoes them on exit:

- ``gc.freeze()`` once startup is done (modules imported, app built): every
  object alive then moves to the permanent generation, which no collection
  walks again (Python docs, ``gc.freeze``). Those objects live as long as the
  process anyway.
- a young-generation threshold of :data:`YOUNG_THRESHOLD` instead of 700, so
  young collections run about ``YOUNG_THRESHOLD / 700`` times less often and
  fewer in-flight objects are promoted.

Memory: objects freed by reference counting (nearly all of a server's
garbage) are freed at once either way; only garbage in reference cycles
waits longer, for at most :data:`YOUNG_THRESHOLD` net allocations of
container objects between young collections (a few MiB at most). Frozen
objects that later become cyclic garbage are never collected; nothing alive
at startup is expected to be dropped.

The settings are process-wide, so :func:`~.runner.serve` applies them only
when asked (``ServerSettings(tune_gc=True)``); ``trio-chatruns serve`` asks
unless given ``--gc-defaults``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "tuned_gc"]

YOUNG_THRESHOLD = 20_000
"""Net allocations of container objects between young collections (CPython's default: 700)."""


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Freeze what is alive now and raise the young threshold; undo both on exit.

    Synchronous. On exit the previous thresholds come back and every frozen
    object returns to the oldest generation (``gc.unfreeze``), so an
    application that goes on after the server does not keep the server's
    objects out of collection. (A freeze made before is undone too: there
    is one permanent generation, and even a fresh interpreter holds objects
    in it after a ``gc.collect()``.)
    """
    previous = gc.get_threshold()
    gc.collect()  # what startup left as cyclic garbage is not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
