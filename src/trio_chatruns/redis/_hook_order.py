"""Run-end hooks in end order across workers: :class:`OrderedRunEndHooks`.

Every end of a run in Redis gets the next *end number* of its conversation
(the scripts' ``number_end``), and the conversation's ``hooks`` hash keeps
how far the hook calls are done (``HOOKED``). The worker that wrote an end
calls its hook (the core's bounded call: ``run_end_timeout``, failures
counted), but only once the calls of every earlier end of the conversation
are over, wherever they ran: so for one conversation the calls run one at a
time, in the order the runs ended, across the cluster.

A worker waits for its turn by polling ``HOOKED`` (10 ms, doubling up to
200 ms). It stops waiting and calls the hook anyway when the turn makes no
progress for ``run_end_timeout`` + 5 s (the worker with the earlier call
died before making it) or when Redis cannot be read: a lost predecessor
never blocks a hook for good.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Sequence

import trio

from .._counters import Counters
from .._records import ChatRunEvent, ChatRunRecord
from .._run_end import RunEndHook, RunEndHooks
from ._errors import TRANSIENT_ERRORS, describe
from ._store import RedisStore

__all__ = ["OrderedRunEndHooks"]

logger = logging.getLogger("trio_chatruns.redis")

TURN_GRACE = 5.0
"""Seconds, beyond ``run_end_timeout``, a call waits for an earlier end's
call that makes no progress."""

_POLL_FIRST = 0.01
_POLL_MAX = 0.2
_MARK_BOUND = 2.0

_Pending = tuple[int, int, ChatRunRecord, Sequence[ChatRunEvent]]


class OrderedRunEndHooks(RunEndHooks):
    """The hook calls of one worker, per conversation in end-number order,
    each after the calls of the earlier ends on every worker.

    :meth:`schedule` is synchronous with no checkpoint. Each conversation
    with calls pending has one task in ``nursery`` that takes them lowest end
    number first (a call of a lower number scheduled while it waits goes
    first), waits for its turn in Redis, makes the call, and records it done.
    An end with no number (``0``: a run Redis lost) is called at once.
    """

    __slots__ = ("_heaps", "_order", "_store")

    def __init__(
        self,
        hook: RunEndHook,
        timeout: float,
        nursery: trio.Nursery,
        counters: Counters,
        store: RedisStore,
    ) -> None:
        super().__init__(hook, timeout, nursery, counters)
        self._store = store
        self._heaps: dict[str, list[_Pending]] = {}
        self._order = itertools.count()

    def schedule(
        self, record: ChatRunRecord, events: Sequence[ChatRunEvent], end_no: int = 0
    ) -> None:
        """Queue the hook call of a run that just ended, with its end number."""
        conversation_id = record.conversation_id
        item = (end_no, next(self._order), record, events)
        heap = self._heaps.get(conversation_id)
        if heap is not None:
            heapq.heappush(heap, item)
            return
        self._heaps[conversation_id] = [item]
        self._nursery.start_soon(
            self._drain_in_order,
            conversation_id,
            name=f"trio_chatruns.redis on_run_end {conversation_id!r}",
        )

    async def _drain_in_order(self, conversation_id: str) -> None:
        heap = self._heaps[conversation_id]
        try:
            while heap:
                end_no = heap[0][0]
                if end_no and not await self._turn(conversation_id, end_no, heap):
                    continue  # a lower end number arrived meanwhile: it goes first
                _, _, record, events = heapq.heappop(heap)
                await self._call(record, events)
                if end_no:
                    await self._mark_done(conversation_id, end_no)
        finally:
            del self._heaps[conversation_id]

    async def _turn(self, conversation_id: str, end_no: int, heap: list[_Pending]) -> bool:
        """Wait until the calls of the ends before ``end_no`` are over
        (``True``), or a lower end number is pending here (``False``)."""
        patience = self._timeout + TURN_GRACE if math.isfinite(self._timeout) else math.inf
        deadline = trio.current_time() + patience
        done = -1
        poll = _POLL_FIRST
        while True:
            try:
                with trio.CancelScope(shield=True):
                    now_done = await self._store.hooked(conversation_id)
            except TRANSIENT_ERRORS as exc:
                logger.warning(
                    "could not read the hook order of conversation %r (%s); calling the "
                    "hook of end %d without waiting",
                    conversation_id,
                    describe(exc),
                    end_no,
                )
                return True
            if now_done >= end_no - 1:
                return True
            if now_done != done:  # progress: the calls before go on
                done = now_done
                deadline = trio.current_time() + patience
            elif trio.current_time() >= deadline:
                logger.warning(
                    "the on_run_end call of end %d of conversation %r waited %.1f s for "
                    "the call of end %d (its worker stopped?); calling it now",
                    end_no,
                    conversation_id,
                    patience,
                    done + 1,
                )
                return True
            with trio.CancelScope(shield=True):
                await trio.sleep(poll)
            poll = min(poll * 2, _POLL_MAX)
            if heap[0][0] < end_no:
                return False

    async def _mark_done(self, conversation_id: str, end_no: int) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _MARK_BOUND):
            try:
                await self._store.hooked(conversation_id, end_no)
            except TRANSIENT_ERRORS as exc:
                logger.warning(
                    "could not record the on_run_end call of end %d of conversation %r "
                    "(%s); the next call waits for its turn to time out",
                    end_no,
                    conversation_id,
                    describe(exc),
                )
