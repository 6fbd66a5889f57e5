"""Limits at their exact edge, and the HTTP layer's accounting of streams:
counters, per-run stream slots, refusals while shutting down, the SSE retry.

Status codes and WebSocket close codes are the documented literals
(docs/server.md), never the server's own constants.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream

from trio_chatruns.server import cli


class Waits:
    """A model that pushes one frame and stays active until interrupted."""

    async def __call__(self, run, request):
        run.push_frame({"type": "token", "text": "…"})
        await trio.sleep_forever()


@asynccontextmanager
async def ws_connection(running, resource, headers=()):
    """A WebSocket to ``resource``; leaving the block drops the connection."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    async with (
        await trio.open_tcp_stream(host, int(port)) as stream,
        trio.open_nursery() as nursery,
    ):
        ws = await wrap_client_stream(nursery, stream, host, resource, extra_headers=list(headers))
        yield ws
        nursery.cancel_scope.cancel()


async def ws_until_closed(ws):
    """The remaining messages of a WebSocket and its close code."""
    messages = []
    try:
        while True:
            messages.append(json.loads(await ws.get_message()))
    except ConnectionClosed as closed:
        return messages, closed.reason.code


async def read_ws(running, resource, headers=()):
    async with ws_connection(running, resource, headers) as ws:
        return await ws_until_closed(ws)


async def wait_streams_closed(running):
    with trio.fail_after(10):
        await running.server.wait_streams_closed()


def json_body(size):
    """A valid ``{"prompt": "xx..."}`` body of exactly ``size`` bytes."""
    body = b'{"prompt":"' + b"x" * (size - 13) + b'"}'
    assert len(body) == size
    return body


HEADERS = {"content-type": "application/json"}


# -- limits at their edge ----------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_exactly_at_the_limit_is_accepted_one_byte_over_is_413(start_server, chunked):
    running = await start_server(model=Waits(), max_body_bytes=64)

    def content(body):
        if not chunked:
            return body  # httpx sends Content-Length

        async def chunks():
            for i in range(0, len(body), 10):
                yield body[i : i + 10]

        return chunks()

    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        over = await client.post(
            "/v1/chat/runs/over", content=content(json_body(65)), headers=HEADERS
        )
        assert over.status_code == 413, over.text
        assert over.json() == {"error": "request body larger than 64 bytes"}
        at = await client.post("/v1/chat/runs/at", content=content(json_body(64)), headers=HEADERS)
        assert at.status_code == 202, at.text
    assert running.server.registry.get("over") is None


async def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(
    start_server,
):
    """The declared length alone decides: no byte of the body is waited for."""
    running = await start_server(model=Waits(), max_body_bytes=64, body_timeout=30)
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(
            b"POST /v1/chat/runs/big HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 65\r\n\r\n"
        )
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some()
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_a_prompt_exactly_at_the_limit_is_accepted(start_server):
    running = await start_server(model=Waits(), max_prompt_chars=10)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        assert (await client.post("/v1/chat/runs/at", json={"prompt": "é" * 10})).status_code == 202
        over = await client.post("/v1/chat/runs/over", json={"prompt": "é" * 11})
        assert over.status_code == 400
        assert over.json() == {"error": "prompt longer than 10 characters"}


async def test_active_runs_cap_counts_only_active_runs(start_server):
    running = await start_server(model=Waits(), max_active_runs=2)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        for cid in ("a", "b"):
            assert (
                await client.post(f"/v1/chat/runs/{cid}", json={"prompt": "p"})
            ).status_code == 202
        refused = await client.post("/v1/chat/runs/c", json={"prompt": "p"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert (await client.post("/v1/chat/runs/a/interrupt")).status_code == 200
        with trio.fail_after(10):
            async with running.server.registry.subscribe("a") as subscription:
                async for _ in subscription:
                    pass
        # A finished run frees its place.
        assert (await client.post("/v1/chat/runs/c", json={"prompt": "p"})).status_code == 202


async def test_bad_ids_and_cursors_get_messages_naming_them(start_server):
    running = await start_server(model=Waits())
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).raise_for_status()
        bad_id = await client.get("/v1/chat/runs/a%21/stream")
        assert (bad_id.status_code, bad_id.json()) == (400, {"error": "invalid conversation id"})
        for path in ("events", "stream"):
            response = await client.get(f"/v1/chat/runs/a/{path}", params={"after": "x"})
            assert response.status_code == 400
            assert response.json()["error"].startswith("after must be a non-negative integer")
    messages, code = await read_ws(running, "/v1/chat/runs/a%21/ws")
    assert code == 4400
    assert messages == [{"type": "error", "status": 400, "error": "invalid conversation id"}]


async def test_a_cursor_for_a_run_no_longer_held_or_fully_delivered_ends_at_once(start_server):
    """204 on SSE; on WebSocket the ``end`` message (with the final record when it
    is still known) and close 1000."""
    running = await start_server(model=Waits())
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        gone = await client.get("/v1/chat/runs/gone/stream", params={"run_id": "r1"})
        assert gone.status_code == 204
        run_id = (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).json()["run_id"]
        assert (await client.post("/v1/chat/runs/a/interrupt")).status_code == 200
        with trio.fail_after(10):
            async with running.server.registry.subscribe("a") as subscription:
                latest = [event.seq async for event in subscription][-1]
    messages, code = await read_ws(running, "/v1/chat/runs/gone/ws?run_id=r1")
    assert code == 1000
    assert [(m["type"], m["record"]) for m in messages] == [("end", None)]
    messages, code = await read_ws(running, f"/v1/chat/runs/a/ws?run_id={run_id}&after={latest}")
    assert code == 1000
    assert [m["type"] for m in messages] == ["end"]
    assert (messages[0]["record"]["run_id"], messages[0]["record"]["status"]) == (
        run_id,
        "cancelled",
    )


# -- stream slots ------------------------------------------------------------------


async def test_stream_slots_are_given_back_when_streams_close(start_server):
    """``max_subscribers_per_run`` counts open streams only: after streams close
    (the client left, the server dropped them), new ones are accepted again."""
    running = await start_server(model=Waits(), max_subscribers_per_run=2)
    server = running.server
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        run_id = (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).json()["run_id"]
        for round_ in range(3):
            with trio.CancelScope() as leave:
                async with (
                    client.stream("GET", "/v1/chat/runs/a/stream") as first,
                    ws_connection(running, "/v1/chat/runs/a/ws") as ws,
                ):
                    assert first.status_code == 200
                    assert json.loads(await ws.get_message())["type"] == "event"
                    assert server.subscriber_count(run_id) == 2
                    third = await client.get("/v1/chat/runs/a/stream")
                    assert third.status_code == 429
                    messages, code = await read_ws(running, "/v1/chat/runs/a/ws")
                    assert code == 4429
                    assert messages[0]["status"] == 429
                    if round_ == 1:
                        assert server.disconnect_streams() == 2  # the server drops them
                        assert (await ws_until_closed(ws))[1] == 1013
                        await wait_streams_closed(running)
                        assert server.subscriber_count(run_id) == 0
                    leave.cancel()  # the client leaves
            await wait_streams_closed(running)
            assert server.subscriber_count(run_id) == 0
        assert server.stats().open_streams == 0


async def test_streams_of_a_finished_run_give_their_slots_back(start_server, sse):
    running = await start_server(model=Waits(), max_subscribers_per_run=1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).raise_for_status()
        assert (await client.post("/v1/chat/runs/a/interrupt")).status_code == 200
        for _ in range(3):  # each one replays the whole run and ends
            async with client.stream("GET", "/v1/chat/runs/a/stream") as response:
                assert response.status_code == 200
                messages = [m async for m in sse(response)]
            assert messages[-1].event == "end"
            await wait_streams_closed(running)
            ws_messages, code = await read_ws(running, "/v1/chat/runs/a/ws")
            assert code == 1000
            assert ws_messages[-1]["type"] == "end"
            await wait_streams_closed(running)
    assert running.server.stats().streams_opened == 6


# -- counters ----------------------------------------------------------------------


async def test_streams_opened_resumed_and_dropped_are_counted(start_server, sse):
    running = await start_server(model=Waits())
    server = running.server
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        run_id = (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).json()["run_id"]
        async with (
            client.stream("GET", "/v1/chat/runs/a/stream") as fresh,
            client.stream(
                "GET", "/v1/chat/runs/a/stream", headers={"Last-Event-ID": f"{run_id}:1"}
            ) as resumed,
        ):
            stats = server.stats()
            assert (stats.open_streams, stats.streams_opened) == (2, 2)
            assert (stats.streams_resumed, stats.streams_dropped) == (1, 0)
            fresh_messages, resumed_messages = sse(fresh), sse(resumed)
            first = await fresh_messages.__anext__()
            while first.event != "message":  # (a retry-only block, if sent alone)
                first = await fresh_messages.__anext__()
            assert first.json()["seq"] == 1
            assert server.disconnect_streams() == 2
            # Cut, as a network drop would: no end message, the client resumes.
            assert [m.event async for m in fresh_messages] == []
            assert [m async for m in resumed_messages if m.event not in ("", "message")] == []
        await wait_streams_closed(running)

        async with ws_connection(running, f"/v1/chat/runs/a/ws?after=0&run_id={run_id}") as ws:
            assert json.loads(await ws.get_message())["seq"] == 1
            assert server.disconnect_streams() == 1
            _messages, code = await ws_until_closed(ws)
        assert code == 1013
        await wait_streams_closed(running)
        assert server.disconnect_streams() == 0  # nothing open: nothing counted

        reported = (await client.get("/v1/stats")).json()["server"]
    counts = ("open_streams", "streams_opened", "streams_resumed", "streams_dropped")
    assert {name: reported[name] for name in counts} == dict(zip(counts, (0, 3, 2, 3), strict=True))


async def test_refused_streams_are_not_counted(start_server):
    running = await start_server(model=Waits(), max_subscribers_per_run=1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        assert (await client.get("/v1/chat/runs/none/stream")).status_code == 404
        (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).raise_for_status()
        assert (await client.get("/v1/chat/runs/a/stream?after=5")).status_code == 400
    assert running.server.stats().streams_opened == 0


# -- shutdown ------------------------------------------------------------------------


async def test_a_closing_server_refuses_new_streams_with_503(start_server):
    """Not only new runs: new SSE and WebSocket streams too, with or without a cursor."""
    running = await start_server(model=Waits())
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        run_id = (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).json()["run_id"]
        running.server.begin_shutdown()
        assert running.server.closing
        for headers in ({}, {"Last-Event-ID": f"{run_id}:0"}):
            response = await client.get("/v1/chat/runs/a/stream", headers=headers)
            assert response.status_code == 503
            assert response.json() == {"error": "server is shutting down"}
        for query in ("", f"?after=0&run_id={run_id}"):
            messages, code = await read_ws(running, f"/v1/chat/runs/a/ws{query}")
            assert code == 4503
            assert messages == [
                {"type": "error", "status": 503, "error": "server is shutting down"}
            ]
        refused = await client.post("/v1/chat/runs/b", json={"prompt": "p"})
        assert refused.status_code == 503
    assert running.server.stats().streams_opened == 0


async def test_begin_shutdown_interrupts_every_active_run_and_says_how_many(start_server):
    running = await start_server(model=Waits())
    registry = running.server.registry
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        for cid in ("a", "b", "done"):
            (await client.post(f"/v1/chat/runs/{cid}", json={"prompt": "p"})).raise_for_status()
        assert registry.interrupt("done")
        with trio.fail_after(10):
            async with registry.subscribe("done") as subscription:
                async for _ in subscription:
                    pass
        assert running.server.begin_shutdown() == 2
        assert running.server.begin_shutdown() == 0  # idempotent: nothing more to interrupt
    for cid in ("a", "b"):
        with trio.fail_after(10):
            async with registry.subscribe(cid) as subscription:
                frames = [event.frame async for event in subscription]
        assert frames[-1] == {"type": "interrupted"}


# -- the SSE retry -------------------------------------------------------------------


async def test_a_non_default_sse_retry_is_sent_first(start_server, sse):
    running = await start_server(model=Waits(), sse_retry_ms=2500)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).raise_for_status()
        assert (await client.post("/v1/chat/runs/a/interrupt")).status_code == 200
        async with client.stream("GET", "/v1/chat/runs/a/stream") as response:
            messages = [m async for m in sse(response)]
    assert messages[0].retry == 2500  # in the first block, before any frame
    assert [m.retry for m in messages[1:]] == [None] * (len(messages) - 1)


def test_the_sse_retry_option_reaches_the_settings(monkeypatch):
    seen = []

    def fake_run(main, model, settings, registry_config):
        seen.append(settings)
        return 0  # the exit status serve would give

    monkeypatch.setattr(cli.trio, "run", fake_run)
    assert cli.main(["serve", "--sse-retry-ms", "2500"]) == 0
    assert seen[0].sse_retry_ms == 2500
    assert cli.main(["serve"]) == 0
    assert seen[1].sse_retry_ms == 1000
    assert cli.main(["serve", "--sse-retry-ms", "0"]) == 2
