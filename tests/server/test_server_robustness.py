"""Hostile and broken inputs: cursors, bodies, prompts, frames and models.

Each test pins a defect found in review: the answer is a clear 4xx (or a
well-formed stream), never a 500, a traceback, or a connection held forever.
"""

from __future__ import annotations

import json
import logging
import math

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream

from helpers import start_serving, wait_until


class Waits:
    """A model that stays active until interrupted."""

    async def __call__(self, run, request):
        run.push_frame({"type": "token", "text": "…"})
        await trio.sleep_forever()


def strict_loads(text):
    """``json.loads`` that refuses ``NaN``/``Infinity`` (what browsers' JSON.parse does)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


async def read_ws(url, headers=None):
    """All messages of a WebSocket stream and its close code."""
    rest = url.removeprefix("http://")
    hostport, _, resource = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    messages = []
    async with (
        await trio.open_tcp_stream(host, int(port)) as stream,
        trio.open_nursery() as nursery,
    ):
        ws = await wrap_client_stream(
            nursery, stream, host, "/" + resource, extra_headers=headers or []
        )
        try:
            while True:
                messages.append(strict_loads(await ws.get_message()))
        except ConnectionClosed as closed:
            code = closed.reason.code
        nursery.cancel_scope.cancel()
    return messages, code


async def follow(registry, conversation_id):
    async with registry.subscribe(conversation_id) as subscription:
        return [event.frame async for event in subscription], subscription.record


# -- cursors ------------------------------------------------------------------

HUGE = "9" * 5000


@pytest.fixture
async def waiting(start_server):
    running = await start_server(model=Waits(), max_subscribers_per_run=1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        response = await client.post("/v1/chat/runs/a", json={"prompt": "p"})
        assert response.status_code == 202
        yield running, client, response.json()["run_id"]


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("events", {"params": {"after": "²"}}),
        ("events", {"params": {"after": "\u0661"}}),  # Arabic-Indic one: isdigit() and int() agree
        ("events", {"params": {"after": HUGE}}),
        ("events", {"params": {"after": " 1"}}),
        ("stream", {"params": {"after": "²"}}),
        ("stream", {"params": {"after": HUGE}}),
        ("stream", {"params": {"run_id": "not a run id!"}}),
        ("stream", {"params": {"run_id": "r" * 129}}),
        ("stream", {"headers": {"Last-Event-ID": "r:²".encode()}}),
        ("stream", {"headers": {"Last-Event-ID": "r:" + HUGE}}),
        ("stream", {"headers": {"Last-Event-ID": "bad run:1"}}),
    ],
)
async def test_malformed_cursors_are_clear_400s(waiting, path, kwargs):
    _running, client, _run_id = waiting
    response = await client.get(f"/v1/chat/runs/a/{path}", **kwargs)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.isascii()
    assert len(message) < 200
    for leak in ("invalid literal", "Exceeds the limit", "int()", "Traceback"):
        assert leak not in message


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?after=%C2%B2", None),
        ("?after=" + HUGE, None),
        ("?run_id=bad%20id", None),
        ("", [("Last-Event-ID", "r:" + HUGE)]),
    ],
)
async def test_malformed_websocket_cursors_close_4400(waiting, query, headers):
    running, _client, _run_id = waiting
    messages, code = await read_ws(f"{running.url}/v1/chat/runs/a/ws{query}", headers)
    assert code == 4400
    assert messages[0]["type"] == "error"
    assert messages[0]["status"] == 400
    assert messages[0]["error"].isascii()


async def test_events_past_latest_seq_is_400_like_the_stream(waiting):
    _running, client, _run_id = waiting
    events = await client.get("/v1/chat/runs/a/events", params={"after": 99})
    stream = await client.get("/v1/chat/runs/a/stream", params={"after": 99})
    assert events.status_code == stream.status_code == 400
    assert "past the run's latest seq 1" in events.json()["error"]
    # At latest_seq exactly: nothing new, not an error.
    assert (await client.get("/v1/chat/runs/a/events", params={"after": 1})).json()["events"] == []


async def test_well_formed_unknown_run_id_is_204(waiting):
    _running, client, _run_id = waiting
    response = await client.get("/v1/chat/runs/a/stream", params={"run_id": "0" * 32})
    assert response.status_code == 204


async def test_websocket_reads_last_event_id(server, client):
    run_id = (await client.post("/v1/chat/runs/wl", json={"prompt": "p"})).json()["run_id"]
    with trio.fail_after(10):
        _frames, record = await follow(server.server.registry, "wl")
    url = f"{server.url}/v1/chat/runs/wl/ws"
    messages, code = await read_ws(url, [("Last-Event-ID", f"{run_id}:3")])
    assert code == 1000
    seqs = [m["seq"] for m in messages if m["type"] == "event"]
    assert seqs == list(range(4, record.latest_seq + 1))
    # The header wins over the query, as on SSE.
    messages, code = await read_ws(
        url + "?after=1", [("Last-Event-ID", f"{run_id}:{record.latest_seq}")]
    )
    assert code == 1000
    assert [m["type"] for m in messages] == ["end"]


async def test_429s_carry_retry_after(start_server):
    running = await start_server(model=Waits(), max_active_runs=1, max_subscribers_per_run=1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        assert (await client.post("/v1/chat/runs/r1", json={"prompt": "p"})).status_code == 202
        refused = await client.post("/v1/chat/runs/r2", json={"prompt": "p"})
        assert refused.status_code == 429
        # Documented: every 429 carries Retry-After: 1 (not the server constant).
        assert refused.headers["retry-after"] == "1"
        with trio.CancelScope() as scope:
            async with client.stream("GET", "/v1/chat/runs/r1/stream") as first:
                assert first.status_code == 200
                second = await client.get("/v1/chat/runs/r1/stream")
                assert second.status_code == 429
                assert second.headers["retry-after"] == "1"
                scope.cancel()


async def test_active_query_values(waiting):
    _running, client, _run_id = waiting
    for value, count in (("true", 1), ("TRUE", 1), ("1", 1), ("false", 1), ("0", 1)):
        runs = (await client.get("/v1/chat/runs", params={"active": value})).json()["runs"]
        assert len(runs) == count
    assert (await client.get("/v1/chat/runs", params={"active": "yes"})).status_code == 400


# -- request bodies -----------------------------------------------------------

HEAD = (
    b"POST /v1/chat/runs/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a name the server answers for
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
)


async def raw_post_partial(running):
    """Open a connection and send headers plus part of a 100-byte body."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(HEAD + b'{"prompt": "')
    return stream


async def read_until_eof(stream):
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def wait_body_reads(running, n):
    await wait_until(lambda: running.server.body_reads == n)


async def test_a_body_that_never_ends_gets_408(start_server):
    running = await start_server(body_timeout=0.3)
    async with await raw_post_partial(running) as stream:
        with trio.fail_after(10):
            answer = await read_until_eof(stream)  # and the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error":"request body not received within 0.3 seconds"' in answer
    assert running.server.registry.get("slow") is None


async def test_a_client_that_leaves_mid_body_is_not_an_error(start_server, caplog):
    running = await start_server()
    caplog.set_level(logging.DEBUG)
    stream = await raw_post_partial(running)
    await wait_body_reads(running, 1)
    await stream.aclose()
    await wait_body_reads(running, 0)
    # The request task has finished once it logged the disconnect.
    await wait_until(lambda: any("disconnected" in r.getMessage() for r in caplog.records))
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []
    assert running.server.registry.get("slow") is None


async def test_shutdown_cuts_pending_bodies(nursery):
    from trio_chatruns.server import ScriptedModel, ServerSettings

    graceful = 3.0
    running, done = await start_serving(
        nursery, ScriptedModel(), ServerSettings(port=0, graceful_timeout=graceful, body_timeout=30)
    )
    async with await raw_post_partial(running) as stream:
        await wait_body_reads(running, 1)
        running.shutdown()
        with trio.fail_after(10):
            answer = await read_until_eof(stream)
            await done.wait()
    # Cut at once: left alone, the read would end in a 408 after body_timeout
    # (30 s), or in no answer when the graceful timeout cancels the connection.
    assert answer.startswith(b"HTTP/1.1 503 ")


# -- prompts, models and frames ------------------------------------------------


async def test_a_lone_surrogate_prompt_is_400(client, server):
    response = await client.post(
        "/v1/chat/runs/sur",
        content=b'{"prompt": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]
    assert server.server.registry.get("sur") is None


async def test_any_model_error_ends_with_an_error_frame_logged_once(start_server, caplog):
    async def broken(run, request):
        run.push_frame({"type": "token", "text": "partial "})
        {}["missing"]  # a bug in a user's model

    running = await start_server(model=broken)
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/bug", json={"prompt": "p"})).json()["run_id"]
        with trio.fail_after(5):
            frames, record = await follow(running.server.registry, "bug")
        # Clients get the type and a message written for them, not the exception's text.
        message = "the chat model failed"
        assert frames[-1] == {"type": "error", "error_type": "KeyError", "message": message}
        assert record.status.value == "failed"
        assert record.last_error == f"KeyError: {message}"
        events = (await client.get("/v1/chat/runs/bug/events")).json()["events"]
        assert events[-1]["frame"]["type"] == "error"
        assert "missing" not in (await client.get("/v1/chat/runs/bug")).text
    # The whole exception goes to the log, once, at WARNING.
    logged = [r for r in caplog.records if r.exc_info and run_id in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING
    assert "'bug'" in logged[0].getMessage()
    assert "KeyError: 'missing'" in logged[0].getMessage()


async def test_an_interrupted_model_still_ends_cancelled(start_server):
    """The error frame is for failures only: an interrupt still ends `interrupted`."""

    async def raises_when_cancelled(run, request):
        run.push_frame({"type": "token", "text": "x"})
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("cleanup failed")  # a sloppy model

    running = await start_server(model=raises_when_cancelled)
    async with httpx.AsyncClient(base_url=running.url) as client:
        (await client.post("/v1/chat/runs/ic", json={"prompt": "p"})).raise_for_status()
        assert (await client.post("/v1/chat/runs/ic/interrupt")).status_code == 200
    with trio.fail_after(5):
        frames, record = await follow(running.server.registry, "ic")
    assert frames[-1] == {"type": "interrupted"}
    assert record.status.value == "cancelled"


class _Odd:
    def __str__(self):
        return "odd object"


async def test_unserialisable_frames_are_strict_json_everywhere(start_server, sse):
    cyclic: list = []
    cyclic.append(cyclic)

    async def weird(run, request):
        run.push_frame(
            {
                "type": "token",
                "text": "ok",
                "nan": math.nan,
                "inf": [math.inf, -math.inf],
                "obj": _Odd(),
                "keys": {(1, 2): "tuple key", 3: "int key"},
                "surrogate": "a\ud800b",
                "cycle": cyclic,
            }
        )

    expected = {
        "type": "token",
        "text": "ok",
        "nan": None,
        "inf": [None, None],
        "obj": "odd object",
        "keys": {"(1, 2)": "tuple key", "3": "int key"},
        "surrogate": "a\ud800b",
        "cycle": ["<circular reference>"],
    }
    running = await start_server(model=weird)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/w", json={"prompt": "p"})).raise_for_status()
        with trio.fail_after(5):
            await follow(running.server.registry, "w")
        response = await client.get("/v1/chat/runs/w/events")
        assert response.status_code == 200
        assert strict_loads(response.text)["events"][0]["frame"] == expected
        async with client.stream("GET", "/v1/chat/runs/w/stream") as stream:
            messages = [m async for m in sse(stream)]
        assert messages[0].retry is not None  # within the first event's block
        assert strict_loads(messages[0].data)["frame"] == expected
        assert messages[-1].event == "end"
    ws_messages, code = await read_ws(f"{running.url}/v1/chat/runs/w/ws")
    assert code == 1000
    assert ws_messages[0]["frame"] == expected


# -- interrupt during shutdown ---------------------------------------------------


async def test_interrupt_is_idempotent_while_the_run_unwinds(start_server):
    release = trio.Event()

    async def slow_to_stop(run, request):
        run.push_frame({"type": "token", "text": "x"})
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await release.wait()

    running = await start_server(model=slow_to_stop)
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/u", json={"prompt": "p"})).json()["run_id"]
        first = await client.post("/v1/chat/runs/u/interrupt")
        assert first.json() == {"interrupted": True, "run_id": run_id}
        running.server.begin_shutdown()  # interrupts it again; not refused with 503
        again = await client.post("/v1/chat/runs/u/interrupt")
        assert again.status_code == 200
        assert again.json() == {"interrupted": True, "run_id": run_id}
        assert (await client.get("/v1/chat/runs/u")).json()["status"] == "running"
        release.set()
        with trio.fail_after(5):
            frames, _record = await follow(running.server.registry, "u")
        assert frames[-1] == {"type": "interrupted"}
        assert (await client.post("/v1/chat/runs/u/interrupt")).status_code == 404
