"""Supervision of a run's producer task: how the way it exits decides how the
run ends."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from ._status import ChatRunStatus
from ._util import UNSET, Unset

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Producer", "SupervisedRun", "logger", "run_producer", "split_cancelled"]

logger = logging.getLogger("trio_chatruns")

Producer = Callable[..., Awaitable[object]]
"""An async function called as ``producer(run, *args)`` with the run's
:class:`ChatRun` handle."""


class SupervisedRun(Protocol):
    """What :func:`run_producer` reads and calls on a run's state: the core's
    ``RunState``, and the Redis backend's ``OwnedRun``."""

    conversation_id: str
    run_id: str
    terminated_at: float | None
    cancel_scope: trio.CancelScope | None
    producer_started: bool
    producer_running: bool
    interrupt_requested: bool

    def mark_terminal(self, status: ChatRunStatus) -> bool: ...

    def end_cancelled(self, error: str | Unset | None = UNSET) -> None: ...

    def update(
        self,
        status: ChatRunStatus | str,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> None: ...


S = TypeVar("S", bound=SupervisedRun)


def split_cancelled(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """``(cancellation part, the rest)`` of an exception, either may be ``None``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    if isinstance(exc, trio.Cancelled):
        return exc, None
    return None, exc


def _describe(exc: BaseException) -> str:
    """``"Type: message"``; for a group, its leaves' descriptions joined by ``"; "``."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(child) for child in exc.exceptions)
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def run_producer(
    run: object,
    state: S,
    producer: Producer,
    args: tuple[Any, ...],
    on_exit: Callable[[S], None],
) -> None:
    """Run ``producer(run, *args)`` as the run's task; end the run by how it exits.

    ``run`` is the handle the producer gets (a ``ChatRun``, or the Redis
    backend's ``RedisChatRun``); ``state`` the run's state behind it.

    Unless the run is already terminal (the producer set a terminal status
    itself, and that status stands):

    - interrupted (:meth:`ChatRun.interrupt`, or the registry closing):
      ``CANCELLED``, after a last ``{"type": "interrupted"}`` frame; frames
      pushed while unwinding are kept. If the producer raised while
      unwinding, the error is logged and kept in ``last_error``;
    - returns: ``COMPLETED``;
    - raises: ``FAILED``, with ``last_error`` ``"Type: message"``.

    A ``BaseException`` that is neither an ``Exception`` nor a cancellation
    (``KeyboardInterrupt``, ``SystemExit``) ends the run ``FAILED`` even if it
    was interrupted, and is re-raised.

    Every exception other than a cancellation is logged to the
    ``trio_chatruns`` logger. An ``Exception`` is not re-raised, so the
    registry and the other runs go on. A ``Cancelled`` is always re-raised
    (never swallowed). ``on_exit(state)`` is called when the producer has
    returned or raised, before the run is ended.
    """
    if state.terminated_at is not None:
        return  # ended before it got to run (an interrupt): never call the producer
    scope = state.cancel_scope
    assert scope is not None
    state.producer_started = True
    state.producer_running = True
    try:
        with scope:
            await producer(run, *args)
    except BaseException as exc:
        state.producer_running = False
        on_exit(state)
        cancelled, error = split_cancelled(exc)
        _end_run(state, interrupted=cancelled is not None, error=error)
        if error is not None and not isinstance(error, Exception):
            raise  # KeyboardInterrupt, SystemExit, ...: propagate as raised
        if cancelled is exc:
            raise
        if cancelled is not None:
            # An error raised while being cancelled: it is logged and recorded;
            # the cancellation itself must still reach the scope that owns it.
            raise cancelled from None
    else:
        state.producer_running = False
        on_exit(state)
        _end_run(state, interrupted=False, error=None)


def _end_run(state: SupervisedRun, *, interrupted: bool, error: BaseException | None) -> None:
    if error is not None:
        logger.error(
            "producer of run %s (conversation %r) raised",
            state.run_id,
            state.conversation_id,
            exc_info=error,
        )
    if state.terminated_at is not None:
        return  # the producer had already ended the run itself
    if error is None and not (interrupted or state.interrupt_requested):
        state.mark_terminal(ChatRunStatus.COMPLETED)
        return
    description = UNSET if error is None else _describe(error)
    # KeyboardInterrupt & co. mean FAILED even while interrupted: the process
    # is going down, not the user's request.
    fatal = error is not None and not isinstance(error, Exception)
    if (interrupted or state.interrupt_requested) and not fatal:
        state.end_cancelled(error=description)
    else:
        state.update(ChatRunStatus.FAILED, error=description)
