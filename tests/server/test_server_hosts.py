"""Units: Host and Origin parsing (``hosts``) and the strict JSON reader."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_chatruns.server import ServerSettings
from trio_chatruns.server.cross_site import CrossSiteGuard
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
    with pytest.raises(TypeError, match=r"^expected a sequence of strings, not 'chat\.example'$"):
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


# -- the Host check on addresses a test cannot bind (ASGI scopes made by hand) -----


async def guard_status(bound, local, host, origin=None):
    """The status ``CrossSiteGuard`` answers a GET arriving on socket address ``local``."""
    statuses = []

    async def app(scope, receive, send):
        statuses.append(200)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/chat/runs",
        "scheme": "http",
        "server": local,
        "headers": headers,
        "query_string": b"",
    }
    await CrossSiteGuard(app, bound_host=bound)(scope, receive, send)
    return statuses[0]


@pytest.mark.parametrize(
    ("bound", "local", "host", "status"),
    [
        # Bound to every interface: the address a request arrived on is a name for it.
        ("0.0.0.0", ("192.168.1.5", 8000), "192.168.1.5:8000", 200),
        ("0.0.0.0", ("192.168.1.5", 8000), "localhost:8000", 421),
        ("0.0.0.0", ("127.0.0.1", 8000), "localhost:8000", 200),
        ("::", ("::ffff:192.168.1.5", 8000), "192.168.1.5:8000", 200),
        ("::", ("2001:db8::5", 8000), "[2001:db8::5]:8000", 200),
        ("0.0.0.0", ("192.168.1.5", 8000), "evil.example:8000", 421),
        ("0.0.0.0", ("192.168.1.5", 8000), "192.168.1.5:8001", 421),
        # Bound by name: that name is accepted.
        ("chat.lan", ("10.0.0.2", 8000), "chat.lan:8000", 200),
        ("chat.lan", ("10.0.0.2", 8000), "other.lan:8000", 421),
        # No socket address (a Unix socket): the bound name, any port.
        ("127.0.0.1", None, "localhost", 200),
        ("127.0.0.1", None, "evil.example", 421),
    ],
)
async def test_host_check_by_arrival_address(bound, local, host, status):
    assert await guard_status(bound, local, host) == status


async def test_a_host_without_port_gets_the_origin_of_the_arrival_port():
    local = ("127.0.0.1", 8000)
    assert await guard_status("127.0.0.1", local, "127.0.0.1", "http://127.0.0.1:8000") == 200
    assert await guard_status("127.0.0.1", local, "127.0.0.1", "http://127.0.0.1") == 403
