"""``--api-key``: Bearer auth on the API, the streams and /metrics (401), stream
tokens for clients that cannot set headers, the generated key of a
non-loopback bind, and the command-line options."""

from __future__ import annotations

import logging
import os

import httpx
import pytest
from test_server_security import SLOW, ws_handshake

from trio_chatruns.server import ServerSettings
from trio_chatruns.server.auth import (
    StreamTokens,
    bearer_token,
    ensure_api_key,
    is_protected,
    log_exposure,
)
from trio_chatruns.server.cli import main, parser

from helpers import serve_process

KEY = "s3cret-key_for.tests"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
async def running(start_server):
    running = await start_server(model=SLOW, api_key=KEY)
    async with httpx.AsyncClient(base_url=running.url, timeout=10, headers=AUTH) as client:
        (await client.post("/v1/chat/runs/c1", json={"prompt": "p"})).raise_for_status()
    return running


@pytest.fixture
async def anonymous(running):
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        yield client


PROTECTED = [
    ("POST", "/v1/chat/runs/new", {"json": {"prompt": "p"}}),
    ("POST", "/v1/chat/runs/c1/interrupt", {}),
    ("POST", "/v1/chat/runs/c1/stream-token", {}),
    ("GET", "/v1/chat/runs", {}),
    ("GET", "/v1/chat/runs/c1", {}),
    ("GET", "/v1/chat/runs/c1/events", {}),
    ("GET", "/v1/chat/runs/c1/stream", {}),
    ("GET", "/v1/stats", {}),
    ("GET", "/v1/no-such-route", {}),
    ("GET", "/metrics", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {KEY}x", f"Basic {KEY}", f"Bearer {KEY[:-1]}", "Bearer"],
)
async def test_without_the_key_every_api_route_is_401(
    running, anonymous, method, path, kwargs, authorization
):
    before = [(r.run_id, r.status) for r in running.server.registry.list()]
    headers = {} if authorization is None else {"authorization": authorization}
    response = await anonymous.request(method, path, headers=headers, **kwargs)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="trio-chatruns"')
    assert ('error="invalid_token"' in challenge) == (authorization is not None)
    assert isinstance(response.json()["error"], str)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert [(r.run_id, r.status) for r in running.server.registry.list()] == before
    assert running.server.stats().streams_opened == 0


async def test_with_the_key_the_api_works(running, anonymous):
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = await anonymous.get(
            "/v1/chat/runs/c1", headers={"authorization": f"{scheme} {KEY}"}
        )
        assert response.status_code == 200
    assert (await anonymous.get("/v1/stats", headers=AUTH)).status_code == 200
    # /metrics is protected before it exists (ops adds it): with the key, no 401.
    assert (await anonymous.get("/metrics", headers=AUTH)).status_code != 401
    async with anonymous.stream("GET", "/v1/chat/runs/c1/stream", headers=AUTH) as stream:
        assert stream.status_code == 200
    response = await anonymous.post("/v1/chat/runs/c1/interrupt", headers=AUTH)
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/", "/app.js", "/auth.js", "/app.css"])
async def test_the_page_is_public(anonymous, path):
    response = await anonymous.get(path)
    assert response.status_code == 200


async def test_websocket_needs_the_key_or_a_stream_token(running, anonymous):
    refused = await ws_handshake(running, "/v1/chat/runs/c1/ws")
    assert refused[:2] == ("rejected", 401)
    with_header = await ws_handshake(
        running, "/v1/chat/runs/c1/ws", headers=[("Authorization", f"Bearer {KEY}")]
    )
    assert with_header[0] == "accepted"
    assert '"type":"event"' in with_header[1]

    minted = await anonymous.post("/v1/chat/runs/c1/stream-token", headers=AUTH)
    assert minted.status_code == 200
    assert minted.headers["cache-control"] == "no-store"
    token = minted.json()["token"]
    assert minted.json()["expires_in"] == 60
    with_token = await ws_handshake(running, f"/v1/chat/runs/c1/ws?access_token={token}")
    assert with_token[0] == "accepted"
    assert '"type":"event"' in with_token[1]
    async with anonymous.stream(
        "GET", "/v1/chat/runs/c1/stream", params={"access_token": token}
    ) as stream:
        assert stream.status_code == 200

    # A token opens only that conversation's streams, and nothing else.
    other = await ws_handshake(running, f"/v1/chat/runs/c2/ws?access_token={token}")
    assert other[:2] == ("rejected", 401)
    for path in ("/v1/chat/runs/c1", "/v1/chat/runs/c1/events", "/v1/chat/runs"):
        response = await anonymous.get(path, params={"access_token": token})
        assert response.status_code == 401
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    response = await anonymous.get("/v1/chat/runs/c1/stream", params={"access_token": tampered})
    assert response.status_code == 401
    response = await anonymous.get(
        "/v1/chat/runs/c1/stream", params=[("access_token", token), ("access_token", token)]
    )
    assert response.status_code == 401


async def test_stream_token_route_checks_the_conversation_id(running, anonymous):
    response = await anonymous.post("/v1/chat/runs/bad%20id/stream-token", headers=AUTH)
    assert response.status_code == 400


# -- units: tokens, credentials, protected paths ------------------------------------------


async def test_stream_tokens_expire(mock_clock):
    tokens = StreamTokens(ttl=60, secret=b"k" * 32)
    token = tokens.issue("c1")
    assert tokens.verify(token, "c1")
    assert not tokens.verify(token, "c2")
    assert not tokens.verify(token + "x", "c1")
    assert not StreamTokens(ttl=60).verify(token, "c1")  # another process's secret
    rotated = StreamTokens(ttl=60)
    old = rotated.issue("c1")
    rotated.rotate()
    assert not rotated.verify(old, "c1")
    assert rotated.verify(rotated.issue("c1"), "c1")
    mock_clock.jump(59.9)
    assert tokens.verify(token, "c1")
    mock_clock.jump(0.2)
    assert not tokens.verify(token, "c1")


def test_shared_stream_tokens_work_on_every_worker_with_the_key():
    """``serve --redis`` workers: a token from one opens the stream on another."""
    now = [1_800_000_000.0]  # Unix time, the clock processes share

    def clock() -> float:
        return now[0]

    worker_a = StreamTokens.shared("the-key", clock=clock)
    worker_b = StreamTokens.shared("the-key", clock=clock)
    token = worker_a.issue("c1")
    assert worker_b.verify(token, "c1")
    assert not worker_b.verify(token, "c2")
    assert not StreamTokens.shared("another-key", clock=clock).verify(token, "c1")
    assert not StreamTokens().verify(token, "c1")  # a per-process secret
    now[0] += 59.9
    assert worker_b.verify(token, "c1")
    now[0] += 0.2
    assert not worker_b.verify(token, "c1")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("abc", None),
    ],
)
def test_bearer_token(value, expected):
    assert bearer_token(value) == expected


@pytest.mark.parametrize(
    ("path", "protected"),
    [
        ("/v1", True),
        ("/v1/stats", True),
        ("/v1/chat/runs/x/ws", True),
        ("/metrics", True),
        ("/metrics/x", True),
        ("/", False),
        ("/app.js", False),
        ("/v10", False),
        ("/metricsx", False),
    ],
)
def test_protected_paths(path, protected):
    assert is_protected(path) is protected


# -- a non-loopback bind gets a key, as Jupyter does -------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "chat.example"])
def test_a_non_loopback_bind_without_a_key_gets_one(host):
    settings, generated = ensure_api_key(ServerSettings(host=host))
    assert generated
    assert settings.api_key is not None
    assert len(settings.api_key) >= 43
    again, _ = ensure_api_key(ServerSettings(host=host))
    assert again.api_key != settings.api_key
    assert KEY not in repr(ServerSettings(host=host, api_key=KEY))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_a_loopback_bind_or_a_given_key_is_kept(host):
    settings = ServerSettings(host=host)
    assert ensure_api_key(settings) == (settings, False)
    keyed = ServerSettings(host="0.0.0.0", api_key=KEY)
    assert ensure_api_key(keyed) == (keyed, False)


def test_the_generated_key_and_a_wildcard_bind_are_logged(caplog):
    caplog.set_level(logging.WARNING, "trio_chatruns.server")
    settings, generated = ensure_api_key(ServerSettings(host="0.0.0.0", port=8123))
    log_exposure(settings, ["http://0.0.0.0:8123"], generated)
    messages = [r.getMessage() for r in caplog.records]
    assert any("every interface" in m for m in messages)
    assert any(f"http://127.0.0.1:8123/#token={settings.api_key}" in m for m in messages)
    caplog.clear()
    log_exposure(ServerSettings(host="0.0.0.0", api_key=KEY), ["http://0.0.0.0:8123"], False)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1  # the warning, "either way"; no key shown
    assert "every interface" in messages[0]
    assert KEY not in messages[0]
    caplog.clear()
    log_exposure(ServerSettings(), ["http://127.0.0.1:8000"], False)
    assert caplog.records == []


# -- the command line ----------------------------------------------------------------


def test_security_options_parse():
    args = parser().parse_args(
        [
            "serve",
            "--api-key",
            KEY,
            "--allow-origin",
            "http://localhost:3000",
            "--allow-origin",
            "https://chat.example",
            "--allowed-host",
            "chat.example",
            "--allowed-host",
            "*",
        ]
    )
    assert args.api_key == KEY
    assert args.allow_origin == ["http://localhost:3000", "https://chat.example"]
    assert args.allowed_host == ["chat.example", "*"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--allow-origin", "null"],
        ["--allow-origin", "http://x.example/path"],
        ["--allowed-host", "a/b"],
        ["--api-key", "has space"],
    ],
)
def test_bad_security_options_are_status_2(argv, capsys):
    assert main(["serve", *argv]) == 2
    assert capsys.readouterr().err.startswith("trio-chatruns: error: ")


def test_help_does_not_show_the_key_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("TRIO_CHATRUNS_API_KEY", KEY)
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--help"])
    assert KEY not in capsys.readouterr().out


async def test_the_key_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "TRIO_CHATRUNS_API_KEY", KEY)
    async with serve_process(cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/v1/chat/runs")).status_code == 401
            assert (await client.get("/v1/chat/runs", headers=AUTH)).status_code == 200
        assert await server.stop() == 0
        assert KEY not in server.text  # a key the operator chose is never logged


async def _asgi_status(app, path, root_path="", headers=()):
    """Send one GET through ``app`` as an ASGI server would; return the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/v1/chat/runs", ""),
        ("/chat/v1/chat/runs", "/chat"),  # mounted at /chat: ASGI paths include root_path
        ("/chat/metrics", "/chat"),
        ("/chat/v1/chat/runs/c1/stream", "/chat"),
    ],
)
async def test_a_mounted_app_still_needs_the_key(path, root_path):
    from trio_chatruns.server.auth import ApiKeyAuth

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"secret"})

    guarded = ApiKeyAuth(inner, api_key=KEY, tokens=StreamTokens())
    assert await _asgi_status(guarded, path, root_path) == 401
    bearer = [(b"authorization", f"Bearer {KEY}".encode())]
    assert await _asgi_status(guarded, path, root_path, bearer) == 200
