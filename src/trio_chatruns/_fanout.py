"""Fan-out: where a frame goes from a run to its live subscribers.

Each live subscriber has its own bounded Trio memory channel; the run holds
the send ends here. Publishing never waits: a subscriber whose channel is full
is dropped on the spot (its receive end then drains what was queued and
reports :class:`~trio_chatruns.SubscriberLagged`), so one slow client cannot
stall the producer or the other subscribers.
"""

from __future__ import annotations

import trio

from ._counters import Counters
from ._records import ChatRunEvent

__all__ = ["Fanout", "Subscriber"]


class Subscriber:
    """The run's side of one live subscription: the send end of its channel,
    and whether it was dropped for lagging (which its reader must learn, to
    tell "run over" from "you fell behind" when the channel ends)."""

    __slots__ = ("lagged", "send")

    def __init__(self, send: trio.MemorySendChannel[ChatRunEvent]) -> None:
        self.send = send
        self.lagged = False


class Fanout:
    """The live subscribers of one run.

    Every method is synchronous and has no checkpoint, so it runs atomically
    with respect to other Trio tasks.
    """

    __slots__ = ("_counters", "_subscribers")

    def __init__(self, counters: Counters) -> None:
        # A dict used as an insertion-ordered set: delivery order across
        # subscribers is stable, and removal is O(1).
        self._subscribers: dict[Subscriber, None] = {}
        self._counters = counters

    def __len__(self) -> int:
        return len(self._subscribers)

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers[subscriber] = None
        self._counters.subscribers += 1

    def discard(self, subscriber: Subscriber) -> None:
        """Forget ``subscriber`` (it disconnected); a no-op if already gone."""
        if subscriber in self._subscribers:
            del self._subscribers[subscriber]
            self._counters.subscribers -= 1

    def publish(self, event: ChatRunEvent) -> None:
        """Queue ``event`` on every subscriber's channel without waiting.

        A subscriber whose channel is full is dropped and flagged as lagged; one
        whose receive end is already closed is just forgotten.
        """
        # No list is made unless someone is dropped: this runs on every push.
        dropped: list[Subscriber] | None = None
        for subscriber in self._subscribers:
            try:
                subscriber.send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError) as exc:
                subscriber.lagged = isinstance(exc, trio.WouldBlock)
                if dropped is None:
                    dropped = []
                dropped.append(subscriber)
        if dropped is not None:
            for subscriber in dropped:
                del self._subscribers[subscriber]
                subscriber.send.close()
                self._counters.subscribers -= 1
                if subscriber.lagged:
                    self._counters.lagged_subscribers += 1

    def close(self) -> None:
        """Close every send end (their readers end after draining) and forget them."""
        for subscriber in self._subscribers:
            subscriber.send.close()
        self._counters.subscribers -= len(self._subscribers)
        self._subscribers.clear()
