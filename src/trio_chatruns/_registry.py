"""The registry: the conversation → run map, the queues of waiting runs, its
critical section, eviction on the mutation and read paths
(:meth:`ChatRunRegistry._sweep`), and the nurseries a registry owns."""

from __future__ import annotations

import builtins
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, final

import trio

from ._config import RegistryConfig
from ._counters import Counters
from ._exceptions import RunAlreadyActive, RunNotFound, RunQueueFull
from ._producer import Producer, run_producer
from ._records import ChatRunEvent, ChatRunRecord, RegistryStats
from ._retention import RetentionIndex
from ._run import ChatRun, RunState
from ._run_end import RunEndHook, RunEndHooks
from ._status import ChatRunStatus, StartPolicy
from ._subscription import ChatRunSubscription
from ._util import (
    UNSET,
    NoPublicConstructor,
    Unset,
    check_active_only,
    check_conversation_id,
    check_cursor,
    check_run_id,
    check_start_arguments,
    is_async_callable,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["ChatRunRegistry", "open_chat_run_registry"]


@final
class ChatRunRegistry(metaclass=NoPublicConstructor):
    """The runs of a chat server, one current run per conversation.

    Created by :func:`open_chat_run_registry`, never directly.

    **Atomicity.** Every method except :meth:`subscribe` (an async context
    manager whose entry does not checkpoint either) is synchronous and has no
    checkpoint inside, so under Trio's cooperative scheduling each call is one
    atomic step: the registry's critical section, with no lock.

    **Queues.** Each conversation has at most one *current* run (the one that
    started last, active or retained terminal), held in ``_runs``, and behind
    an active current run a FIFO of ``queued`` runs (``_queues``). A queued
    run starts the moment the run before it becomes terminal (in that same
    critical section), so a conversation has queued runs only while its
    current run is active.

    **Eviction.** There is no background sweeper. Expired terminal runs (TTL),
    the oldest terminal runs past the cap (LRU) and, with a byte budget, past
    ``max_retained_bytes`` are evicted inside that critical section: when a
    run starts, when a run becomes terminal, and before a read answers. A
    sweep costs O(runs it evicts). An idle server therefore holds its last
    runs until the next call; but no call ever sees a run past its retention.
    """

    def __init__(
        self,
        config: RegistryConfig,
        nursery: trio.Nursery,
        hooks: RunEndHooks | None = None,
        counters: Counters | None = None,
    ) -> None:
        self._config = config
        self._nursery = nursery
        # The current run of every conversation: active or retained terminal.
        self._runs: dict[str, RunState] = {}
        # The runs waiting behind an active current run, oldest first; a key
        # only while its queue is not empty.
        self._queues: dict[str, deque[RunState]] = {}
        # The terminal subset of _runs, in eviction order.
        self._retention = RetentionIndex(
            config.terminal_retention, config.max_retained_terminal, config.max_retained_bytes
        )
        self._counters = Counters() if counters is None else counters
        self._hooks = hooks
        # Producers still running after their run ended, so that evicting the
        # run can cancel them (their scope's deadline covers the TTL case).
        self._finishing: dict[RunState, trio.CancelScope] = {}
        self._closed = False

    def _run_end_hook(self) -> RunEndHook | None:
        """Internal (for ``trio_chatruns.server``, not in the public API): the
        ``on_run_end`` hook this registry was opened with; ``None`` if none."""
        return None if self._hooks is None else self._hooks.hook

    def __repr__(self) -> str:
        return (
            f"<ChatRunRegistry runs={len(self._runs)} "
            f"terminal={len(self._retention)} closed={self._closed}>"
        )

    @property
    def config(self) -> RegistryConfig:
        """The limits this registry was opened with (:class:`RegistryConfig`)."""
        return self._config

    @property
    def closed(self) -> bool:
        """``True`` once the ``async with`` block of the registry was left."""
        return self._closed

    # -- the critical section ------------------------------------------------

    def _sweep(self) -> int:
        """Evict what is due at ``trio.current_time()``: TTL first, then LRU.

        Returns how many runs were evicted. O(evicted); no checkpoint.
        """
        retention = self._retention
        now = trio.current_time()
        if not retention.due(now):
            return 0  # the common case on every mutation and read
        evicted = 0
        counters = self._counters
        for state in retention.pop_expired(now):
            self._forget(state)
            counters.evicted_ttl += 1
            evicted += 1
        for state in retention.pop_over_cap():
            self._forget(state)
            counters.evicted_lru += 1
            evicted += 1
        for state in retention.pop_over_bytes():
            self._forget(state)
            counters.evicted_bytes += 1
            evicted += 1
        return evicted

    def _forget(self, state: RunState) -> None:
        """Drop an evicted run, and cancel its producer if it is still finishing."""
        del self._runs[state.conversation_id]
        self._counters.buffered_bytes -= state.bytes
        scope = self._finishing.pop(state, None)
        if scope is not None:
            scope.cancel()

    def _on_terminal(self, state: RunState, finishing: trio.CancelScope | None) -> None:
        # Called by RunState.mark_terminal, once per run, after its subscribers
        # were closed. The order is: end, hook scheduled, next queued run
        # started, eviction.
        if finishing is not None:
            self._finishing[state] = finishing
        if self._hooks is not None:
            self._hooks.schedule(state.snapshot(), state.buffer)
        conversation_id = state.conversation_id
        if self._runs.get(conversation_id) is state:
            queue = self._queues.get(conversation_id)
            if queue and not self._closed:
                # The next run replaces this one at once (not an eviction).
                self._counters.buffered_bytes -= state.bytes
                self._start_queued(queue)
            else:
                self._retention.add(state)
            self._sweep()
        else:
            # A queued run that ended before it started: it was never current.
            queue = self._queues[conversation_id]
            queue.remove(state)
            if not queue:
                del self._queues[conversation_id]
            self._counters.queued -= 1
            self._counters.buffered_bytes -= state.bytes

    def _start_queued(self, queue: deque[RunState]) -> None:
        """Make the oldest queued run current and start its producer."""
        state = queue.popleft()
        if not queue:
            del self._queues[state.conversation_id]
        self._counters.queued -= 1
        pending = state.pending_start
        assert pending is not None
        state.pending_start = None
        state.status = ChatRunStatus.RUNNING
        state.updated_at = trio.current_time()
        self._runs[state.conversation_id] = state
        self._launch(state, *pending)

    def _launch(self, state: RunState, run: ChatRun, producer: Producer, args: Any) -> None:
        self._nursery.start_soon(
            run_producer,
            run,
            state,
            producer,
            args,
            self._on_producer_exit,
            name=f"trio_chatruns producer {state.conversation_id!r}",
        )

    def _on_producer_exit(self, state: RunState) -> None:
        self._finishing.pop(state, None)

    def _lookup(self, conversation_id: object) -> RunState | None:
        """The current run, or ``None``; a terminal one past retention is evicted first."""
        state = self._runs.get(check_conversation_id(conversation_id))
        if state is not None and self._retention.is_expired(state, trio.current_time()):
            self._sweep()
            return None
        return state

    def _require(self, conversation_id: object) -> RunState:
        state = self._lookup(conversation_id)
        if state is None:
            raise RunNotFound(str(conversation_id))
        return state

    # -- mutations -------------------------------------------------------------

    def try_start(
        self,
        conversation_id: str,
        producer: Producer,
        *args: Any,
        if_active: StartPolicy | str = StartPolicy.REJECT,
    ) -> ChatRun:
        """Start a run: ``producer(run, *args)`` as a task in the registry's nursery,
        now or, if the conversation is busy, as ``if_active`` says.

        Synchronous and atomic: two starts on one conversation, whatever the
        policies, each get exactly one outcome, in call order. Sweeps due
        terminal runs. A retained terminal run of the same conversation is
        replaced (not counted as an eviction); its producer task may still be
        finishing, but it can no longer push. A producer task starts at the
        next scheduling round.

        With no active run, every policy starts the run at once (status
        ``running``). With one:

        - ``reject`` (the default): raises :class:`RunAlreadyActive`.
        - ``interrupt``: cancels every queued run of the conversation (they end
          ``cancelled``, their producers never run), interrupts the active run,
          and returns the new run ``queued``; it starts (``running``, producer
          started) as soon as the interrupted run is terminal (at once if its
          producer had not started yet). It leaves exactly one run waiting,
          whatever ``max_queued_per_conversation`` says.
        - ``enqueue``: returns the new run ``queued``, behind the active run and
          the runs already queued (first in, first out); it starts when every
          run before it is terminal. Raises :class:`RunQueueFull` if
          ``max_queued_per_conversation`` runs are already waiting.

        A queued run has its ``run_id`` at once; it can be subscribed to
        (``subscribe(cid, run_id=run.run_id)``), interrupted, and listed
        (:meth:`queued`, :meth:`list`). It becomes the conversation's current
        run when it starts.

        Args:
            conversation_id (str): non-empty.
            producer: an async function ``async def producer(run: ChatRun, *args)``.
            *args: extra positional arguments for ``producer``, as with
                ``nursery.start_soon``.
            if_active (StartPolicy | str): ``"reject"``, ``"interrupt"`` or
                ``"enqueue"``; keyword-only.

        Returns:
            ChatRun: the new run's handle (the same one the producer gets),
            status ``running`` or ``queued``, ``latest_seq`` 0, a new unique
            ``run_id``.

        Raises:
            TypeError / ValueError: a bad ``conversation_id``; ``TypeError`` if
                ``producer`` is not an async function; ``ValueError`` for an
                unknown ``if_active``.
            RunAlreadyActive: the conversation has an active run (``reject``).
            RunQueueFull: the conversation's queue is full (``enqueue``).
            RuntimeError: the registry is closed.

        On any of these, nothing changes (not even a sweep).
        """
        check_start_arguments(conversation_id, producer)
        policy = if_active if if_active is StartPolicy.REJECT else StartPolicy.coerce(if_active)
        if self._closed:
            raise RuntimeError(f"registry is closed; cannot start a run for {conversation_id!r}")
        previous = self._runs.get(conversation_id)
        if previous is not None and previous.terminated_at is None:
            return self._start_busy(conversation_id, previous, policy, producer, args)
        self._sweep()
        replaced = self._runs.pop(conversation_id, None)
        if replaced is not None:
            self._retention.discard(conversation_id)
            self._counters.buffered_bytes -= replaced.bytes
        state, run = self._new_run(conversation_id, ChatRunStatus.RUNNING)
        self._runs[conversation_id] = state
        self._launch(state, run, producer, args)
        return run

    def _new_run(self, conversation_id: str, status: ChatRunStatus) -> tuple[RunState, ChatRun]:
        state = RunState(
            conversation_id,
            # 128 random bits as 32 hex digits: unique across runs, registries
            # and server restarts (a client's cursor names its run), and a
            # quarter of the cost of uuid.uuid4().hex.
            os.urandom(16).hex(),
            self._config,
            self._counters,
            self._on_terminal,
            status,
        )
        return state, ChatRun._create(state)

    def _start_busy(
        self,
        conversation_id: str,
        active: RunState,
        policy: StartPolicy,
        producer: Producer,
        args: tuple[Any, ...],
    ) -> ChatRun:
        """``try_start`` on a conversation whose current run is active."""
        if policy is StartPolicy.REJECT:
            raise RunAlreadyActive(conversation_id, active.run_id)
        queue = self._queues.get(conversation_id)
        if policy is StartPolicy.ENQUEUE:
            limit = self._config.max_queued_per_conversation
            if (len(queue) if queue else 0) >= limit:
                raise RunQueueFull(conversation_id, limit)
        self._sweep()
        if policy is StartPolicy.INTERRUPT and queue is not None:
            # Ending a queued run removes it from the queue (_on_terminal).
            for waiting in builtins.list(queue):
                waiting.interrupt()
        state, run = self._new_run(conversation_id, ChatRunStatus.QUEUED)
        state.pending_start = (run, producer, args)
        queue = self._queues.get(conversation_id)
        if queue is None:
            queue = self._queues[conversation_id] = deque()
        queue.append(state)
        self._counters.queued += 1
        if policy is StartPolicy.INTERRUPT:
            # Ends the active run at once if its producer never started, which
            # starts this one; otherwise it starts when the producer has exited.
            active.interrupt()
        return run

    def push_frame(
        self,
        conversation_id: str,
        frame: Any,
        *,
        status: ChatRunStatus | str | None = None,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> int:
        """:meth:`ChatRun.push_frame` on the conversation's current run.

        Raises:
            RunNotFound: no run is held for ``conversation_id``.
            RunTerminated, TypeError, ValueError: as :meth:`ChatRun.push_frame`.
        """
        return self._require(conversation_id).push_frame(frame, status, current_tool, error)

    def update(
        self,
        conversation_id: str,
        status: ChatRunStatus | str,
        *,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> None:
        """:meth:`ChatRun.update` on the conversation's current run.

        Raises:
            RunNotFound: no run is held for ``conversation_id``.
            RunTerminated, TypeError, ValueError: as :meth:`ChatRun.update`.
        """
        self._require(conversation_id).update(status, current_tool, error)

    def interrupt(self, conversation_id: str) -> bool:
        """Request cancellation of the conversation's active run.

        Returns ``False`` when there is no active run. See :meth:`ChatRun.interrupt`.
        Synchronous and atomic.
        """
        state = self._lookup(conversation_id)
        return state is not None and state.interrupt()

    def prune(self) -> int:
        """Evict every terminal run due now (TTL, then LRU); return how many (count).

        Never needed for correctness (every path sweeps), but lets an idle
        server release memory on its own schedule, e.g. from a periodic task.
        """
        return self._sweep()

    # -- reads -----------------------------------------------------------------

    def get(self, conversation_id: str) -> ChatRunRecord | None:
        """A snapshot of the conversation's current run, or ``None``."""
        check_conversation_id(conversation_id)
        self._sweep()
        state = self._runs.get(conversation_id)
        return None if state is None else state.snapshot()

    def queued(self, conversation_id: str) -> builtins.list[ChatRunRecord]:
        """Snapshots of the conversation's ``queued`` runs, in the order they will
        start; ``[]`` if none (or an unknown conversation).

        Raises:
            TypeError / ValueError: a bad ``conversation_id``.
        """
        check_conversation_id(conversation_id)
        queue = self._queues.get(conversation_id)
        return [] if queue is None else [state.snapshot() for state in queue]

    def list(self, *, active_only: bool = False) -> builtins.list[ChatRunRecord]:
        """Snapshots of every run held, queued runs included (only active and
        queued ones if ``active_only``), newest ``updated_at`` first.

        Raises:
            TypeError: ``active_only`` is not a ``bool``.
        """
        check_active_only(active_only)
        self._sweep()
        states = self._runs.values()
        records = [
            state.snapshot() for state in states if not active_only or state.terminated_at is None
        ]
        for queue in self._queues.values():
            records.extend(state.snapshot() for state in queue)
        records.sort(key=lambda record: record.updated_at, reverse=True)
        return records

    def events(self, conversation_id: str, *, after: int = 0) -> builtins.list[ChatRunEvent]:
        """The buffered events of the conversation's current run with ``seq > after``,
        oldest first; ``[]`` for an unknown conversation.

        Raises:
            TypeError / ValueError: a bad ``conversation_id`` or ``after`` (an
                int >= 0).
        """
        check_cursor(after)
        state = self._lookup(conversation_id)
        return [] if state is None else state.events_after(after)

    def stats(self) -> RegistryStats:
        """Counters now and totals since the registry opened (:class:`RegistryStats`)."""
        self._sweep()
        counters = self._counters
        terminal = len(self._retention)
        return RegistryStats(
            active=len(self._runs) - terminal,
            retained_terminal=terminal,
            subscribers=counters.subscribers,
            evicted_ttl=counters.evicted_ttl,
            evicted_lru=counters.evicted_lru,
            lagged_subscribers=counters.lagged_subscribers,
            frames_pushed=counters.frames_pushed,
            queued=counters.queued,
            evicted_bytes=counters.evicted_bytes,
            run_end_failures=counters.run_end_failures,
            buffered_bytes=counters.buffered_bytes if self._config.measures_bytes else None,
        )

    def subscribe(
        self, conversation_id: str, *, after: int = 0, run_id: str | None = None
    ) -> AbstractAsyncContextManager[ChatRunSubscription]:
        """Follow the conversation's current run (or, with ``run_id``, one of its
        queued runs) from cursor ``after``.

        Use as ``async with registry.subscribe(cid, after=n) as subscription:``
        then ``async for event in subscription``. It yields every buffered
        event with ``seq > after``, then live events, in order, with no gap and
        no duplicate, and ends after the run's last frame. A retained terminal
        run replays and ends. Entering does not checkpoint; leaving removes
        only this subscriber. See :class:`ChatRunSubscription` for lag.

        Args:
            conversation_id (str): the conversation.
            after (int >= 0): the last seq the client already has (0 for all).
                Over SSE this is what ``Last-Event-ID`` carries.
            run_id (str | None): if given, the run the cursor belongs to: the
                current run or one of the conversation's ``queued`` runs (the
                subscription then waits for its frames and ends when it ends).

        Raises (on entering):
            RunNotFound: no run, or ``run_id`` is neither the current run nor
                a queued one.
            ReplayGap: frames after ``after`` were already trimmed.
            ValueError: ``after`` is past the run's ``latest_seq`` (a cursor
                from another run), or negative.
            TypeError: ``after`` is not an int, ``run_id`` not a str.
        """
        return self._subscription(conversation_id, after, run_id)

    @asynccontextmanager
    async def _subscription(
        self, conversation_id: str, after: int, run_id: str | None
    ) -> AsyncIterator[ChatRunSubscription]:
        check_cursor(after)
        check_run_id(run_id)
        state = self._require(conversation_id)
        if run_id is not None and run_id != state.run_id:
            for waiting in self._queues.get(conversation_id, ()):
                if waiting.run_id == run_id:
                    state = waiting
                    break
            else:
                raise RunNotFound(conversation_id, run_id)
        subscription = state.subscribe(after)
        try:
            yield subscription
        finally:
            subscription.close()

    # -- shutdown --------------------------------------------------------------

    def _close(self) -> None:
        """Refuse new runs, end queued runs, interrupt every active run, cancel
        the stragglers.

        Queued runs end ``CANCELLED`` here without running their producers
        (first, so none starts when the run before it ends). Each active run
        ends ``CANCELLED`` when its producer exits, which closes its
        subscribers. Cancelling the nursery also stops producers of runs that
        are already terminal but still finishing, so closing is bounded (a
        producer that shields itself from cancellation still delays it:
        Trio's rules). The run-end hooks of all of them run afterwards, in
        their own nursery (see :func:`open_chat_run_registry`).
        """
        self._closed = True
        for queue in builtins.list(self._queues.values()):
            for state in builtins.list(queue):
                state.interrupt()
        for state in builtins.list(self._runs.values()):
            state.interrupt()
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_chat_run_registry(
    config: RegistryConfig | None = None,
    *,
    on_run_end: RunEndHook | None = None,
) -> AsyncIterator[ChatRunRegistry]:
    """Open a :class:`ChatRunRegistry` whose producers run in a nursery owned
    by this ``async with`` block.

    Usage::

        async with open_chat_run_registry(on_run_end=save) as registry:
            run = registry.try_start("conv-1", producer)

    Leaving the block closes the registry: new runs are refused
    (``RuntimeError``), queued runs end ``CANCELLED`` without running, active
    runs are interrupted and end ``CANCELLED``, every subscriber is closed,
    and the block returns only when every producer task has exited and every
    run-end hook call has returned (each within ``run_end_timeout``). An
    exception raised in the body propagates as itself, not wrapped in an
    ``ExceptionGroup`` (Trio's nurseries are strict; a group of exactly one
    exception is unwrapped here).

    Args:
        config (RegistryConfig | None): limits; ``None`` for the defaults.
        on_run_end: ``None``, or an async function ``hook(record:
            ChatRunRecord, events: Sequence[ChatRunEvent]) -> None`` called
            exactly once for every run that ends, whatever its status (a
            queued run cancelled before it started included), after it is
            terminal, with its final record and the events still buffered
            (``events[0].seq > 1`` says older frames were trimmed). It runs in
            a nursery of the registry, never in the producer's task, and never
            delays the end of the run for its subscribers. For one
            conversation the calls run one at a time, in the order the runs
            ended; different conversations run concurrently. An exception is
            logged (logger ``trio_chatruns``, with the run id) and counted in
            ``RegistryStats.run_end_failures``, and changes nothing else; so is
            a call cancelled after ``RegistryConfig.run_end_timeout`` seconds.
            Calls are shielded from outside cancellation (only their timeout
            cancels them), so closing the registry, even by a cancellation,
            drops none.

    Raises:
        TypeError: ``config`` is not a :class:`RegistryConfig`, or ``on_run_end``
            is not an async function.
    """
    if config is None:
        config = RegistryConfig()
    elif not isinstance(config, RegistryConfig):
        raise TypeError(f"config must be a RegistryConfig or None, not {config!r}")
    if on_run_end is not None and not is_async_callable(on_run_end):
        raise TypeError(f"on_run_end must be an async function or None, not {on_run_end!r}")
    body_error: BaseException | None = None
    try:
        # The hooks' nursery encloses the producers' one: it is not cancelled
        # when the registry closes, and waits for the calls of the runs the
        # closing ended.
        async with _hook_nursery(on_run_end is not None) as hook_nursery:
            counters = Counters()
            hooks = None
            if on_run_end is not None:
                assert hook_nursery is not None
                hooks = RunEndHooks(on_run_end, config.run_end_timeout, hook_nursery, counters)
            try:
                async with trio.open_nursery() as nursery:
                    registry = ChatRunRegistry._create(config, nursery, hooks, counters)
                    try:
                        yield registry
                    except BaseException as exc:
                        body_error = exc
                        raise
                    finally:
                        registry._close()
            except BaseExceptionGroup as group:
                _raise_unwrapped(group, body_error)
    except BaseExceptionGroup as group:
        if on_run_end is None:
            raise  # already unwrapped above: this group is the body's own
        _raise_unwrapped(group, body_error)


@asynccontextmanager
async def _hook_nursery(wanted: bool) -> AsyncIterator[trio.Nursery | None]:
    if not wanted:
        yield None
        return
    async with trio.open_nursery() as nursery:
        yield nursery


def _raise_unwrapped(
    group: BaseExceptionGroup[BaseException], body_error: BaseException | None
) -> NoReturn:
    """Raise the one exception of ``group`` as itself (the body's own object if
    it is a re-derived copy of it); a group of several is re-raised as is."""
    if len(group.exceptions) != 1:
        raise group
    error = group.exceptions[0]
    if body_error is not None and _same_error(error, body_error):
        # Trio's cancel scopes re-derive groups on the way out; hand back
        # the body's own object.
        error = body_error
    context = error.__context__
    try:
        raise error
    finally:
        # Raising inside the caller's handler would chain the group as the
        # context; restore the exception's own.
        error.__context__ = context
        del error, group, body_error


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for child in error.exceptions:
            yield from _leaves(child)
    else:
        yield error


def _same_error(error: BaseException, original: BaseException) -> bool:
    """Whether ``error`` is ``original`` or a re-derived copy of the same group."""
    if error is original:
        return True
    if not (isinstance(error, BaseExceptionGroup) and isinstance(original, BaseExceptionGroup)):
        return False
    mine, theirs = list(_leaves(error)), list(_leaves(original))
    return (
        type(error) is type(original)
        and error.message == original.message
        and len(mine) == len(theirs)
        and all(a is b for a, b in zip(mine, theirs, strict=True))
    )
