"""Supervision of the producer of a run this worker owns: the core's
:func:`trio_chatruns._producer.run_producer`, so how the way it exits decides
how the run ends follows the rules of the in-memory registry
(``docs/model.md``)."""

from __future__ import annotations

from typing import Any

from .._producer import Producer, run_producer
from ._owned import OwnedRun, RedisChatRun

__all__ = ["run_owned_producer"]


async def run_owned_producer(
    run: RedisChatRun, state: OwnedRun, producer: Producer, args: tuple[Any, ...]
) -> None:
    """Run ``producer(run, *args)``; end the run by how it exits, as
    :func:`trio_chatruns._producer.run_producer` does (it is that function):
    interrupted -> ``CANCELLED`` after an ``{"type": "interrupted"}`` frame;
    returns -> ``COMPLETED``; raises -> ``FAILED`` with ``last_error``. A
    ``KeyboardInterrupt``-like exception ends it ``FAILED`` and propagates; a
    cancellation always propagates."""
    await run_producer(run, state, producer, args, _nothing_on_exit)


def _nothing_on_exit(state: OwnedRun) -> None:
    """The owner keeps no per-producer bookkeeping to drop at exit."""
