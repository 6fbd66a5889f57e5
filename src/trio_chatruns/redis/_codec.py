"""Encoding between Python objects and what Redis stores: frames as compact
JSON, stream entries back into :class:`~trio_chatruns.ChatRunEvent`, run
hashes back into :class:`~trio_chatruns.ChatRunRecord`.

Times in Redis are the server's ``TIME`` in integer milliseconds; records
carry them as Unix seconds (``float``), the one clock every worker shares.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._records import ChatRunEvent, ChatRunRecord
from .._status import ChatRunStatus

__all__ = [
    "decode_entries",
    "decode_record",
    "encode_frame",
    "entry_seq",
    "text",
]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# ``JSONEncoder.encode`` builds a new C encoder on every call (about 3/4 of
# its cost for a small frame); this one is built once with the same settings
# and called the way ``JSONEncoder.iterencode`` calls it. ``json.encoder``
# exposes it as ``c_make_encoder`` (``None`` without the C accelerator: then
# the public method is used). Its markers dict (circular-reference check) is
# empty between calls, and cleared after a failed one.
_markers: dict[int, Any] = {}
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encoder: Any = (
    None
    if _make_encoder is None
    else _make_encoder(
        _markers,
        _encoder.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
)


def encode_frame(frame: Any) -> str:
    """A frame as compact JSON (``separators=(",", ":")``, UTF-8 text kept
    as is, no NaN or infinities).

    Raises:
        TypeError: ``frame`` is not JSON-serialisable (NaN and infinities
            included, which JSON cannot carry); the Redis backend stores
            frames as JSON.
    """
    try:
        if _c_encoder is None:  # pragma: no cover - CPython has the accelerator
            return _encoder.encode(frame)
        return "".join(_c_encoder(frame, 0))
    except (TypeError, ValueError, RecursionError) as exc:
        _markers.clear()
        raise TypeError(
            f"frames of the Redis backend must be JSON-serialisable; {frame!r} is not ({exc})"
        ) from None


def text(value: object) -> str:
    """A Redis reply value (``bytes`` or ``str``) as ``str``."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def entry_seq(entry_id: object) -> tuple[int, bool]:
    """``(seq, is_end_marker)`` of a stream entry id ``<seq>-0`` / ``<seq>-1``."""
    seq, _, kind = text(entry_id).partition("-")
    return int(seq), kind != "0"


def decode_entries(
    conversation_id: str, run_id: str, entries: Iterable[Any]
) -> tuple[list[ChatRunEvent], bool]:
    """Stream entries (coredis ``StreamEntry``) as events, and whether the end
    marker was among them (it is always the last entry of a run).

    Replies come as ``bytes`` (the client's default) or ``str``
    (``decode_responses=True``); ``int``, ``float`` and ``json.loads`` take
    either, so neither is decoded first.
    """
    events: list[ChatRunEvent] = []
    append = events.append
    loads = json.loads
    for entry in entries:
        identifier = entry.identifier
        if isinstance(identifier, bytes):
            identifier = identifier.decode()
        seq, _, kind = identifier.partition("-")
        if kind != "0":
            return events, True
        fields: Mapping[Any, Any] = entry.field_values
        payload = fields.get(b"f")
        if payload is None:
            payload, timestamp = fields["f"], fields["t"]
        else:
            timestamp = fields[b"t"]
        append(ChatRunEvent(conversation_id, run_id, int(seq), float(timestamp), loads(payload)))
    return events, False


def _seconds(value: str | None) -> float | None:
    return None if value is None else int(value) / 1000.0


def decode_record(conversation_id: str, flat: Sequence[Any]) -> ChatRunRecord:
    """A run hash (a flat ``field, value, ...`` list) as a record."""
    fields = {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    started_at = _seconds(fields["started_at"])
    assert started_at is not None
    updated_at = _seconds(fields.get("updated_at")) or started_at
    return ChatRunRecord(
        conversation_id=conversation_id,
        run_id=fields["run_id"],
        status=ChatRunStatus(fields["status"]),
        started_at=started_at,
        updated_at=updated_at,
        terminated_at=_seconds(fields.get("terminated_at")),
        latest_seq=int(fields.get("latest_seq", "0")),
        current_tool=fields.get("current_tool"),
        last_error=fields.get("last_error"),
    )


def owner_of(flat: Sequence[Any]) -> str | None:
    """The ``owner`` field of a flat run hash, if any."""
    for i in range(0, len(flat) - 1, 2):
        if text(flat[i]) == "owner":
            return text(flat[i + 1])
    return None
