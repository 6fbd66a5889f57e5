"""The wire encoding of a stream's events: event -> JSON -> SSE bytes or WebSocket text.

Done once per event, however many streams send it: a run followed by a
thousand clients encodes each of its frames once, not a thousand times. The
last events encoded are remembered by identity (a ``ChatRunEvent`` is frozen,
and the cache holds the event itself, so an identity is never reused while
its entry lives); the cache is bounded in entries and in bytes, so a burst of
large frames cannot grow it.

The ``end`` message of a run's streams is encoded once too: they end
together, with the same final record (:func:`sse_end` remembers the last).

The encodings are exactly those of :mod:`.sse` (``to_json`` of
``event_to_json``, then an SSE message with ``id: <run_id>:<seq>``): a frame
reads the same in ``/events``, on SSE and on WebSocket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from .sse import encode_sse, event_to_json, format_cursor, record_to_json, to_json

if TYPE_CHECKING:
    from .. import ChatRunEvent, ChatRunRecord

__all__ = ["EncodingCache", "sse_end", "sse_event", "ws_event"]

T = TypeVar("T", bytes, str)


class EncodingCache(Generic[T]):
    """``encode(event)`` for the most recent events, remembered by identity.

    Two generations of at most ``max_entries`` entries and ``max_bytes``
    encoded bytes each: when the newer one fills it becomes the older one,
    and the older one is dropped. Lookup and insertion are O(1); memory is
    bounded by ``2 * max_bytes`` of encodings plus the events they belong to.
    Synchronous, no checkpoint.
    """

    __slots__ = ("_encode", "_max_bytes", "_max_entries", "_new", "_new_bytes", "_old")

    def __init__(
        self, encode: Callable[[ChatRunEvent], T], max_entries: int = 1024, max_bytes: int = 1 << 20
    ) -> None:
        self._encode: Callable[[ChatRunEvent], T] = encode
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._new: dict[int, tuple[ChatRunEvent, T]] = {}
        self._old: dict[int, tuple[ChatRunEvent, T]] = {}
        self._new_bytes = 0

    def __call__(self, event: ChatRunEvent) -> T:
        key = id(event)
        hit = self._new.get(key)
        if hit is not None and hit[0] is event:
            return hit[1]
        hit = self._old.get(key)
        value = hit[1] if hit is not None and hit[0] is event else self._encode(event)
        if len(self._new) >= self._max_entries or self._new_bytes >= self._max_bytes:
            self._old, self._new, self._new_bytes = self._new, {}, 0
        self._new[key] = (event, value)
        self._new_bytes += len(value)
        return value

    def clear(self) -> None:
        """Forget every encoding (tests; memory probes)."""
        self._new, self._old, self._new_bytes = {}, {}, 0


def _sse_event(event: ChatRunEvent) -> bytes:
    # to_json never writes a raw CR or LF (JSON escapes control characters),
    # so the data is one line and this is what encode_sse(data, id=...) gives.
    data = to_json(event_to_json(event))
    return f"id: {event.run_id}:{event.seq}\ndata: {data}\n\n".encode()


def _ws_event(event: ChatRunEvent) -> str:
    return to_json({"type": "event", **event_to_json(event)})


sse_event: EncodingCache[bytes] = EncodingCache(_sse_event)
"""One frame as an SSE message: ``id: <run_id>:<seq>``, ``data: <event JSON>``."""
ws_event: EncodingCache[str] = EncodingCache(_ws_event)
"""One frame as a WebSocket text message: ``{"type": "event", ...event}``."""


_last_end: tuple[tuple[ChatRunRecord | None, str], bytes] | None = None


def sse_end(record: ChatRunRecord | None, reason: str) -> bytes:
    """The SSE ``end`` message: ``event: end``, ``id: <run_id>:<latest_seq>``
    (none without a record), data the final record with ``reason``.

    The last one is remembered, by value (a record is frozen): the thousand
    streams of a run that ends send the same message, encoded once. Must be
    called inside ``trio.run`` (the record's times are converted to wall-clock).
    """
    global _last_end
    key = (record, reason)
    last = _last_end
    if last is not None and last[0] == key:
        return last[1]
    data = {"reason": reason} if record is None else {**record_to_json(record), "reason": reason}
    event_id = None if record is None else format_cursor(record.run_id, record.latest_seq)
    message = encode_sse(to_json(data), event="end", id=event_id)
    _last_end = (key, message)  # one tuple: a reader sees both or neither
    return message
