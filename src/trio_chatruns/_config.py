"""Registry configuration and its defaults.

The defaults come from the server this package was extracted from: keep a
finished run 5 minutes for late reconnects, at most 256 finished runs, and the
last 1000 frames of each run.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

__all__ = [
    "MAX_EVENTS_PER_RUN",
    "MAX_RETAINED_TERMINAL",
    "SUBSCRIBER_BUFFER",
    "TERMINAL_RETENTION",
    "RegistryConfig",
]

MAX_EVENTS_PER_RUN: Final = 1000
"""Frames buffered per run for replay (count); older frames are trimmed."""

TERMINAL_RETENTION: Final = 300.0
"""Seconds a terminal run is kept after it ends, for late reconnects."""

MAX_RETAINED_TERMINAL: Final = 256
"""Terminal runs kept at most (count); past that the oldest-ended is evicted."""

SUBSCRIBER_BUFFER: Final = 256
"""Live frames queued per subscriber (count) before it is dropped as lagging."""


def _count(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int, not {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, not {value!r}")

    return check


def _seconds(value: object) -> float:
    """Convert ``terminal_retention`` to float seconds, refusing bad values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"terminal_retention must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(
            f"terminal_retention={value!r} is too large for a float; use math.inf for 'forever'"
        ) from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"terminal_retention must be >= 0 seconds, not {value!r}")
    return seconds


@attrs.frozen
class RegistryConfig:
    """Limits of a :class:`ChatRunRegistry`. Frozen; validated at construction.

    Attributes:
        max_events_per_run (int, >= 1): frames kept per run for replay; the
            oldest are trimmed first. Default :data:`MAX_EVENTS_PER_RUN` (1000).
        terminal_retention (float, seconds, >= 0; an int is converted): how
            long a terminal run is kept after ``terminated_at``; ``0`` evicts it
            as soon as it ends, ``math.inf`` never by time. Default
            :data:`TERMINAL_RETENTION` (300).
        max_retained_terminal (int, >= 0): terminal runs kept at most; past it
            the one with the oldest ``terminated_at`` is evicted. Active runs never
            count. Default :data:`MAX_RETAINED_TERMINAL` (256).
        subscriber_buffer (int, >= 1): capacity of each subscriber's channel for
            live frames (replayed frames do not count). A subscriber that falls
            this far behind is dropped with ``SubscriberLagged``. Default
            :data:`SUBSCRIBER_BUFFER` (256).

    Raises:
        TypeError: a value of the wrong type (``bool`` is not a count).
        ValueError: a value out of range (negative, NaN, zero where a count
            must be at least one).
    """

    max_events_per_run: int = attrs.field(default=MAX_EVENTS_PER_RUN, validator=_count(1))
    terminal_retention: float = attrs.field(default=TERMINAL_RETENTION, converter=_seconds)
    max_retained_terminal: int = attrs.field(default=MAX_RETAINED_TERMINAL, validator=_count(0))
    subscriber_buffer: int = attrs.field(default=SUBSCRIBER_BUFFER, validator=_count(1))
