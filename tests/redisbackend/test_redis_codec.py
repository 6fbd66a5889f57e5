"""The Redis backend's codec: frames encode to the same compact JSON as
``json.dumps`` (through the cached C encoder), bad frames raise ``TypeError``
and leave the encoder usable, and stream entries decode whether the client
returns ``bytes`` or ``str``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("coredis")

from trio_chatruns.redis._codec import decode_entries, encode_frame

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_encode_frame_is_compact_json(frame: Any) -> None:
    assert encode_frame(frame) == json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(encode_frame(frame)) == frame


@pytest.mark.parametrize(
    "frame", [math.nan, {"a": math.inf}, [-math.inf], {1j: 1}, object(), {"x": {1, 2}}]
)
def test_encode_frame_rejects_what_json_cannot_carry(frame: Any) -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        encode_frame(frame)


def test_encoder_stays_usable_after_a_circular_frame() -> None:
    loop: list[Any] = []
    loop.append(loop)
    inner = {"k": loop}
    with pytest.raises(TypeError, match="Circular reference"):
        encode_frame(inner)
    # The circular check's memory was cleared: the same objects, no longer
    # circular, encode again.
    loop.clear()
    assert encode_frame(inner) == '{"k":[]}'
    assert encode_frame([inner, inner]) == '[{"k":[]},{"k":[]}]'


class _Entry:
    def __init__(self, identifier: Any, field_values: dict[Any, Any]) -> None:
        self.identifier = identifier
        self.field_values = field_values


@pytest.mark.parametrize("as_bytes", [True, False])
def test_decode_entries_bytes_or_str(as_bytes: bool) -> None:
    def b(value: str) -> Any:
        return value.encode() if as_bytes else value

    entries = [
        _Entry(b("1-0"), {b("t"): b("1764489600.250000"), b("f"): b('{"text":"é"}')}),
        _Entry(b("2-0"), {b("t"): b("1764489600.5"), b("f"): b("[1,2]")}),
        _Entry(b("2-1"), {b("end"): b("completed")}),
    ]
    events, ended = decode_entries("c", "r", entries)
    assert ended
    assert [(e.seq, e.timestamp, e.frame) for e in events] == [
        (1, 1764489600.25, {"text": "é"}),
        (2, 1764489600.5, [1, 2]),
    ]
    events, ended = decode_entries("c", "r", entries[:2])
    assert not ended and [e.seq for e in events] == [1, 2]
