"""Frozen snapshots handed to users: events, run records and registry stats.

All are attrs frozen, slotted classes whose fields are plain data, so
``json.dumps(attrs.asdict(record))`` works (the frame of an event is whatever the
producer pushed; keep it JSON-safe if you serve it as JSON).
"""

from __future__ import annotations

from typing import Any

import attrs

from ._status import ChatRunStatus

__all__ = ["ChatRunEvent", "ChatRunRecord", "RegistryStats"]


@attrs.frozen
class ChatRunEvent:
    """One frame of a run, as buffered for replay and sent to subscribers.

    Attributes:
        conversation_id (str): the conversation the run belongs to.
        run_id (str): the run that produced the frame.
        seq (int): 1 for the run's first frame, rising by exactly 1 per frame.
        timestamp (float): wall-clock time of the push, Unix seconds
            (``time.time()``), for display; ordering uses ``seq``.
        frame (Any): the object the producer pushed, as is (not copied).
    """

    conversation_id: str
    run_id: str
    seq: int
    timestamp: float
    frame: Any


@attrs.frozen
class ChatRunRecord:
    """A snapshot of a run's state; later changes to the run do not alter it.

    Attributes:
        conversation_id (str), run_id (str): which run. ``run_id`` is unique for
            every run, so a restarted conversation is told apart from its last run.
        status (ChatRunStatus): where the run is in its lifecycle.
        started_at (float): Trio-clock seconds (``trio.current_time()``) at start.
        updated_at (float): Trio-clock seconds of the last push, update or end.
        terminated_at (float | None): Trio-clock seconds when the run became
            terminal; ``None`` while it is active. Set once, never changed.
        latest_seq (int): seq of the newest frame, 0 before the first.
        current_tool (str | None): the tool the producer says it is running.
        last_error (str | None): the error the run ended with, or one the
            producer reported.
    """

    conversation_id: str
    run_id: str
    status: ChatRunStatus
    started_at: float
    updated_at: float
    terminated_at: float | None
    latest_seq: int
    current_tool: str | None
    last_error: str | None


@attrs.frozen
class RegistryStats:
    """Counters of a :class:`ChatRunRegistry`, from :meth:`ChatRunRegistry.stats`.

    ``active``, ``retained_terminal``, ``subscribers``, ``queued`` and
    ``buffered_bytes`` describe the registry now; the rest are totals since it
    was opened.
    """

    active: int
    """Runs started and not yet terminal (one per conversation at most); queued
    runs are not counted here but in ``queued``."""
    retained_terminal: int
    """Terminal runs still held for late reconnects (at most the LRU cap)."""
    subscribers: int
    """Live subscriptions still receiving frames from an active run."""
    evicted_ttl: int
    """Terminal runs evicted because their retention (TTL) ran out."""
    evicted_lru: int
    """Terminal runs evicted, oldest first, to keep within ``max_retained_terminal``."""
    lagged_subscribers: int
    """Subscribers dropped because their channel was full (``SubscriberLagged``)."""
    frames_pushed: int
    """Frames accepted by every run's ``push_frame``."""
    queued: int = 0
    """Runs waiting now behind their conversation's running run (``queued``)."""
    evicted_bytes: int = 0
    """Terminal runs evicted, oldest first, to keep within ``max_retained_bytes``."""
    run_end_failures: int = 0
    """Calls of the ``on_run_end`` hook that raised or timed out."""
    buffered_bytes: int | None = None
    """Bytes in the replay buffers of every run held now (active, queued and
    retained terminal), as ``frame_size`` measures them; ``None`` when no byte
    budget is set (nothing is measured then)."""
