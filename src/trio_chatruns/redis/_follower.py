"""Following a run from Redis: one reader task per run per worker (the
:class:`Follower`), fanned out to that worker's subscribers with the core's
:class:`~trio_chatruns._fanout.Fanout`, and the subscriber's side
(:class:`RedisSubscription`).

The follower reads the run's stream with a blocking ``XREAD`` on one
connection, whatever the number of local subscribers (the followers of a
worker hold at most half of its connection pool at once; past that they take
turns with short blocks), keeps the frames it
read (at most ``max_events_per_run``) so that a subscriber joining later
replays from memory, and publishes each new frame to the live subscribers
without waiting (a full channel drops that subscriber: ``SubscriberLagged``).
When nothing arrives within a block it asks Redis about the run, which reaps
it if its owner's lease lapsed: the end marker then arrives like any frame.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, final

import trio

from .._config import RegistryConfig
from .._counters import Counters
from .._exceptions import RunNotFound
from .._fanout import Fanout, Subscriber
from .._records import ChatRunEvent
from .._subscription import SubscriptionBase
from .._util import NoPublicConstructor
from ._codec import decode_entries, entry_seq
from ._errors import TRANSIENT_ERRORS, describe
from ._store import RedisStore

__all__ = ["Follower", "RedisSubscription"]

logger = logging.getLogger("trio_chatruns.redis")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_SCHEDULE_EVERY = 64


class Follower:
    """The one reader of a run's stream on this worker.

    ``prime`` must complete (``ready`` set) before subscribers join; after
    that :meth:`join` is synchronous, so a subscriber's replay and its live
    channel are taken in one atomic step (no frame falls between them).
    """

    def __init__(
        self,
        store: RedisStore,
        conversation_id: str,
        run_id: str,
        config: RegistryConfig,
        counters: Counters,
        block_ms: int,
        on_done: Callable[[Follower], None],
        on_reaped: Callable[[str, str, Any], Awaitable[None]],
    ) -> None:
        self.store = store
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.config = config
        self.block_ms = block_ms
        self.buffer: deque[ChatRunEvent] = deque(maxlen=config.max_events_per_run)
        self.fanout = Fanout(counters)
        self.last_id = "0-0"
        self.last_seq = 0
        self.ended = False
        # The run vanished from Redis before its end marker was read.
        self.lost = False
        self.ready = trio.Event()
        # Set with ``ready``: primed, or the error priming raised (neither
        # when the primer was cancelled: waiters then start a fresh follower).
        self.primed = False
        self.failed: Exception | None = None
        self.cancel_scope = trio.CancelScope()
        self.on_done = on_done
        self.on_reaped = on_reaped

    def _take(self, entries: tuple[object, ...]) -> None:
        events, ended = decode_entries(self.conversation_id, self.run_id, entries)
        for event in events:
            self.buffer.append(event)
            self.last_seq = event.seq
            self.fanout.publish(event)
        if entries:
            self.last_id = _entry_id(entries[-1])
        if ended:
            self.ended = True
            self.fanout.close()

    async def prime(self, after: int) -> None:
        """Read the run's frames after ``after`` (one ``XRANGE``) as the start
        of this follower's memory; raises what Redis raised."""
        self.last_seq = after
        self.last_id = f"{after}-0"
        entries = await self.store.frames(
            self.conversation_id,
            self.run_id,
            after + 1,
            None,
            self.config.max_events_per_run + 1,
        )
        self._take(tuple(entries))

    @property
    def oldest_seq(self) -> int:
        """The oldest seq this follower can replay from memory (``last_seq + 1``
        when it holds none)."""
        return self.buffer[0].seq if self.buffer else self.last_seq + 1

    def join(
        self, after: int
    ) -> tuple[
        list[ChatRunEvent], Subscriber | None, trio.MemoryReceiveChannel[ChatRunEvent] | None
    ]:
        """Replay (events with ``seq > after`` held here) and a live channel
        (``None`` once the run ended). Synchronous; ``after`` must be
        ``>= oldest_seq - 1``."""
        replay = [event for event in self.buffer if event.seq > after]
        if self.ended:
            return replay, None, None
        send, receive = trio.open_memory_channel[ChatRunEvent](self.config.subscriber_buffer)
        subscriber = Subscriber(send)
        self.fanout.add(subscriber)
        return replay, subscriber, receive

    def leave(self, subscriber: Subscriber) -> None:
        self.fanout.discard(subscriber)
        if not self.fanout and not self.ended:
            self.cancel_scope.cancel()

    async def run(self) -> None:
        """Follow the stream until the end marker (or nobody listens)."""
        backoff = _BACKOFF_FIRST
        slots = _blocking_read_slots(self.store)
        quiet_since = trio.current_time()
        try:
            with self.cancel_scope:
                while not self.ended:
                    try:
                        async with slots:
                            # Followers waiting for a slot: block briefly, so
                            # the slots go round.
                            contended = slots.statistics().tasks_waiting > 0
                            entries = await self.store.follow(
                                self.conversation_id,
                                self.run_id,
                                self.last_id,
                                _CONTENDED_BLOCK_MS if contended else self.block_ms,
                                self.config.subscriber_buffer,
                            )
                        if entries:
                            quiet_since = trio.current_time()
                        elif trio.current_time() - quiet_since >= 0.9 * self.block_ms / 1000:
                            quiet_since = trio.current_time()
                            await self._check_alive()
                    except TRANSIENT_ERRORS as exc:
                        logger.warning(
                            "following run %s (conversation %r): %s; retrying in %.2f s",
                            self.run_id,
                            self.conversation_id,
                            describe(exc),
                            backoff,
                        )
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, _BACKOFF_MAX)
                        continue
                    backoff = _BACKOFF_FIRST
                    self._take(entries)
        finally:
            self.fanout.close()
            self.on_done(self)

    async def _check_alive(self) -> None:
        """Nothing new within a block: reap a run whose owner's lease lapsed
        (its end marker then follows), and stop if the run is gone."""
        flat, _, reaped = await self.store.read(self.conversation_id, self.run_id, ended_too=True)
        if reaped:
            await self.on_reaped(self.conversation_id, reaped, flat)
        if flat:
            return  # held, current or queued (and reaped if it had lapsed): keep reading
        # No record: evicted or expired. Its stream outlives it a little, so
        # read what is left; if that holds no end, the run is gone for good.
        entries = await self.store.frames(
            self.conversation_id, self.run_id, self.last_seq + 1, None, 1_000_000
        )
        self._take(tuple(entries))
        if not self.ended:
            logger.warning(
                "run %s (conversation %r) disappeared from Redis before its end was read",
                self.run_id,
                self.conversation_id,
            )
            self.lost = True
            self.ended = True


_CONTENDED_BLOCK_MS = 20

_read_slots: weakref.WeakKeyDictionary[Any, trio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _blocking_read_slots(store: RedisStore) -> trio.CapacityLimiter:
    """The followers' share of the client's connection pool: half of it.

    coredis multiplexes ordinary commands over few connections but gives each
    blocking command (our ``XREAD BLOCK``) a connection of its own until it
    returns, from the same pool (``max_connections``, 64 by default). With as
    many followed runs as connections every command of the worker, the
    writers' included, would wait for a blocking read to return; capped at
    half, the other half stays free for them. Shared by every follower using
    the same pool.
    """
    pool = store.client.connection_pool
    slots = _read_slots.get(pool)
    if slots is None:
        slots = trio.CapacityLimiter(max(1, pool.max_connections // 2))
        _read_slots[pool] = slots
    return slots


def _entry_id(entry: object) -> str:
    seq, is_end = entry_seq(entry.identifier)  # type: ignore[attr-defined]
    return f"{seq}-{1 if is_end else 0}"


@final
class RedisSubscription(SubscriptionBase, metaclass=NoPublicConstructor):
    """One subscriber's view of a run served from Redis: an async iterator of
    :class:`~trio_chatruns.ChatRunEvent` with the rules of
    :class:`~trio_chatruns.ChatRunSubscription` (replay, then live, no gap,
    no duplicate, the end after the last frame, ``SubscriberLagged``), and
    the same base (cursor, end, leaving).

    ``__anext__`` is a cancel point on every call and a schedule point at
    least every 64 items.

    Attributes:
        conversation_id (str), run_id (str), after (int), last_seq (int): as
        on :class:`~trio_chatruns.ChatRunSubscription`.
    """

    __slots__ = ("_follower", "_replay")

    def __init__(
        self,
        conversation_id: str,
        run_id: str,
        after: int,
        replay: list[ChatRunEvent],
        follower: Follower | None,
        subscriber: Subscriber | None,
        receive: trio.MemoryReceiveChannel[ChatRunEvent] | None,
    ) -> None:
        super().__init__(conversation_id, run_id, after, subscriber, receive)
        self._replay = deque(replay)
        self._follower = follower

    async def __anext__(self) -> ChatRunEvent:
        """The next event.

        Raises:
            StopAsyncIteration: the run ended and every frame was yielded.
            SubscriberLagged: this subscriber was dropped for reading too slowly.
            RunNotFound: the run vanished from Redis before its end (Redis
                restarted without persistence, or was flushed).
            trio.ClosedResourceError: the ``async with`` block was already left.
        """
        if self._closed:
            await self._closed_error()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._unscheduled += 1
        if self._unscheduled >= _SCHEDULE_EVERY:
            self._unscheduled = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        while True:
            if self._replay:
                event = self._replay.popleft()
            elif self._receive is None:
                await self._end()
            else:
                # A queued event is taken without a scheduling round (the
                # checkpoints above bound how long this task runs unscheduled).
                try:
                    event = self._receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        event = await self._receive.receive()
                    except trio.EndOfChannel:
                        await self._end()
                except trio.EndOfChannel:
                    await self._end()
            # A live frame may repeat one replayed from Redis (joined while
            # the follower was reading): skip it, never yield it twice.
            if event.seq > self.last_seq:
                self.last_seq = event.seq
                return event

    def _check_ended(self) -> None:
        if self._follower is not None and self._follower.lost:
            raise RunNotFound(self.conversation_id, self.run_id)

    def _leave(self) -> None:
        self._replay.clear()
        if self._subscriber is not None and self._follower is not None:
            self._follower.leave(self._subscriber)
