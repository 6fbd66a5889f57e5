"""Retention: which terminal runs are kept, and which are due for eviction.

A terminal run is kept for ``terminal_retention`` seconds after its
``terminated_at`` (the TTL), and at most ``max_retained_terminal`` terminal
runs are kept at all (the LRU backstop, oldest ``terminated_at`` first), and,
with ``max_retained_bytes`` set, their replay buffers total at most that many
bytes (oldest ``terminated_at`` first again). Active and queued runs never
enter this index, so they are never counted or evicted.

There is no sweeper task. The registry calls :meth:`RetentionIndex.pop_expired`
, :meth:`RetentionIndex.pop_over_cap` and :meth:`RetentionIndex.pop_over_bytes`
from its own mutation and read paths.
Runs enter the index in the order they become terminal, and ``terminated_at``
comes from ``trio.current_time()``, which never goes backwards, so that order
*is* ``terminated_at`` order: the next run due is always at the front, and a
sweep costs O(runs it evicts), not O(runs held).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

__all__ = ["RetentionIndex"]

if TYPE_CHECKING:
    from ._run import RunState


class RetentionIndex:
    """Terminal runs held by a registry, oldest ``terminated_at`` first.

    All methods are synchronous with no checkpoint: callers run them inside
    the registry's critical section.
    """

    __slots__ = ("_by_conversation", "_cap", "_max_bytes", "_retention", "bytes")

    def __init__(self, retention: float, cap: int, max_bytes: int | None = None) -> None:
        self._retention = retention
        self._cap = cap
        self._max_bytes = max_bytes
        self._by_conversation: OrderedDict[str, RunState] = OrderedDict()
        # Bytes buffered by the runs indexed (a terminal run's buffer is final).
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._by_conversation)

    def add(self, state: RunState) -> None:
        """Index a run that just became terminal (it is the newest to end)."""
        self._by_conversation[state.conversation_id] = state
        self.bytes += state.bytes

    def discard(self, conversation_id: str) -> None:
        """Forget a conversation's terminal run (replaced by a new run); O(1)."""
        state = self._by_conversation.pop(conversation_id, None)
        if state is not None:
            self.bytes -= state.bytes

    def due(self, now: float) -> bool:
        """Whether a sweep at ``now`` would evict anything; O(1)."""
        runs = self._by_conversation
        if len(runs) > self._cap:
            return True
        if self._max_bytes is not None and self.bytes > self._max_bytes:
            return True
        return bool(runs) and self.is_expired(next(iter(runs.values())), now)

    def is_expired(self, state: RunState, now: float) -> bool:
        """Whether a terminal run is past its retention at Trio time ``now``."""
        terminated_at = state.terminated_at
        return terminated_at is not None and terminated_at + self._retention <= now

    def pop_expired(self, now: float) -> Iterator[RunState]:
        """Remove and yield, oldest first, every run past its retention at ``now``."""
        runs = self._by_conversation
        while runs:
            oldest = next(iter(runs.values()))
            if not self.is_expired(oldest, now):
                return
            runs.popitem(last=False)
            self.bytes -= oldest.bytes
            yield oldest

    def pop_over_cap(self) -> Iterator[RunState]:
        """Remove and yield, oldest first, the runs beyond the cap."""
        runs = self._by_conversation
        while len(runs) > self._cap:
            oldest = runs.popitem(last=False)[1]
            self.bytes -= oldest.bytes
            yield oldest

    def pop_over_bytes(self) -> Iterator[RunState]:
        """Remove and yield, oldest first, runs while the index holds more than
        ``max_bytes`` bytes (nothing without a byte budget)."""
        runs = self._by_conversation
        max_bytes = self._max_bytes
        if max_bytes is None:
            return
        while runs and self.bytes > max_bytes:
            oldest = runs.popitem(last=False)[1]
            self.bytes -= oldest.bytes
            yield oldest
