"""The Redis backend's per-worker object, :class:`RedisChatRuns` (opened by
``open_redis_chat_runs`` in ``_open.py``): the operations of
:class:`~trio_chatruns.ChatRunRegistry` over runs that any worker sharing
the Redis can start, read, follow and interrupt.

Where things happen: a run starts here (``START``); a frame enters at
:meth:`RedisChatRun.push_frame` (``_owned.py``), leaves for Redis in the
run's writer task (``_writer.py``), is read back by one follower per run per
worker and fanned out to that worker's subscribers (``_follower.py``). Every
change in Redis is one Lua script (``_scripts.py``); the key layout is in
``_keys.py``; lease renewal and interrupt delivery are in
``_owner_duties.py``.
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, final

import trio

from .._config import RegistryConfig
from .._counters import Counters
from .._exceptions import ReplayGap, RunAlreadyActive, RunNotFound, RunQueueFull
from .._producer import Producer
from .._records import ChatRunEvent, ChatRunRecord, RegistryStats
from .._run_end import RunEndHook
from .._status import ChatRunStatus, StartPolicy
from .._util import (
    UNSET,
    NoPublicConstructor,
    Unset,
    check_active_only,
    check_conversation_id,
    check_cursor,
    check_run_id,
    check_start_arguments,
)
from ._codec import decode_entries, decode_record, entry_seq
from ._errors import (
    TRANSIENT_ERRORS,
    RedisUnavailable,
    describe,
    unavailable_on_connection_errors,
)
from ._follower import Follower, RedisSubscription
from ._hook_order import OrderedRunEndHooks
from ._owned import OwnedRun, RedisChatRun
from ._producer import run_owned_producer
from ._store import RedisStore, ended_runs, flat_field, lost_reason
from ._writer import write_run

__all__ = ["RedisChatRuns"]

logger = logging.getLogger("trio_chatruns.redis")


@final
class RedisChatRuns(metaclass=NoPublicConstructor):
    """The runs of every worker sharing one Redis; one instance per worker.

    Created by :func:`open_redis_chat_runs`, never directly. The methods are
    those of :class:`~trio_chatruns.ChatRunRegistry`, with the same names,
    arguments and errors; those that need Redis are ``async``:

    - ``await try_start(cid, producer, *args)``: atomic across the cluster
      (one Lua script); the producer runs on this worker, which owns the run.
    - ``push_frame`` / ``update`` (synchronous, no network wait): keyed forms
      of the :class:`RedisChatRun` methods, for runs this worker owns
      (``RunNotFound`` for a run owned by another worker).
    - ``await interrupt(cid)``: reaches the owner wherever it runs.
    - ``subscribe(cid, after=, run_id=)``: an async context manager, from any
      worker, for any run.
    - ``await get``, ``await list``, ``await events``, ``await stats``,
      ``await prune``.

    Times in records are Unix seconds (the Redis server's clock where Redis
    stamps them), the one clock all workers share; ``MockClock`` does not
    drive this backend. Any method that needs Redis raises
    :class:`RedisUnavailable` when it cannot reach it, changing nothing.
    """

    def __init__(
        self,
        store: RedisStore,
        config: RegistryConfig,
        worker_id: str,
        lease: float,
        write_timeout: float,
        runs_nursery: trio.Nursery,
        services: trio.Nursery,
        hooks: OrderedRunEndHooks | None,
        counters: Counters,
    ) -> None:
        self._store = store
        self._config = config
        self._worker_id = worker_id
        self._lease = lease
        self._write_timeout = write_timeout
        self._runs_nursery = runs_nursery
        self._services = services
        self._hooks = hooks
        # Every run owned here that has not finished its end's duties, by
        # run id (current and queued ones); and, by conversation, the one
        # owned here that started last (what the keyed methods act on).
        self._owned: dict[str, OwnedRun] = {}
        self._current: dict[str, OwnedRun] = {}
        self._followers: dict[str, Follower] = {}
        self._counters = counters
        self._closed = False

    def _run_end_hook(self) -> RunEndHook | None:
        """Internal (for ``trio_chatruns.server``, not in the public API): the
        ``on_run_end`` hook this backend was opened with; ``None`` if none."""
        return None if self._hooks is None else self._hooks.hook

    def __repr__(self) -> str:
        return (
            f"<RedisChatRuns worker={self._worker_id!r} owned={len(self._owned)} "
            f"followers={len(self._followers)} closed={self._closed}>"
        )

    @property
    def config(self) -> RegistryConfig:
        """The limits (:class:`~trio_chatruns.RegistryConfig`); every worker
        sharing a Redis should use the same."""
        return self._config

    @property
    def worker_id(self) -> str:
        """This worker's id (``str``), recorded as the owner of the runs it starts."""
        return self._worker_id

    @property
    def closed(self) -> bool:
        """``True`` once the ``async with`` block was left."""
        return self._closed

    # -- starting and writing ----------------------------------------------------

    async def try_start(
        self,
        conversation_id: str,
        producer: Producer,
        *args: Any,
        if_active: StartPolicy | str = StartPolicy.REJECT,
    ) -> RedisChatRun:
        """Start a run owned by this worker: ``producer(run, *args)`` runs here,
        now or, if the conversation is busy (on any worker), as ``if_active``
        says; the rules of :meth:`trio_chatruns.ChatRunRegistry.try_start`.

        Atomic across every worker (the ``START`` script): a conversation has
        at most one running run in the cluster, and two starts on one
        conversation, from any workers, each get exactly one outcome. A run
        whose owner's lease lapsed (active or queued) is ended ``failed``
        first, so a dead worker never blocks its conversations. A terminal
        run of the conversation is replaced.

        A queued run belongs to this worker too: its producer runs here when
        Redis starts it (in the script that ends the run before it, on
        whichever worker), told over pub/sub (or, if that message is lost, at
        the next lease renewal). While it waits this worker renews its lease;
        if this worker dies, the run ends ``failed`` ("... stopped renewing
        its lease ... while its run was queued") at the latest when the run
        before it ends.

        Args:
            if_active (StartPolicy | str): ``"reject"`` (the default),
                ``"interrupt"`` (cancel the queued runs, interrupt the active
                run wherever it runs, start after it) or ``"enqueue"`` (FIFO,
                at most ``max_queued_per_conversation`` waiting).

        Returns:
            RedisChatRun: the handle the producer also gets; status
            ``running`` or ``queued``.

        Raises:
            TypeError / ValueError: a bad ``conversation_id`` or ``if_active``;
                ``TypeError`` if ``producer`` is not an async function.
            RunAlreadyActive: the conversation has an active run (``reject``).
            RunQueueFull: the conversation's queue is full (``enqueue``).
            RuntimeError: this backend is closed.
            RedisUnavailable: Redis cannot be reached; nothing changed.
        """
        check_start_arguments(conversation_id, producer)
        policy = StartPolicy.coerce(if_active)
        if self._closed:
            raise RuntimeError(f"backend is closed; cannot start a run for {conversation_id!r}")
        run_id = os.urandom(16).hex()
        # Known here before the script runs: its "started" message may come
        # before the script's answer.
        state = OwnedRun(
            conversation_id, run_id, time.time(), _no_change, self._config, ChatRunStatus.QUEUED
        )
        run = RedisChatRun._create(state)
        state.pending_start = (run, producer, args)
        self._owned[run_id] = state
        limit = self._config.max_queued_per_conversation
        try:
            with unavailable_on_connection_errors("try_start"):
                reply = await self._store.start(
                    conversation_id, run_id, self._worker_id, policy.value, limit
                )
        except BaseException:
            self._owned.pop(run_id, None)
            raise
        self._end_duties(conversation_id, reply.ended)
        if reply.outcome in ("active", "full"):
            self._owned.pop(run_id, None)
            if reply.outcome == "active":
                raise RunAlreadyActive(conversation_id, reply.other_run_id)
            raise RunQueueFull(conversation_id, limit)
        state.start_answered = True
        state.started_at = state.updated_at = reply.started_ms / 1000.0
        self._runs_nursery.start_soon(
            write_run,
            state,
            self._store,
            self._write_timeout,
            self._lease,
            self._counters,
            self._on_written_end,
            name=f"trio_chatruns.redis writer {conversation_id!r}",
        )
        if reply.outcome == "started":
            if reply.other_run_id:
                self._services.start_soon(self._unindex, conversation_id, reply.other_run_id)
            self._start_owned(state)
        elif policy is StartPolicy.INTERRUPT and reply.other_owner:
            await self._interrupt_owned_by(reply.other_owner, conversation_id, reply.other_run_id)
        if self._closed:  # closed while the script ran: never start the producer
            state.interrupt()
        return run

    def _start_owned(self, state: OwnedRun) -> None:
        """Start the producer of a run Redis made current (once)."""
        pending = state.pending_start
        if pending is None or state.terminated_at is not None:
            return
        state.pending_start = None
        state.start()
        self._current[state.conversation_id] = state
        if self._closed:
            state.interrupt()  # never runs its producer
            return
        run, producer, args = pending
        self._runs_nursery.start_soon(
            run_owned_producer,
            run,
            state,
            producer,
            args,
            name=f"trio_chatruns.redis producer {state.conversation_id!r}",
        )

    async def _interrupt_owned_by(self, owner: str, conversation_id: str, run_id: str) -> None:
        """Reach the producer of a run flagged interrupted in Redis: here, or
        over pub/sub (if that fails, its owner finds the flag at renewal)."""
        if owner == self._worker_id:
            state = self._owned.get(run_id)
            if state is not None:
                state.interrupt()
            return
        try:
            await self._store.notify_interrupt(owner, conversation_id, run_id)
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "could not tell worker %s to interrupt run %s (%s); it sees the flag "
                "at its next lease renewal",
                owner,
                run_id,
                describe(exc),
            )

    def _on_message(self, kind: str, conversation_id: str, run_id: str) -> None:
        """A message from another worker about a run owned here."""
        state = self._owned.get(run_id)
        if state is None or state.conversation_id != conversation_id:
            return
        if kind == "i":
            state.interrupt()
        elif kind == "s":
            self._start_owned(state)
        elif kind == "c":
            state.end_elsewhere(ChatRunStatus.CANCELLED)
        elif kind == "f":
            state.end_elsewhere(ChatRunStatus.FAILED)

    def _on_renewed(self, state: OwnedRun, lost: str | None, interrupted: bool, where: str) -> None:
        """What a lease renewal said about a run owned here."""
        if lost is not None:
            if lost in _TERMINAL_VALUES:
                # Ended by another worker (reaped, or cancelled while queued).
                status = ChatRunStatus(lost)
                why = lost_reason(lost) if status is ChatRunStatus.FAILED else UNSET
                state.end_elsewhere(status, why)
            else:
                state.pending.clear()
                state.mark_terminal(
                    ChatRunStatus.FAILED, error=lost_reason(lost), stop_producer=True
                )
            return
        if where == "current" and state.status is ChatRunStatus.QUEUED:
            self._start_owned(state)  # its "started" message was lost
        if interrupted:
            state.interrupt()

    async def _unindex(self, conversation_id: str, run_id: str) -> None:
        try:
            await self._store.unindex(conversation_id, run_id)
        except TRANSIENT_ERRORS as exc:  # its entry expires or is popped later
            logger.warning(
                "could not drop replaced run %s from the index: %s", run_id, describe(exc)
            )

    async def _on_written_end(self, state: OwnedRun, written: bool) -> None:
        """The end's duties on the owner: call the hook, index the run.

        Whoever writes a run's end in Redis does them: the owner here, or
        the worker whose script ended it (:meth:`_end_duties`: a lapsed
        lease, a queued run cancelled by an ``interrupt`` start). A run Redis
        lost (``state.gone``) has no end there; its owner calls the hook.
        """
        if self._owned.get(state.run_id) is state:
            del self._owned[state.run_id]
        if self._current.get(state.conversation_id) is state:
            del self._current[state.conversation_id]
        info = self._store.take_end(state.run_id)
        if state.ended_elsewhere:
            return
        if written:
            if self._hooks is not None:
                # Called exactly once for every run that ends (API.md), with
                # the frames the WRITE of the end answered with: no read that
                # could fail, or find the stream already replaced.
                events: builtins.list[ChatRunEvent] = []
                if info is not None and info.entries is not None:
                    events, _ = decode_entries(state.conversation_id, state.run_id, info.entries)
                self._hooks.schedule(state.snapshot(), events, 0 if info is None else info.end_no)
            if info is not None:
                # Runs the end's promotion ended (a queued run whose owner died).
                self._end_duties(state.conversation_id, info.ended)
            if info is None or not info.replaced:
                await self._index_end(
                    state.conversation_id, state.run_id, 0 if info is None else info.bytes
                )
        elif state.gone and self._hooks is not None:
            self._hooks.schedule(state.snapshot(), [])

    async def _stored_events(
        self, conversation_id: str, run_id: str
    ) -> builtins.list[ChatRunEvent]:
        entries = await self._store.frames(
            conversation_id, run_id, 0, None, self._config.max_events_per_run + 1
        )
        events, _ = decode_entries(conversation_id, run_id, entries)
        return events

    async def _index_end(self, conversation_id: str, run_id: str, size: int = 0) -> None:
        try:
            expired, evicted, by_bytes = await self._store.index(conversation_id, run_id, size)
        except TRANSIENT_ERRORS as exc:  # it still expires by its TTL
            logger.warning("could not index ended run %s: %s", run_id, describe(exc))
            return
        self._count_evictions(expired, evicted, by_bytes)

    def _count_evictions(self, expired: int, evicted: int, by_bytes: int) -> None:
        self._counters.evicted_ttl += expired
        self._counters.evicted_lru += evicted
        self._counters.evicted_bytes += by_bytes

    def _end_duties(self, conversation_id: str, ended: str) -> None:
        """The end's duties for the runs a script of ours ended for others
        (``ended``, its JSON, with each run's record and frames): end them
        here if owned here, schedule the hook (bounded by ``run_end_timeout``
        and counted in ``run_end_failures`` like every hook call), index the
        ones that stay current. Synchronous and needing no read: hooks are
        scheduled in end order, exactly once."""
        for flat, index, entries in ended_runs(ended):
            record = decode_record(conversation_id, flat)
            logger.log(
                logging.WARNING if record.status is ChatRunStatus.FAILED else logging.INFO,
                "run %s (conversation %r) ended %s by this worker: %s",
                record.run_id,
                conversation_id,
                record.status.value,
                record.last_error or "interrupted by a start",
            )
            state = self._owned.get(record.run_id)
            if state is not None:
                state.latest_seq = max(state.latest_seq, record.latest_seq)
                state.end_elsewhere(record.status, record.last_error)
            if self._hooks is not None:
                events, _ = decode_entries(conversation_id, record.run_id, entries)
                self._hooks.schedule(record, events, int(flat_field(flat, "end_no") or 0))
            if index:
                size = int(flat_field(flat, "bytes") or 0)
                self._services.start_soon(self._index_end, conversation_id, record.run_id, size)

    async def _on_reaped(self, conversation_id: str, ended: str, flat: Any) -> None:
        """A follower's ``READ`` ended runs (see :meth:`_end_duties`)."""
        self._end_duties(conversation_id, ended)

    def _owned_run(self, conversation_id: str) -> OwnedRun:
        state = self._current.get(check_conversation_id(conversation_id))
        if state is None:
            raise RunNotFound(conversation_id)
        return state

    def push_frame(
        self,
        conversation_id: str,
        frame: Any,
        *,
        status: ChatRunStatus | str | None = None,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> int:
        """:meth:`RedisChatRun.push_frame` on the conversation's run owned here.

        Raises:
            RunNotFound: this worker owns no run of ``conversation_id``.
            RunTerminated, TypeError, ValueError: as :meth:`RedisChatRun.push_frame`.
        """
        return self._owned_run(conversation_id).push_frame(frame, status, current_tool, error)

    def update(
        self,
        conversation_id: str,
        status: ChatRunStatus | str,
        *,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> None:
        """:meth:`RedisChatRun.update` on the conversation's run owned here.

        Raises:
            RunNotFound: this worker owns no run of ``conversation_id``.
            RunTerminated, TypeError, ValueError: as :meth:`RedisChatRun.update`.
        """
        self._owned_run(conversation_id).update(status, current_tool, error)

    async def interrupt(self, conversation_id: str) -> bool:
        """Interrupt the conversation's active run, wherever its owner runs.

        The run is flagged in Redis and its owner told over pub/sub; the owner
        cancels the producer, and the run ends ``cancelled`` with the
        ``{"type": "interrupted"}`` frame. If the message is lost (the owner
        was reconnecting), the owner finds the flag at its next lease renewal.

        Returns:
            bool: ``False`` when the conversation has no active run.

        Raises:
            RedisUnavailable: Redis cannot be reached (unless the run is owned
                here, which needs no round trip).
        """
        check_conversation_id(conversation_id)
        state = self._current.get(conversation_id)
        if state is not None and state.terminated_at is None:
            return state.interrupt()
        with unavailable_on_connection_errors("interrupt"):
            found = await self._store.interrupt(conversation_id, None)
            if found is None:
                return False
            run_id, owner = found
            if owner == self._worker_id:
                state = self._owned.get(run_id)
                return state is not None and state.interrupt()
            await self._store.notify_interrupt(owner, conversation_id, run_id)
        return True

    async def prune(self) -> int:
        """Drop expired entries from the retention index and evict the ended
        runs over ``max_retained_terminal`` (then over ``max_retained_bytes``);
        return how many (count).

        Redis expires ended runs by itself; this only keeps the cap exact
        when no run has ended for a while.
        """
        with unavailable_on_connection_errors("prune"):
            expired, evicted, by_bytes = await self._store.index(None, None)
        self._count_evictions(expired, evicted, by_bytes)
        return expired + evicted + by_bytes

    # -- reads ---------------------------------------------------------------------

    async def _read(
        self, conversation_id: str, operation: str, run_id: str | None = None
    ) -> tuple[ChatRunRecord | None, str]:
        with unavailable_on_connection_errors(operation):
            flat, first_id, ended = await self._store.read(conversation_id, run_id)
        self._end_duties(conversation_id, ended)
        if not flat:
            return None, ""
        return decode_record(conversation_id, flat), first_id

    async def get(self, conversation_id: str) -> ChatRunRecord | None:
        """A snapshot of the conversation's current run as Redis holds it, or
        ``None``. Reaps a run whose owner's lease lapsed (it reads ``failed``)."""
        check_conversation_id(conversation_id)
        record, _ = await self._read(conversation_id, "get")
        return record

    async def list(self, *, active_only: bool = False) -> builtins.list[ChatRunRecord]:
        """Every run held in Redis under this prefix (only active ones if
        ``active_only``), queued runs included, newest ``updated_at`` first.
        Uses ``SCAN``: O(keys in the database); meant for admin pages, not
        for every request."""
        check_active_only(active_only)
        prefix = self._store.keys.prefix + ":{"
        records: builtins.list[ChatRunRecord] = []
        with unavailable_on_connection_errors("list"):
            for key in await self._store.run_keys():
                if not (key.startswith(prefix) and key.endswith("}:run")):
                    continue
                conversation_id = key[len(prefix) : -len("}:run")]
                current, queued, ended = await self._store.queued(conversation_id)
                self._end_duties(conversation_id, ended)
                for flat in [current, *queued] if current else queued:
                    record = decode_record(conversation_id, flat)
                    if not active_only or record.status.is_active:
                        records.append(record)
        records.sort(key=lambda record: record.updated_at, reverse=True)
        return records

    async def events(self, conversation_id: str, *, after: int = 0) -> builtins.list[ChatRunEvent]:
        """The events of the conversation's current run with ``seq > after``
        still in its stream, oldest first; ``[]`` for an unknown conversation."""
        check_cursor(after)
        check_conversation_id(conversation_id)
        record, _ = await self._read(conversation_id, "events")
        if record is None or after >= record.latest_seq:
            return []
        with unavailable_on_connection_errors("events"):
            entries = await self._store.frames(
                conversation_id,
                record.run_id,
                after + 1,
                record.latest_seq,
                self._config.max_events_per_run,
            )
        events, _ = decode_entries(conversation_id, record.run_id, entries)
        return events

    async def stats(self) -> RegistryStats:
        """Counters of this worker, and the cluster's retained runs.

        ``active``: runs owned here that started and did not end; ``queued``:
        runs owned here still waiting; ``subscribers``,
        ``lagged_subscribers``: this worker's; ``frames_pushed``: frames this
        worker wrote to Redis; ``evicted_ttl``/``evicted_lru``/
        ``evicted_bytes``: index entries this worker found expired / evicted
        over the cap / over ``max_retained_bytes``; ``run_end_failures``: hook
        calls on this worker that raised or timed out. ``retained_terminal``
        is the cluster's; ``buffered_bytes`` (``None`` without a byte budget)
        is the bytes of the cluster's retained terminal runs plus those of the
        runs owned here.
        """
        with unavailable_on_connection_errors("stats"):
            retained, retained_bytes = await self._store.retained()
        counters = self._counters
        live = [state for state in self._owned.values() if state.terminated_at is None]
        queued = sum(1 for state in live if state.status is ChatRunStatus.QUEUED)
        buffered = None
        if self._config.measures_bytes:
            buffered = retained_bytes + sum(state.bytes for state in live)
        return RegistryStats(
            active=len(live) - queued,
            retained_terminal=retained,
            subscribers=counters.subscribers,
            evicted_ttl=counters.evicted_ttl,
            evicted_lru=counters.evicted_lru,
            lagged_subscribers=counters.lagged_subscribers,
            frames_pushed=counters.frames_pushed,
            queued=queued,
            evicted_bytes=counters.evicted_bytes,
            run_end_failures=counters.run_end_failures,
            buffered_bytes=buffered,
        )

    async def queued(self, conversation_id: str) -> builtins.list[ChatRunRecord]:
        """Records of the conversation's ``queued`` runs (on every worker), in
        the order they will start; ``[]`` if none. Reaps runs whose owner's
        lease lapsed first.

        Raises:
            TypeError / ValueError: a bad ``conversation_id``.
            RedisUnavailable: Redis cannot be reached.
        """
        check_conversation_id(conversation_id)
        with unavailable_on_connection_errors("queued"):
            _, queued, ended = await self._store.queued(conversation_id)
        self._end_duties(conversation_id, ended)
        return [decode_record(conversation_id, flat) for flat in queued]

    # -- following -----------------------------------------------------------------

    def subscribe(
        self, conversation_id: str, *, after: int = 0, run_id: str | None = None
    ) -> AbstractAsyncContextManager[RedisSubscription]:
        """Follow the conversation's current run (or, with ``run_id``, one of
        its queued runs) from cursor ``after``, from any worker: the rules of
        :meth:`trio_chatruns.ChatRunRegistry.subscribe`.

        Raises (on entering):
            RunNotFound: no run, or ``run_id`` is neither the current run nor
                a queued one.
            ReplayGap: frames after ``after`` were already trimmed.
            ValueError: ``after`` is past the run's ``latest_seq`` (as written
                to Redis), or negative.
            TypeError: ``after`` is not an int, ``run_id`` not a str.
            RedisUnavailable: Redis cannot be reached.
        """
        return self._subscription(conversation_id, after, run_id)

    @asynccontextmanager
    async def _subscription(
        self, conversation_id: str, after: int, run_id: str | None
    ) -> AsyncIterator[RedisSubscription]:
        check_cursor(after)
        check_conversation_id(conversation_id)
        check_run_id(run_id)
        record, first_id = await self._read(conversation_id, "subscribe", run_id)
        if record is None:
            if run_id is not None:
                raise RunNotFound(conversation_id, run_id)
            raise RunNotFound(conversation_id)
        if after > record.latest_seq:
            raise ValueError(
                f"after={after} is past latest_seq={record.latest_seq} of run "
                f"{record.run_id!r} (conversation {conversation_id!r}); "
                "is the cursor from another run?"
            )
        available_from = record.latest_seq + 1
        if first_id:
            seq, is_end = entry_seq(first_id)
            available_from = seq + 1 if is_end else seq
        if after + 1 < available_from:
            raise ReplayGap(conversation_id, record.run_id, after, available_from)
        with unavailable_on_connection_errors("subscribe"):
            if record.status.is_terminal:
                subscription = await self._replay_only(record, after)
            else:
                subscription = await self._follow(record, after)
        try:
            yield subscription
        finally:
            subscription.close()

    async def _replay_only(self, record: ChatRunRecord, after: int) -> RedisSubscription:
        events = await self._replay_range(record.conversation_id, record.run_id, after, None)
        return RedisSubscription._create(
            record.conversation_id, record.run_id, after, events, None, None, None
        )

    async def _replay_range(
        self, conversation_id: str, run_id: str, after: int, last: int | None
    ) -> builtins.list[ChatRunEvent]:
        """Frames ``after+1 .. last`` (or to the end) from Redis, checked to
        start right after the cursor (``ReplayGap`` if trimmed meanwhile)."""
        entries = await self._store.frames(
            conversation_id, run_id, after + 1, last, self._config.max_events_per_run + 1
        )
        events, _ = decode_entries(conversation_id, run_id, entries)
        if events and events[0].seq != after + 1:
            raise ReplayGap(conversation_id, run_id, after, events[0].seq)
        if last is not None and (not events or events[-1].seq != last) and last > after:
            raise ReplayGap(conversation_id, run_id, after, last + 1)
        return events

    async def _follow(self, record: ChatRunRecord, after: int) -> RedisSubscription:
        follower = await self._follower_for(record.conversation_id, record.run_id, after)
        oldest = follower.oldest_seq
        if after >= oldest - 1:
            replay, subscriber, receive = follower.join(after)
        else:
            # The follower started later than this cursor: join at its oldest
            # frame, and fetch the frames before it from Redis.
            tail, subscriber, receive = follower.join(oldest - 1)
            try:
                head = await self._replay_range(
                    record.conversation_id, record.run_id, after, oldest - 1
                )
            except BaseException:
                if subscriber is not None:
                    follower.leave(subscriber)
                raise
            replay = head + tail
        return RedisSubscription._create(
            record.conversation_id, record.run_id, after, replay, follower, subscriber, receive
        )

    async def _follower_for(self, conversation_id: str, run_id: str, after: int) -> Follower:
        """The run's follower on this worker, primed; the first caller primes it.

        If priming fails with an error, every waiting caller gets its own
        :class:`RedisUnavailable` chained from it. A cancellation (or a group
        holding one) belongs to the task it was delivered to: it propagates
        there only, and the waiting callers retry with a fresh follower.
        """
        while True:
            follower = self._followers.get(run_id)
            if follower is None:
                break
            await follower.ready.wait()
            if follower.failed is not None:
                raise RedisUnavailable("subscribe", describe(follower.failed)) from (
                    follower.failed
                )
            if follower.primed:
                return follower
            # Its primer was cancelled: try again (this task may prime it).
        block_ms = max(10, min(1000, int(self._lease * 500)))
        follower = Follower(
            self._store,
            conversation_id,
            run_id,
            self._config,
            self._counters,
            block_ms,
            self._forget_follower,
            self._on_reaped,
        )
        self._followers[run_id] = follower
        try:
            await follower.prime(after)
        except BaseException as exc:
            # Only an error is shared with the waiters; never a Cancelled,
            # KeyboardInterrupt or a group holding one (not an Exception).
            if isinstance(exc, Exception):
                follower.failed = exc
            self._forget_follower(follower)
            raise
        else:
            follower.primed = True
        finally:
            follower.ready.set()
        self._services.start_soon(
            follower.run, name=f"trio_chatruns.redis follower {conversation_id!r}"
        )
        return follower

    def _forget_follower(self, follower: Follower) -> None:
        if self._followers.get(follower.run_id) is follower:
            del self._followers[follower.run_id]

    # -- shutdown --------------------------------------------------------------------

    def _close(self) -> None:
        """Refuse new runs, interrupt the runs owned here, end the followers;
        the writers get a bounded time to write the ends."""
        self._closed = True
        states = builtins.list(self._owned.values())
        # Queued runs first, so that none starts when the run before it ends.
        for state in states:
            if state.status is ChatRunStatus.QUEUED:
                state.interrupt()
        for state in states:
            state.interrupt()
        for follower in builtins.list(self._followers.values()):
            follower.cancel_scope.cancel()
        self._runs_nursery.cancel_scope.deadline = (
            trio.current_time() + self._write_timeout + CLOSE_BOUND
        )


CLOSE_BOUND = 5.0
"""Seconds, beyond ``write_timeout``, that closing gives the writers."""


def _no_change(state: OwnedRun) -> None:
    pass


_TERMINAL_VALUES = frozenset(status.value for status in ChatRunStatus if status.is_terminal)
