"""The wire format at its edges (pure functions): SSE comments, cursor and id
errors. Found by mutation testing; see docs/testing.md."""

from __future__ import annotations

import pytest

from trio_chatruns.server.sse import (
    encode_comment,
    encode_sse,
    parse_cursor,
    parse_run_id,
    parse_seq,
)


def test_sse_comments_prefix_every_line_and_end_with_a_blank_line():
    assert encode_comment() == b": \n\n"
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_comment("é") == ": é\n\n".encode()


def test_sse_fields_in_order_and_an_empty_data_line():
    assert encode_sse("") == b"data: \n\n"
    assert (
        encode_sse("d", event="e", id="i", retry_ms=5) == b"event: e\nid: i\nretry: 5\ndata: d\n\n"
    )
    assert encode_sse("a\rb") == b"data: a\ndata: b\n\n"
    assert encode_sse("x", id="RUN-X:1") == b"id: RUN-X:1\ndata: x\n\n"
    for bad in ("a\rb", "a\0b"):
        with pytest.raises(ValueError, match=r"^SSE id must not contain CR, LF or NUL"):
            encode_sse("x", id=bad)
        with pytest.raises(ValueError, match=r"^SSE event must not contain CR, LF or NUL"):
            encode_sse("x", event=bad)


def test_client_errors_name_the_parameter_and_the_value():
    with pytest.raises(ValueError, match=r"^run_id must be 1-128 characters .*, not 'a b'$"):
        parse_run_id("a b")
    with pytest.raises(ValueError, match=r"^after must be a non-negative integer .*, not 'x'$"):
        parse_seq("x")
    with pytest.raises(ValueError, match=r"^malformed Last-Event-ID 'r:x'; expected"):
        parse_cursor("r:x")
    long = "9" * 100
    with pytest.raises(ValueError) as caught:
        parse_seq(long)
    assert str(caught.value).endswith(repr("9" * 40 + "..."))
    assert parse_cursor(" r:7 ").after == 7  # surrounding whitespace is not part of it
