"""Supervision of a run's producer task: how the way it exits decides how the
run ends."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable

import trio

from ._run import ChatRun, RunState
from ._status import ChatRunStatus
from ._util import UNSET

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Producer", "logger", "run_producer"]

logger = logging.getLogger("trio_chatruns")

Producer = Callable[[ChatRun], Awaitable[object]]
"""An async function taking the run's :class:`ChatRun` handle."""


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


def _describe(exc: BaseException) -> str:
    """``"Type: message"``; for a group, its leaves' descriptions joined by ``"; "``."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(child) for child in exc.exceptions)
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def run_producer(run: ChatRun, state: RunState, producer: Producer) -> None:
    """Run ``producer(run)`` as the run's task and end the run by how it exits.

    - returns: ``COMPLETED`` (unless it already set a terminal status);
    - interrupted (its cancel scope, or the registry's, was cancelled):
      ``CANCELLED``, after a last ``{"type": "interrupted"}`` frame; frames
      pushed while unwinding are kept;
    - raises an ``Exception``: ``FAILED`` with ``last_error``; logged to the
      ``trio_chatruns`` logger and not re-raised, so the registry and the other
      runs go on;
    - raises another ``BaseException`` (``KeyboardInterrupt``): ``FAILED``, then
      re-raised. Cancellation is always re-raised too: never swallowed.
    """
    if state.terminated_at is not None:
        return  # interrupted before it got to run: the producer never runs
    scope = state.cancel_scope
    assert scope is not None
    state.producer_started = True
    try:
        with scope:
            await producer(run)
    except Exception as exc:
        _producer_exited(state, exc)
    except BaseException as exc:
        _producer_exited(state, exc)
        raise
    else:
        _producer_exited(state, None)


def _producer_exited(state: RunState, exc: BaseException | None) -> None:
    cancelled = exc is not None and _is_cancellation(exc)
    if exc is not None and not cancelled:
        logger.error(
            "producer of run %s (conversation %r) raised",
            state.run_id,
            state.conversation_id,
            exc_info=exc,
        )
    if state.terminated_at is not None:
        return  # it had already ended the run itself
    error = None if exc is None or cancelled else _describe(exc)
    if state.interrupt_requested or cancelled:
        state.end_cancelled(error=UNSET if error is None else error)
    elif error is None:
        state.mark_terminal(ChatRunStatus.COMPLETED)
    else:
        state.update(ChatRunStatus.FAILED, error=error)
