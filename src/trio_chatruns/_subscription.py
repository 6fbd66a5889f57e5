"""A subscriber's side: replay from the buffer, then the live tail from its
own memory channel, as one async iterator of events."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, Protocol, TypeVar, final

import trio

from ._exceptions import SubscriberLagged
from ._records import ChatRunEvent, ChatRunRecord
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from ._fanout import Fanout, Subscriber

__all__ = ["SCHEDULE_EVERY", "ChatRunSubscription", "SubscriptionBase"]


class SubscribedRun(Protocol):
    """What a subscription reads of its run's state (``_run.RunState`` is one).

    A protocol here, so this module does not import ``_run`` (which imports
    this one): no import cycle, not even a type-only one (STYLE.md).
    """

    conversation_id: str
    run_id: str
    latest_seq: int
    fanout: Fanout

    def snapshot(self) -> ChatRunRecord:
        """The run's record now."""
        ...


SCHEDULE_EVERY = 64
"""``__anext__`` yields to the scheduler at least once every this many items."""


T = TypeVar("T", bound="SubscriptionBase")


class SubscriptionBase:
    """What every subscription keeps and does, whatever feeds it: the cursor
    (``after``, ``last_seq``), the live channel and its fan-out slot, the end
    (``SubscriberLagged`` for a dropped subscriber) and leaving. The base of
    :class:`ChatRunSubscription` and of the Redis backend's
    ``RedisSubscription``; each has its own ``__anext__``.
    """

    __slots__ = (
        "_closed",
        "_receive",
        "_subscriber",
        "_unscheduled",
        "after",
        "conversation_id",
        "last_seq",
        "run_id",
    )

    def __init__(
        self,
        conversation_id: str,
        run_id: str,
        after: int,
        subscriber: Subscriber | None,
        receive: trio.MemoryReceiveChannel[ChatRunEvent] | None,
    ) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.after = after
        self.last_seq = after
        # None when the run was already terminal: replay only.
        self._subscriber = subscriber
        self._receive = receive
        self._closed = False
        # Items returned since this task last went through the scheduler.
        self._unscheduled = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} run={self.run_id} conversation={self.conversation_id!r} "
            f"last_seq={self.last_seq}>"
        )

    def __aiter__(self: T) -> T:
        return self

    async def _closed_error(self) -> NoReturn:
        # A cancel point like every other call (Trio's rules).
        await trio.lowlevel.checkpoint_if_cancelled()
        raise trio.ClosedResourceError("this subscription was closed")

    async def _end(self) -> NoReturn:
        # The end is a checkpoint, so that even a loop that keeps
        # resubscribing to a finished run yields to other tasks.
        await trio.lowlevel.checkpoint()
        subscriber = self._subscriber
        if subscriber is not None and subscriber.lagged:
            raise SubscriberLagged(self.conversation_id, self.run_id, self.last_seq)
        self._check_ended()
        raise StopAsyncIteration

    def _check_ended(self) -> None:
        """Raise instead of ending quietly when the run's end was not seen
        (the Redis backend's run lost from Redis); nothing here."""

    def close(self) -> None:
        """Leave the run: only this subscriber is removed. Synchronous, idempotent.

        Called when the ``async with`` block is left.
        """
        if self._closed:
            return
        self._closed = True
        self._leave()
        if self._receive is not None:
            self._receive.close()

    def _leave(self) -> None:
        """Drop the replay and this subscriber's slot in its run's fan-out."""
        raise NotImplementedError


@final
class ChatRunSubscription(SubscriptionBase, metaclass=NoPublicConstructor):
    """One subscriber's view of a run: an async iterator of :class:`ChatRunEvent`.

    Created by ``async with registry.subscribe(...) as subscription``. It yields
    every buffered event with ``seq > after`` (the replay), then each live
    event as it is pushed, in seq order with no gap and no duplicate, and
    stops after the run's last frame once the run is terminal.

    Replayed events come straight from a snapshot of the buffer and never pass
    through the channel, so a long backlog does not count as lag. Live events
    wait in a channel of ``subscriber_buffer`` slots; if it fills, the run
    drops this subscriber and, after yielding what was already queued, the
    iterator raises :class:`SubscriberLagged` with ``resume_after`` set to the
    last seq it yielded.

    Checkpoints (Trio's rules): every ``__anext__`` is a cancel point (it
    starts with ``trio.lowlevel.checkpoint_if_cancelled()``, which costs no
    scheduling round unless the task is cancelled), so a cancelled reader
    stops at its next item even with a long backlog. It is a schedule point
    whenever it waits for the producer, at the end of the iteration (normal
    or lagged), and at least once every 64 items it returns without waiting
    (:data:`SCHEDULE_EVERY`), so a fast reader draining a backlog cannot
    starve other tasks. A drain of queued events therefore costs one
    scheduling round per 64 events, not per event (an ``async for`` over a
    bare memory channel, which schedules per item, runs several times slower).

    Attributes:
        conversation_id (str), run_id (str): the run followed. A subscription
            belongs to one run and never follows into a restarted one.
        after (int): the cursor the subscription started from.
        last_seq (int): the seq of the last event yielded (``after`` before any);
            the cursor to resume from after a disconnect.
    """

    __slots__ = ("_replay", "_replay_pos", "_state")

    def __init__(
        self,
        state: SubscribedRun,
        after: int,
        replay: list[ChatRunEvent],
        subscriber: Subscriber | None,
        receive: trio.MemoryReceiveChannel[ChatRunEvent] | None,
    ) -> None:
        super().__init__(state.conversation_id, state.run_id, after, subscriber, receive)
        self._state = state
        self._replay = replay
        self._replay_pos = 0

    @property
    def record(self) -> ChatRunRecord:
        """A snapshot of the followed run now, even if it was since evicted."""
        return self._state.snapshot()

    async def __anext__(self) -> ChatRunEvent:
        """The next event; see the class docstring for where this checkpoints.

        Raises:
            StopAsyncIteration: the run is terminal and every frame was yielded.
            SubscriberLagged: this subscriber was dropped for reading too slowly.
            trio.ClosedResourceError: the ``async with`` block was already left.
        """
        if self._closed:
            await self._closed_error()
        replay = self._replay
        receive = self._receive
        if replay or (receive is not None and self.last_seq < self._state.latest_seq):
            # An event is ready and is returned without waiting: check for
            # cancellation (no scheduling round unless cancelled), and go
            # through the scheduler once every SCHEDULE_EVERY events.
            if self._unscheduled >= SCHEDULE_EVERY:
                self._unscheduled = 0
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            self._unscheduled += 1
            if replay:
                event = replay[self._replay_pos]
                self._replay_pos += 1
                if self._replay_pos == len(replay):
                    # Let the snapshot go: a long-lived subscriber holds no backlog.
                    self._replay = []
                self.last_seq = event.seq
                return event
            assert receive is not None
            # A live frame past our cursor is queued on our channel (every one
            # is, until the channel is closed for lag): take it without waiting.
            try:
                event = receive.receive_nowait()
            except trio.WouldBlock:  # pragma: no cover - defensive
                event = await receive.receive()
            except trio.EndOfChannel:
                await self._end()
        elif receive is None:
            await self._end()
        else:
            # Caught up, so the channel is empty: wait at once (a full
            # checkpoint) rather than first raising a certain WouldBlock.
            try:
                event = await receive.receive()
            except trio.EndOfChannel:
                await self._end()
            self._unscheduled = 0
        self.last_seq = event.seq
        return event

    def _leave(self) -> None:
        self._replay = []
        if self._subscriber is not None:
            self._state.fanout.discard(self._subscriber)
