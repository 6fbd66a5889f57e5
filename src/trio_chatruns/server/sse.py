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
import math
import re
from typing import Any

import attrs
from starlette.responses import JSONResponse as _StarletteJSONResponse

from .. import ChatRunEvent, ChatRunRecord
from .config import CONVERSATION_ID_PATTERN
from .wallclock import iso_from_trio, iso_from_unix

__all__ = [
    "MAX_SEQ_DIGITS",
    "Cursor",
    "JSONResponse",
    "encode_comment",
    "encode_sse",
    "event_to_json",
    "format_cursor",
    "parse_cursor",
    "parse_run_id",
    "parse_seq",
    "record_to_json",
    "to_json",
]

MAX_SEQ_DIGITS = 18
"""A seq in a cursor is 1 to 18 ASCII digits: always an exact, cheap ``int``."""

_SEQ = re.compile(r"[0-9]{1,%d}" % MAX_SEQ_DIGITS)  # noqa: UP031 - a regex, not text
_RUN_ID = CONVERSATION_ID_PATTERN  # run ids follow the same safe-token rule


def _show(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message: ASCII only, at most ``limit`` characters."""
    return ascii(text if len(text) <= limit else text[:limit] + "...")


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


def parse_seq(text: str, name: str = "after") -> int:
    """Parse a seq sent by a client: 1 to :data:`MAX_SEQ_DIGITS` ASCII digits.

    ``str.isdigit`` is not enough (it accepts ``"²"``, which ``int`` refuses)
    and ``int`` of thousands of digits is slow and then refused by Python's
    digit limit, so this is the only way a cursor's number is read.

    Raises:
        ValueError: anything else, with a message fit for a client.
    """
    if _SEQ.fullmatch(text) is None:
        raise ValueError(
            f"{name} must be a non-negative integer of at most {MAX_SEQ_DIGITS} "
            f"digits (0-9), not {_show(text)}"
        )
    return int(text)


def parse_run_id(text: str, name: str = "run_id") -> str:
    """Check a run id sent by a client: 1 to 128 characters of ``[A-Za-z0-9._:-]``.

    Raises:
        ValueError: anything else, with a message fit for a client.
    """
    if _RUN_ID.fullmatch(text) is None:
        raise ValueError(f"{name} must be 1-128 characters of [A-Za-z0-9._:-], not {_show(text)}")
    return text


def parse_cursor(value: str) -> Cursor:
    """Parse a ``Last-Event-ID`` value made by :func:`format_cursor`.

    The run id may itself contain ``:``; the seq is what follows the last one.

    Raises:
        ValueError: ``value`` is not ``<run_id>:<seq>`` (run id as in
            :func:`parse_run_id`, seq as in :func:`parse_seq`).
    """
    run_id, sep, seq_text = value.strip().rpartition(":")
    if not sep or _RUN_ID.fullmatch(run_id) is None or _SEQ.fullmatch(seq_text) is None:
        raise ValueError(
            f"malformed Last-Event-ID {_show(value)}; expected '<run_id>:<seq>' "
            f"with a seq of at most {MAX_SEQ_DIGITS} digits"
        )
    return Cursor(run_id=run_id, after=int(seq_text))


_SEPARATORS = (",", ":")
_MAX_DEPTH = 100
# Built once: json.dumps with these options builds a JSONEncoder per call,
# which is half the cost of encoding a small frame; the output is the same.
_ENCODER = json.JSONEncoder(separators=_SEPARATORS, ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=_SEPARATORS, ensure_ascii=True, allow_nan=False)


def to_json(value: Any) -> str:
    """Encode ``value`` as strict, compact JSON: the one encoder of every answer.

    Used for every HTTP body, SSE ``data:`` and WebSocket message, so a frame
    reads the same on all of them. The output is always valid JSON (RFC 8259,
    no ``NaN``) and always encodable as UTF-8. What JSON cannot hold is
    replaced rather than refused:

    - ``NaN`` and infinities become ``null``;
    - any other value (a ``datetime``, a ``Decimal``, an arbitrary object)
      becomes its ``str()`` (``"<unprintable T>"`` if that raises);
      non-string keys become strings;
    - a circular reference becomes ``"<circular reference>"``, nesting deeper
      than 100 levels ``"<nested too deep>"``;
    - a string with a lone surrogate is written with ``\\uXXXX`` escapes.

    Plain JSON-ready values (what the included models push) take the fast path
    and are written exactly as :func:`json.dumps` would.
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        value = _json_safe(value, 0, set())
        text = _ENCODER.encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it, the rest too
        text = _ASCII_ENCODER.encode(value)
    return text


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, float) and not math.isfinite(key):
        return "null"
    if isinstance(key, (int, float)):
        return _safe_str(_json_safe(key, 0, set()))
    return _safe_str(key)


def _json_safe(value: Any, depth: int, path: set[int]) -> Any:
    """A copy of ``value`` that :func:`json.dumps` accepts with ``allow_nan=False``."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        try:
            int.__repr__(value)  # past Python's digit limit, json.dumps would raise
        except ValueError:
            return f"<int of {value.bit_length()} bits>"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in path:
            return "<circular reference>"
        if depth >= _MAX_DEPTH:
            return "<nested too deep>"
        path.add(id(value))
        try:
            if isinstance(value, dict):
                return {_json_key(k): _json_safe(v, depth + 1, path) for k, v in value.items()}
            return [_json_safe(v, depth + 1, path) for v in value]
        finally:
            path.discard(id(value))
    return _safe_str(value)


class JSONResponse(_StarletteJSONResponse):
    """Starlette's ``JSONResponse`` written with :func:`to_json`: never a 500."""

    def render(self, content: Any) -> bytes:
        return to_json(content).encode("utf-8")


def record_to_json(record: ChatRunRecord) -> dict[str, Any]:
    """Return ``record`` as a JSON-ready dict (status as its string value).

    ``started_at``, ``updated_at`` and ``terminated_at`` (Trio-clock seconds
    in the registry) become ISO 8601 UTC wall-clock strings (see
    :mod:`.wallclock`); ``terminated_at`` stays ``None`` while the run is
    active. Must be called inside ``trio.run``.
    """
    data = attrs.asdict(record)
    data["status"] = record.status.value
    for name in ("started_at", "updated_at", "terminated_at"):
        if data.get(name) is not None:
            data[name] = iso_from_trio(data[name])
    return data


def event_to_json(event: ChatRunEvent) -> dict[str, Any]:
    """Return ``event`` as a JSON-ready dict; the frame is passed through as is.

    ``timestamp`` (Unix seconds in the registry) becomes an ISO 8601 UTC string.
    """
    # Spelled out rather than attrs.asdict: this runs once per event on the hot path.
    return {
        "conversation_id": event.conversation_id,
        "run_id": event.run_id,
        "seq": event.seq,
        "timestamp": iso_from_unix(event.timestamp),
        "frame": event.frame,
    }


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
