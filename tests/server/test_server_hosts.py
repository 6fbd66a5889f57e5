"""Units: Host and Origin parsing (``hosts``) and the strict JSON reader."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_chatruns.server import ServerSettings
from trio_chatruns.server.hosts import (
    HostPattern,
    is_loopback_host,
    normalize_origin,
    parse_allowed_host,
    parse_host,
)
from trio_chatruns.server.strict_json import loads_strict


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:8000", ("localhost", 8000)),
        ("LocalHost", ("localhost", None)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::1]", ("::1", None)),
        ("xn--caf-dma.example:443", ("xn--caf-dma.example", 443)),
    ],
)
def test_parse_host(value, expected):
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", ":80", "a b", "[::1", "[zz]:1", "[::1]x", "::1", "x:", "x:99999", "x:+1", "u@h", "é"],
)
def test_parse_host_refuses(value):
    with pytest.raises(ValueError, match="malformed"):
        parse_host(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://LOCALHOST:80", "http://localhost"),
        ("https://chat.example:443", "https://chat.example"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("HTTPS://A.example:8443", "https://a.example:8443"),
    ],
)
def test_normalize_origin(value, expected):
    assert normalize_origin(value) == expected


@pytest.mark.parametrize(
    "value",
    ["null", "", "file://", "ftp://x", "http://", "http://x/", "http://x?y", "http://u@x", "x"],
)
def test_normalize_origin_refuses(value):
    with pytest.raises(ValueError, match="origin"):
        normalize_origin(value)


def test_allowed_host_patterns():
    assert parse_allowed_host("*") == HostPattern("*")
    assert parse_allowed_host("Chat.Example") == HostPattern("chat.example")
    assert parse_allowed_host("[::FFFF:127.0.0.1]:9") == HostPattern("127.0.0.1", 9)
    assert HostPattern("a", 1).matches("a", 1)
    assert not HostPattern("a", 1).matches("a", 2)
    assert HostPattern("a").matches("a", 2)
    with pytest.raises(ValueError, match="allowed host"):
        parse_allowed_host("a/b")
    with pytest.raises(TypeError):
        ServerSettings(allowed_hosts="chat.example")  # a string is not a list of them


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("chat.example", False),
    ],
)
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


# -- strict JSON ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # Strings of Unicode scalar values (no surrogates): what UTF-8 can carry.
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_strict_json_reads_what_json_writes(value):
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert loads_strict(body) == value


@given(st.text(st.characters(exclude_categories=["Cs"])), st.integers(), st.integers())
def test_strict_json_refuses_any_duplicate_key(key, first, second):
    body = (
        b'{"a": [{'
        + json.dumps(key).encode()
        + f": {first}, ".encode()
        + json.dumps(key).encode()
        + f": {second}}}]}}".encode()
    )
    with pytest.raises(ValueError, match="duplicate key"):
        loads_strict(body)
