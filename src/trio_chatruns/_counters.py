"""The registry's running totals, shared by the registry and its runs."""

from __future__ import annotations

import attrs

__all__ = ["Counters"]


@attrs.define
class Counters:
    """Mutable totals behind :class:`~trio_chatruns.RegistryStats`.

    One instance per registry, held by every run's state so a push or a lag
    can count itself without a lookup. Plain integers: every writer is
    synchronous code inside the registry's critical section.
    """

    subscribers: int = 0
    evicted_ttl: int = 0
    evicted_lru: int = 0
    lagged_subscribers: int = 0
    frames_pushed: int = 0
    queued: int = 0
    evicted_bytes: int = 0
    run_end_failures: int = 0
    # Bytes in every held run's replay buffer; kept only while a budget is set.
    buffered_bytes: int = 0
