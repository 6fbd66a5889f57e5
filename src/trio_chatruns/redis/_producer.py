"""Supervision of the producer of a run this worker owns: how the way it
exits decides how the run ends (the rules of the in-memory registry, see
``docs/model.md``)."""

from __future__ import annotations

from typing import Any

from .._producer import Producer, _describe, logger, split_cancelled
from .._status import ChatRunStatus
from .._util import UNSET
from ._owned import OwnedRun, RedisChatRun

__all__ = ["run_owned_producer"]


async def run_owned_producer(
    run: RedisChatRun, state: OwnedRun, producer: Producer, args: tuple[Any, ...]
) -> None:
    """Run ``producer(run, *args)``; end the run by how it exits, as
    :func:`trio_chatruns._producer.run_producer` does: interrupted ->
    ``CANCELLED`` after an ``{"type": "interrupted"}`` frame; returns ->
    ``COMPLETED``; raises -> ``FAILED`` with ``last_error``. A
    ``KeyboardInterrupt``-like exception ends it ``FAILED`` and propagates; a
    cancellation always propagates."""
    if state.terminated_at is not None:
        return  # ended before it got to run: never call the producer
    scope = state.cancel_scope
    assert scope is not None
    state.producer_started = True
    state.producer_running = True
    try:
        with scope:
            await producer(run, *args)
    except BaseException as exc:
        state.producer_running = False
        cancelled, error = split_cancelled(exc)
        _end_run(state, interrupted=cancelled is not None, error=error)
        if error is not None and not isinstance(error, Exception):
            raise
        if cancelled is exc:
            raise
        if cancelled is not None:
            raise cancelled from None
    else:
        state.producer_running = False
        _end_run(state, interrupted=False, error=None)


def _end_run(state: OwnedRun, *, interrupted: bool, error: BaseException | None) -> None:
    if error is not None:
        logger.error(
            "producer of run %s (conversation %r) raised",
            state.run_id,
            state.conversation_id,
            exc_info=error,
        )
    if state.terminated_at is not None:
        return
    if error is None and not (interrupted or state.interrupt_requested):
        state.mark_terminal(ChatRunStatus.COMPLETED)
        return
    description = UNSET if error is None else _describe(error)
    fatal = error is not None and not isinstance(error, Exception)
    if (interrupted or state.interrupt_requested) and not fatal:
        state.end_cancelled(error=description)
    else:
        state.update(ChatRunStatus.FAILED, error=description)
