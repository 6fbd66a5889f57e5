"""The cross-site checks against a real server: Host (421/400), Origin (403),
Content-Type (415), strict request JSON (400) and the security headers.

Every refused request must leave the registry as it was; every check must let
ordinary clients (no ``Origin``, the right ``Host``) through.
"""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, wrap_client_stream

from trio_chatruns.server import ScriptedModel
from trio_chatruns.server.runner import only_leaf
from trio_chatruns.server.security_headers import CONTENT_SECURITY_POLICY

SLOW = ScriptedModel(tokens_per_second=5.0, reply_tokens=200, pause_tokens=0)
JSON = {"content-type": "application/json"}


def host_port(running):
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def snapshot(running):
    return [(r.conversation_id, r.run_id, r.status) for r in running.server.registry.list()]


async def ws_handshake(running, path, *, host=None, headers=()):
    """Open a WebSocket on ``path``; return ``("accepted", first message)`` or
    ``("rejected", status, body)``."""
    address, port = host_port(running)
    try:
        async with (
            await trio.open_tcp_stream(address, port) as stream,
            trio.open_nursery() as nursery,
        ):
            ws = await wrap_client_stream(
                nursery, stream, host or f"{address}:{port}", path, extra_headers=list(headers)
            )
            try:
                with trio.fail_after(5):
                    message = await ws.get_message()
            except ConnectionClosed:
                message = None
            await ws.aclose()
            nursery.cancel_scope.cancel()
            return ("accepted", message)
    except BaseException as exc:  # trio-websocket raises it from its reader task, in a group
        rejected = only_leaf(exc, ConnectionRejected)
        if rejected is None:
            raise
        assert isinstance(rejected, ConnectionRejected)
        return ("rejected", rejected.status_code, rejected.body)


@pytest.fixture
async def running(start_server):
    running = await start_server(model=SLOW)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/victim", json={"prompt": "p"})).raise_for_status()
    return running


@pytest.fixture
async def http(running):
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        yield client


# -- Content-Type: 415 ---------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "application/jsonp",
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(running, http, content_type):
    before = snapshot(running)
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"prompt": "spend the operator\'s money"}'
    response = await http.post("/v1/chat/runs/new", content=body, headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    interrupt = await http.post("/v1/chat/runs/victim/interrupt", content=b"x", headers=headers)
    assert interrupt.status_code == 415
    assert snapshot(running) == before


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON", "application/json; charset=utf-8"]
)
async def test_json_bodies_pass(running, http, content_type):
    body = b'{"prompt": "p"}'
    response = await http.post(
        "/v1/chat/runs/ok", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 202


async def test_a_post_without_a_body_needs_no_content_type(running, http):
    response = await http.post("/v1/chat/runs/victim/interrupt")
    assert response.status_code == 200


# -- Origin: 403 -----------------------------------------------------------------

FOREIGN = ["http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1", "null", "garbage"]


@pytest.mark.parametrize("origin", FOREIGN)
async def test_a_foreign_origin_is_refused_on_every_route(running, http, origin):
    before = snapshot(running)
    headers = {"origin": origin}
    requests = [
        http.post("/v1/chat/runs/new", json={"prompt": "p"}, headers=headers),
        http.post("/v1/chat/runs/victim/interrupt", headers=headers),
        http.get("/v1/chat/runs", headers=headers),
        http.get("/v1/chat/runs/victim", headers=headers),
        http.get("/v1/chat/runs/victim/events", headers=headers),
        http.get("/v1/chat/runs/victim/stream", headers=headers),
        http.delete("/v1/chat/runs/victim", headers=headers),
    ]
    for request in requests:
        response = await request
        assert response.status_code == 403, response.request.url
        assert "cross-origin request refused" in response.json()["error"]
    assert snapshot(running) == before
    assert running.server.stats().streams_opened == 0


@pytest.mark.parametrize("origin", FOREIGN)
async def test_a_foreign_origin_cannot_open_a_websocket(running, origin):
    answer = await ws_handshake(running, "/v1/chat/runs/victim/ws", headers=[("Origin", origin)])
    assert answer[:2] == ("rejected", 403)
    assert b"cross-origin request refused" in answer[2]
    assert running.server.stats().streams_opened == 0


async def test_the_own_origin_and_no_origin_pass(running, http):
    address, port = host_port(running)
    own = f"http://{address}:{port}"
    response = await http.post("/v1/chat/runs/mine", json={"prompt": "p"}, headers={"origin": own})
    assert response.status_code == 202
    # The page opened as http://localhost:PORT sends that Host and that Origin.
    response = await http.get(
        "/v1/chat/runs/mine",
        headers={"origin": f"http://localhost:{port}", "host": f"localhost:{port}"},
    )
    assert response.status_code == 200
    assert (await http.post("/v1/chat/runs/victim/interrupt")).status_code == 200
    accepted = await ws_handshake(running, "/v1/chat/runs/mine/ws", headers=[("Origin", own)])
    assert accepted[0] == "accepted"
    assert '"type":"event"' in accepted[1]


async def test_allow_origin_admits_that_origin_with_cors(start_server):
    running = await start_server(model=SLOW, allowed_origins=["HTTP://LocalHost:3000"])
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        headers = {"origin": "http://localhost:3000"}
        preflight = await http.options(
            "/v1/chat/runs/dev",
            headers={
                **headers,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        response = await http.post("/v1/chat/runs/dev", json={"prompt": "p"}, headers=headers)
        assert response.status_code == 202
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = await http.post(
            "/v1/chat/runs/x", json={"prompt": "p"}, headers={"origin": "http://localhost:3001"}
        )
        assert other.status_code == 403
    accepted = await ws_handshake(
        running, "/v1/chat/runs/dev/ws", headers=[("Origin", "http://localhost:3000")]
    )
    assert accepted[0] == "accepted"


# -- Host: 421 and 400 --------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "evil.example",
        "127.0.0.1.nip.io:{port}",
        "127.0.0.1:1",
        "[::2]:{port}",
    ],
)
async def test_a_host_the_server_does_not_answer_for_is_421(running, http, host):
    before = snapshot(running)
    port = host_port(running)[1]
    headers = {"host": host.format(port=port)}
    for request in [
        http.get("/", headers=headers),
        http.get("/v1/chat/runs", headers=headers),
        http.post("/v1/chat/runs/new", json={"prompt": "p"}, headers=headers),
        http.post("/v1/chat/runs/victim/interrupt", headers=headers),
    ]:
        response = await request
        assert response.status_code == 421
        assert "--allowed-host" in response.json()["error"]
    answer = await ws_handshake(running, "/v1/chat/runs/victim/ws", host=host.format(port=port))
    assert answer[:2] == ("rejected", 421)
    assert snapshot(running) == before


@pytest.mark.parametrize("host", ["", "a b", "[::1", "x:99999", "x:port", "user@127.0.0.1"])
async def test_a_malformed_host_is_400(running, http, host):
    response = await http.get("/v1/chat/runs", headers={"host": host})
    assert response.status_code == 400


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
async def test_loopback_names_with_the_port_pass(running, http, name):
    port = host_port(running)[1]
    response = await http.get("/v1/chat/runs", headers={"host": f"{name}:{port}"})
    assert response.status_code == 200
    # A Host without its port (some clients leave it out) names the same server.
    assert (await http.get("/v1/chat/runs", headers={"host": name})).status_code == 200


async def test_allowed_host_adds_names(start_server):
    running = await start_server(allowed_hosts=["chat.example", "other.example:9"])
    port = host_port(running)[1]
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:

        async def status(host):
            return (await http.get("/v1/chat/runs", headers={"host": host})).status_code

        assert await status(f"chat.example:{port}") == 200
        assert await status("chat.example") == 200
        assert await status("other.example:9") == 200
        assert await status(f"other.example:{port}") == 421
        assert await status(f"evil.example:{port}") == 421
        # The Origin of a page served under an allowed name is that server's own.
        response = await http.post(
            "/v1/chat/runs/n",
            json={"prompt": "p"},
            headers={"host": f"chat.example:{port}", "origin": f"http://chat.example:{port}"},
        )
        assert response.status_code == 202


async def test_allowed_host_star_turns_the_host_check_off(start_server):
    running = await start_server(allowed_hosts=["*"])
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        response = await http.get("/v1/chat/runs", headers={"host": "anything.example:1"})
        assert response.status_code == 200


# -- strict request JSON: 400 -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"prompt": NaN}', "NaN is not allowed"),
        (b'{"prompt": "p", "n": Infinity}', "Infinity is not allowed"),
        (b'{"prompt": "p", "n": -Infinity}', "-Infinity is not allowed"),
        (b'{"prompt": "p", "n": 1e999}', "too large"),
        (b'{"prompt": "safe", "prompt": "other"}', "duplicate key 'prompt'"),
        ('{"prompt": "p"}'.encode("utf-16"), "not UTF-8"),
        ('{"prompt": "p"}'.encode("utf-32-le"), "not JSON"),
        (b'\xef\xbb\xbf{"prompt": "p"}', "byte order mark"),
        (b'{"prompt": "caf\xe9"}', "not UTF-8: byte 0xe9 at offset 15"),
        (b'{"prompt": "p", "x": ["\\udc00"]}', "lone surrogate"),
        (b'{"prompt": "p"', "not JSON"),
    ],
)
async def test_request_json_is_strict(running, http, body, named):
    before = snapshot(running)
    response = await http.post("/v1/chat/runs/strict", content=body, headers=JSON)
    assert response.status_code == 400
    assert named in response.json()["error"]
    assert snapshot(running) == before


# -- security headers -----------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(running, http):
    port = host_port(running)[1]
    answers = [
        await http.get("/"),
        await http.get("/app.js"),
        await http.get("/auth.js"),
        await http.get("/app.css"),
        await http.get("/v1/chat/runs"),
        await http.get("/v1/stats"),
        await http.get("/v1/nothing"),
        await http.post("/v1/chat/runs/x", json={"prompt": "p"}, headers={"origin": "http://e.x"}),
        await http.get("/", headers={"host": f"evil.example:{port}"}),
    ]
    async with http.stream("GET", "/v1/chat/runs/victim/stream") as stream:
        answers.append(stream)
    for response in answers:
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, response.url
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
    assert answers[0].headers["content-type"] == "text/html; charset=utf-8"
    assert answers[3].headers["content-type"] == "text/css; charset=utf-8"


async def test_the_page_has_nothing_inline(http):
    page = (await http.get("/")).text
    assert "<style" not in page
    assert " style=" not in page
    assert re.search(r"<[^>]*\son[a-z]+\s*=", page) is None  # no onclick=, onload=, ...
    for tag in page.split("<script")[1:]:
        assert tag.split(">", 1)[0].strip().startswith("src="), "inline script"
