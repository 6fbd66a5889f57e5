"""The run-end hook: calls ``on_run_end(record, events)`` once per ended run,
one at a time per conversation in the order the runs ended, each bounded by
``run_end_timeout``, with failures logged and counted."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio

from ._counters import Counters
from ._producer import split_cancelled
from ._records import ChatRunEvent, ChatRunRecord

__all__ = ["RunEndHook", "RunEndHooks"]

logger = logging.getLogger("trio_chatruns")

RunEndHook = Callable[[ChatRunRecord, Sequence[ChatRunEvent]], Awaitable[None]]
"""``async def hook(record: ChatRunRecord, events: Sequence[ChatRunEvent]) -> None``."""


class RunEndHooks:
    """The pending hook calls of a registry and the tasks that make them.

    :meth:`schedule` is synchronous with no checkpoint (it is called from
    ``mark_terminal``, inside the registry's critical section). Each
    conversation with calls pending has one task in ``nursery`` draining its
    queue; it exits when the queue is empty, so an idle registry holds no
    task per conversation.

    Every call runs in a cancel scope that is shielded from outside
    cancellation but has its own deadline of ``timeout`` seconds: closing the
    registry (or cancelling the code around it) neither drops nor cuts short
    a call, and no call outlives its timeout.
    """

    __slots__ = ("_counters", "_hook", "_nursery", "_pending", "_timeout")

    def __init__(
        self, hook: RunEndHook, timeout: float, nursery: trio.Nursery, counters: Counters
    ) -> None:
        self._hook = hook
        self._timeout = timeout
        self._nursery = nursery
        self._counters = counters
        self._pending: dict[str, deque[tuple[ChatRunRecord, Sequence[ChatRunEvent]]]] = {}

    @property
    def hook(self) -> RunEndHook:
        """The ``on_run_end`` hook these calls make (read by the server to
        check that its history is wired to the registry)."""
        return self._hook

    def schedule(self, record: ChatRunRecord, events: Sequence[ChatRunEvent]) -> None:
        """Queue the hook call for a run that just ended."""
        conversation_id = record.conversation_id
        queue = self._pending.get(conversation_id)
        if queue is not None:
            queue.append((record, events))
            return
        self._pending[conversation_id] = deque([(record, events)])
        self._nursery.start_soon(
            self._drain, conversation_id, name=f"trio_chatruns on_run_end {conversation_id!r}"
        )

    async def _drain(self, conversation_id: str) -> None:
        queue = self._pending[conversation_id]
        try:
            while queue:
                record, events = queue[0]
                await self._call(record, events)
                queue.popleft()
        finally:
            del self._pending[conversation_id]

    async def _call(self, record: ChatRunRecord, events: Sequence[ChatRunEvent]) -> None:
        deadline = trio.current_time() + self._timeout if math.isfinite(self._timeout) else math.inf
        failed = False
        with trio.CancelScope(deadline=deadline, shield=True) as scope:
            try:
                await self._hook(record, events)
            except BaseException as exc:
                cancelled, error = split_cancelled(exc)
                if error is not None:
                    if not isinstance(error, Exception):
                        raise  # KeyboardInterrupt & co. are not the hook's failure
                    failed = True
                    self._counters.run_end_failures += 1
                    logger.error(
                        "on_run_end hook for run %s (conversation %r) raised",
                        record.run_id,
                        record.conversation_id,
                        exc_info=error,
                    )
                if cancelled is exc:
                    raise  # our deadline: caught by the scope just above
                if cancelled is not None:
                    raise cancelled from None
        if scope.cancelled_caught and not failed:
            self._counters.run_end_failures += 1
            logger.error(
                "on_run_end hook for run %s (conversation %r) timed out after %s s",
                record.run_id,
                record.conversation_id,
                self._timeout,
            )
