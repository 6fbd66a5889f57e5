"""The writer task of a run this worker owns: where frames leave for Redis.

It sleeps until the run changes, then sends every pending frame (up to
``MAX_BATCH``) and the run's fields in one ``WRITE`` script call: one round
trip per batch, in seq order. While a batch is in flight the producer keeps
pushing; those frames form the next batch.

If Redis cannot be reached it retries with exponential backoff (50 ms up to
1 s). If frames stay unwritten longer than ``write_timeout`` the run ends
``FAILED`` with an error saying so (never silently): its producer is
cancelled and the unwritten frames are dropped; the writer keeps trying to
write that end until the lease would have lapsed anyway (after which any
worker ends the run ``FAILED`` by reaping it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .._counters import Counters
from .._status import ChatRunStatus
from ._errors import TRANSIENT_ERRORS, describe
from ._owned import OwnedRun
from ._store import RedisStore, lost_reason

__all__ = ["MAX_BATCH", "write_run"]

logger = logging.getLogger("trio_chatruns.redis")

MAX_BATCH = 512
"""Frames sent in one script call at most (count)."""

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_END_BOUND = 2.0


async def write_run(
    state: OwnedRun,
    store: RedisStore,
    write_timeout: float,
    lease: float,
    counters: Counters,
    on_written_end: Callable[[OwnedRun, bool], Awaitable[None]],
) -> None:
    """Write ``state`` to Redis until its end is written (or given up on).

    ``on_written_end(state, written)`` is awaited once at the end (``written``
    is ``False`` when the end could not be written); then ``written_end`` is
    set, which wakes :meth:`RedisChatRun.wait`.
    """
    failing_since: float | None = None
    backoff = _BACKOFF_FIRST
    written = False
    try:
        while True:
            if not state.dirty:
                await state.wakeup.wait()
                state.wakeup = trio.Event()
            state.dirty = False
            batch = state.pending[:MAX_BATCH]
            complete = len(batch) == len(state.pending)
            ending = complete and state.terminated_at is not None
            status = state.status if ending else state.active_status
            try:
                ok, status_held = await store.write(
                    state.conversation_id,
                    state.run_id,
                    batch,
                    status.value,
                    state.current_tool,
                    state.last_error,
                )
            except TRANSIENT_ERRORS as exc:
                state.dirty = True
                now = trio.current_time()
                if failing_since is None:
                    failing_since = now
                    logger.warning(
                        "run %s (conversation %r): cannot write to Redis (%s); retrying",
                        state.run_id,
                        state.conversation_id,
                        describe(exc),
                    )
                elapsed = now - failing_since
                if state.terminated_at is None and elapsed >= write_timeout:
                    _give_up_frames(state, elapsed, exc)
                elif state.terminated_at is not None and elapsed >= write_timeout + lease:
                    logger.error(
                        "run %s (conversation %r): its end could not be written to Redis "
                        "for %.1f s; other workers will see it failed once its lease lapses",
                        state.run_id,
                        state.conversation_id,
                        elapsed,
                    )
                    return
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            failing_since = None
            backoff = _BACKOFF_FIRST
            del state.pending[: len(batch)]
            counters.frames_pushed += len(batch)
            if not ok and ending and status_held == ChatRunStatus.CANCELLED.value:
                # Ended here and, first, cancelled by another worker: the owner
                # interrupted a queued run that another worker's "interrupt"
                # start cancelled, its message not yet here. That worker
                # wrote the end and does its duties; nothing was lost. (A
                # lapsed lease ends a run failed: that still logs an error.)
                state.ended_elsewhere = True
                state.pending.clear()
                logger.debug(
                    "run %s (conversation %r): its end (%s) was already written by another worker",
                    state.run_id,
                    state.conversation_id,
                    status_held,
                )
                return
            if not ok:
                # Another worker ended it (our lease lapsed), it was replaced,
                # or Redis lost it.
                why = lost_reason(status_held)
                state.gone = not status_held
                state.pending.clear()
                state.mark_terminal(ChatRunStatus.FAILED, error=why, stop_producer=True)
                logger.error(
                    "run %s (conversation %r) ended failed: %s",
                    state.run_id,
                    state.conversation_id,
                    why,
                )
                return
            if state.pending:
                state.dirty = True
            elif ending:
                written = True
                return
    finally:
        # Shielded but bounded: indexing the end must not be lost to a
        # cancellation, nor hang a closing backend when Redis is down.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _END_BOUND):
            await on_written_end(state, written)
        state.written_end.set()


def _give_up_frames(state: OwnedRun, elapsed: float, exc: BaseException) -> None:
    lost = len(state.pending)
    state.pending.clear()
    state.mark_terminal(
        ChatRunStatus.FAILED,
        error=(
            f"{lost} frame(s) could not be written to Redis for {elapsed:.1f} s "
            f"({describe(exc)}); the run was ended"
        ),
        stop_producer=True,
    )
    # Its end is known here: wait() need not wait for Redis to come back
    # (the writer still tries to write the end, in the background).
    state.written_end.set()
    logger.error(
        "run %s (conversation %r) ended failed: %s",
        state.run_id,
        state.conversation_id,
        state.last_error,
    )
