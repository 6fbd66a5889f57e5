"""Wall-clock times for clients: ISO 8601 UTC strings.

The registry stamps records with the Trio clock (``trio.current_time()``):
monotonic seconds with an arbitrary per-run offset, right for retention and
eviction, meaningless to a client. Event timestamps are Unix seconds. Every
time the server sends (HTTP bodies, SSE and WebSocket messages) goes through
this module and leaves as ISO 8601 in UTC with millisecond precision, e.g.
``"2026-11-30T05:01:02.345Z"`` (RFC 3339's profile of ISO 8601).

A Trio-clock time is converted with one *anchor* per ``trio.run``: the
difference ``time.time() - trio.current_time()`` taken the first time it is
needed, kept in a :class:`trio.lowlevel.RunVar`. Every conversion in a run
uses the same anchor, so the same record always reads the same, and times keep
the Trio clock's order (a wall clock stepped by NTP later does not reorder
them). Under ``trio.testing.MockClock`` the anchor makes the mock's virtual
seconds count from the wall-clock time of the first conversion.
"""

from __future__ import annotations

import time

import trio

__all__ = ["iso_from_trio", "iso_from_unix", "wall_anchor"]

_ANCHOR: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("trio_chatruns_wall_anchor")


def wall_anchor() -> float:
    """Seconds to add to a Trio-clock time to get Unix time, fixed for this ``trio.run``.

    Must be called inside ``trio.run`` (raises ``RuntimeError`` otherwise).
    """
    try:
        return _ANCHOR.get()
    except LookupError:
        anchor = time.time() - trio.current_time()
        _ANCHOR.set(anchor)
        return anchor


def iso_from_unix(seconds: float) -> str:
    """``seconds`` since the Unix epoch as ISO 8601 UTC, e.g. ``"2026-11-30T05:01:02.345Z"``."""
    # This runs for every event sent: the date and time of the last whole
    # second converted are kept (events come many to a second), the rest is
    # time.gmtime + strftime, a third cheaper than datetime.isoformat.
    # Milliseconds are truncated, as isoformat does.
    global _last_second
    whole, millis = divmod(int(seconds * 1000), 1000)
    last = _last_second
    if last[0] == whole:
        return f"{last[1]}.{millis:03d}Z"
    prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    _last_second = (whole, prefix)  # one tuple: a reader sees both or neither
    return f"{prefix}.{millis:03d}Z"


_last_second: tuple[int, str] = (-1 << 63, "")
"""The last whole second :func:`iso_from_unix` converted, and its text."""


def iso_from_trio(seconds: float) -> str:
    """A Trio-clock time (``trio.current_time()`` seconds) as ISO 8601 UTC wall-clock time.

    Converted with this run's :func:`wall_anchor`; must be called inside ``trio.run``.
    """
    return iso_from_unix(seconds + wall_anchor())
