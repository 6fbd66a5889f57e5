"""Registry configuration and its defaults.

The defaults come from the server this package was extracted from: keep a
finished run 5 minutes for late reconnects, at most 256 finished runs, and the
last 1000 frames of each run. Added in 0.2: at most 8 queued runs per
conversation, 30 seconds for each run-end hook call, and byte budgets that are
off unless set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import attrs

__all__ = [
    "MAX_EVENTS_PER_RUN",
    "MAX_QUEUED_PER_CONVERSATION",
    "MAX_RETAINED_TERMINAL",
    "RUN_END_TIMEOUT",
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

MAX_QUEUED_PER_CONVERSATION: Final = 8
"""Runs waiting at most per conversation (count) under the ``enqueue`` policy."""

RUN_END_TIMEOUT: Final = 30.0
"""Seconds each call of the run-end hook may take before it is cancelled."""


def _count(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int, not {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, not {value!r}")

    return check


def _optional_count(
    instance: object, attribute: attrs.Attribute[int | None], value: object
) -> None:
    if value is not None:
        _count(0)(instance, attribute, value)


def _to_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(
            f"{name}={value!r} is too large for a float; use math.inf for 'forever'"
        ) from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return seconds


def _seconds(value: object) -> float:
    """Convert ``terminal_retention`` to float seconds, refusing bad values."""
    return _to_seconds("terminal_retention", value)


def _timeout(value: object) -> float:
    """Convert ``run_end_timeout`` to float seconds > 0, refusing bad values."""
    seconds = _to_seconds("run_end_timeout", value)
    if seconds == 0:
        raise ValueError("run_end_timeout must be > 0 seconds, not 0")
    return seconds


def _callable_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be a callable or None, not {value!r}")


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
        max_queued_per_conversation (int, >= 0): runs that may wait per
            conversation under ``if_active="enqueue"``; past it ``try_start``
            raises :class:`~trio_chatruns.RunQueueFull`. Default
            :data:`MAX_QUEUED_PER_CONVERSATION` (8).
        run_end_timeout (float, seconds, > 0; ``math.inf`` for no limit): each
            call of the ``on_run_end`` hook is cancelled after this long and
            counted as a failure. Default :data:`RUN_END_TIMEOUT` (30).
        max_bytes_per_run (int bytes >= 0, or None): the replay buffer also
            drops its oldest frames while they total more than this; the
            newest frame is always kept. ``None`` (default): no byte limit.
        max_retained_bytes (int bytes >= 0, or None): while the retained
            terminal runs' buffers total more than this, the oldest-ended one
            is evicted (``evicted_bytes``). ``None`` (default): no byte limit.
        frame_size (callable ``(frame) -> int`` bytes, or None): how a frame is
            measured for the budgets; ``None`` uses
            :func:`~trio_chatruns.default_frame_size`. Frames are measured only
            when a budget is set.

    Raises:
        TypeError: a value of the wrong type (``bool`` is not a count).
        ValueError: a value out of range (negative, NaN, zero where a count
            must be at least one).
    """

    max_events_per_run: int = attrs.field(default=MAX_EVENTS_PER_RUN, validator=_count(1))
    terminal_retention: float = attrs.field(default=TERMINAL_RETENTION, converter=_seconds)
    max_retained_terminal: int = attrs.field(default=MAX_RETAINED_TERMINAL, validator=_count(0))
    subscriber_buffer: int = attrs.field(default=SUBSCRIBER_BUFFER, validator=_count(1))
    max_queued_per_conversation: int = attrs.field(
        default=MAX_QUEUED_PER_CONVERSATION, validator=_count(0)
    )
    run_end_timeout: float = attrs.field(default=RUN_END_TIMEOUT, converter=_timeout)
    max_bytes_per_run: int | None = attrs.field(default=None, validator=_optional_count)
    max_retained_bytes: int | None = attrs.field(default=None, validator=_optional_count)
    frame_size: Callable[[Any], int] | None = attrs.field(default=None, validator=_callable_or_none)

    @property
    def measures_bytes(self) -> bool:
        """Whether frames are measured: a byte budget is set."""
        return self.max_bytes_per_run is not None or self.max_retained_bytes is not None
