"""Server-Sent Events encoding and the resume cursor.

Pure functions, no I/O: they turn records and events into the bytes of an
``text/event-stream`` body (WHATWG HTML, "Server-sent events") and parse the
cursor a client sends back.

The cursor is ``<run_id>:<seq>``: every event frame carries it as its ``id:``
field, so a browser's ``EventSource`` sends the last one it saw as the
``Last-Event-ID`` header when it reconnects, and the server resumes right after
it, in the same run.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from .._records import ChatRunEvent, ChatRunRecord

__all__ = [
    "Cursor",
    "encode_comment",
    "encode_sse",
    "event_to_json",
    "format_cursor",
    "parse_cursor",
    "record_to_json",
    "to_json",
]


@attrs.frozen
class Cursor:
    """Where a client is in a run.

    Attributes:
        run_id (str | None): the run the client was reading; ``None`` means
            "the conversation's current run".
        after (int): the last seq the client has, ``0`` for none.
    """

    run_id: str | None
    after: int


def format_cursor(run_id: str, seq: int) -> str:
    """Return the SSE ``id`` of frame ``seq`` of ``run_id``: ``"<run_id>:<seq>"``."""
    return f"{run_id}:{seq}"


def parse_cursor(value: str) -> Cursor:
    """Parse a ``Last-Event-ID`` value made by :func:`format_cursor`.

    The run id may itself contain ``:``; the seq is what follows the last one.

    Raises:
        ValueError: ``value`` is not ``<run_id>:<non-negative int>``.
    """
    run_id, sep, seq_text = value.strip().rpartition(":")
    if not sep or not run_id or not seq_text.isdigit():
        raise ValueError(f"malformed event id {value!r}; expected '<run_id>:<seq>'")
    return Cursor(run_id=run_id, after=int(seq_text))


def to_json(value: Any) -> str:
    """Compact JSON; values JSON cannot hold are written as their ``str``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def record_to_json(record: ChatRunRecord) -> dict[str, Any]:
    """Return ``record`` as a JSON-ready dict (status as its string value)."""
    data = attrs.asdict(record)
    data["status"] = record.status.value
    return data


def event_to_json(event: ChatRunEvent) -> dict[str, Any]:
    """Return ``event`` as a JSON-ready dict; the frame is passed through as is."""
    return attrs.asdict(event, recurse=False)


def _field_lines(name: str, value: str) -> list[str]:
    # A data value may hold newlines; each line becomes its own field and the
    # client joins them back with "\n". CR and CRLF also end lines in SSE.
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    return [f"{name}: {line}" for line in text.split("\n")]


def encode_sse(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry_ms: int | None = None,
) -> bytes:
    """Encode one SSE message, ending with the blank line that dispatches it.

    Args:
        data: the payload; multi-line values are split into several ``data:``
            fields. ``None`` sends no data (an ``id``/``retry``-only message).
        event: the event type; ``None`` means the default ``message``.
        id: the event id, which becomes the client's ``Last-Event-ID``. Must not
            contain a newline or NUL.
        retry_ms: the reconnection delay for the client, milliseconds.

    Raises:
        ValueError: ``event`` or ``id`` contains a line break or NUL.
    """
    lines: list[str] = []
    for name, field in (("event", event), ("id", id)):
        if field is not None:
            if any(c in field for c in "\r\n\0"):
                raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {field!r}")
            lines.append(f"{name}: {field}")
    if retry_ms is not None:
        lines.append(f"retry: {int(retry_ms)}")
    if data is not None:
        lines.extend(_field_lines("data", data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """Encode an SSE comment line (ignored by clients; used as a heartbeat)."""
    return "".join(f": {line}\n" for line in text.split("\n")).encode("utf-8") + b"\n"
