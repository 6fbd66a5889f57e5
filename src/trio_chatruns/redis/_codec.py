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


def encode_frame(frame: Any) -> str:
    """A frame as compact JSON.

    Raises:
        TypeError: ``frame`` is not JSON-serialisable (NaN and infinities
            included, which JSON cannot carry); the Redis backend stores
            frames as JSON.
    """
    try:
        return _encoder.encode(frame)
    except (TypeError, ValueError) as exc:
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
    marker was among them (it is always the last entry of a run)."""
    events: list[ChatRunEvent] = []
    ended = False
    for entry in entries:
        seq, is_end = entry_seq(entry.identifier)
        if is_end:
            ended = True
            break
        fields: Mapping[Any, Any] = entry.field_values
        timestamp = fields.get(b"t", fields.get("t"))
        payload = fields.get(b"f", fields.get("f"))
        events.append(
            ChatRunEvent(conversation_id, run_id, seq, float(text(timestamp)), json.loads(payload))
        )
    return events, ended


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
