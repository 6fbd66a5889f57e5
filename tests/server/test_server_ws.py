"""WebSocket: the same events as JSON messages, resumable with ?after=N&run_id=."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream

from trio_chatruns import RegistryConfig
from trio_chatruns.server.producers import scripted_reply

from helpers import wait_until

PROMPT = "websockets too"

# The documented close codes (docs/server.md), not the server's own constants:
# a test comparing with those would pass whatever value they held.
CLOSE_DONE = 1000  # the run ended and everything was sent
CLOSE_RESUME = 1013  # "try again later": lagged, or dropped by the server


def ws_url(running, conversation_id, **query):
    base = running.url.replace("http://", "ws://")
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{base}/v1/chat/runs/{conversation_id}/ws" + (f"?{q}" if q else "")


async def read_ws(url, *, stop_after_tokens=None):
    """Return (messages, close_code); close_code None when we dropped the connection.

    A drop is a cancelled connection: trio-websocket then closes the TCP stream
    without waiting for a close handshake, as a network failure would.
    """
    messages = []
    tokens = 0
    code = None
    host, port, resource = _split(url)
    with trio.CancelScope() as drop:
        # We own the TCP stream: trio-websocket 0.12's client does not close its
        # socket after a close *from the server* (it waits for the server's TCP
        # close, then its reader just stops), which leaks a ResourceWarning.
        async with await trio.open_tcp_stream(host, port) as stream, trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, host, resource)
            while True:
                try:
                    message = json.loads(await ws.get_message())
                except ConnectionClosed as closed:
                    code = closed.reason.code
                    break
                messages.append(message)
                if message["type"] == "event" and message["frame"]["type"] == "token":
                    tokens += 1
                    if stop_after_tokens is not None and tokens >= stop_after_tokens:
                        drop.cancel()  # a network drop: no close handshake
                        await trio.sleep_forever()
            nursery.cancel_scope.cancel()
    return messages, code


def _split(url):
    rest = url.removeprefix("ws://")
    hostport, _, resource = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port), "/" + resource


def text_of(messages):
    return "".join(
        m["frame"]["text"]
        for m in messages
        if m["type"] == "event" and m["frame"]["type"] == "token"
    )


@pytest.mark.backends
async def test_drop_and_resume_over_websocket(server, client):
    run_id = (await client.post("/v1/chat/runs/c-ws", json={"prompt": PROMPT})).json()["run_id"]
    seen, code = await read_ws(ws_url(server, "c-ws"), stop_after_tokens=7)
    assert code is None
    for _ in range(2):
        after = [m for m in seen if m["type"] == "event"][-1]["seq"]
        more, code = await read_ws(
            ws_url(server, "c-ws", after=after, run_id=run_id), stop_after_tokens=9
        )
        seen += more
    after = [m for m in seen if m["type"] == "event"][-1]["seq"]
    rest, code = await read_ws(ws_url(server, "c-ws", after=after, run_id=run_id))
    seen += rest
    assert code == CLOSE_DONE
    seqs = [m["seq"] for m in seen if m["type"] == "event"]
    assert seqs == list(range(1, len(seqs) + 1))
    assert text_of(seen) == "".join(scripted_reply(PROMPT, 60))
    assert seen[-1]["type"] == "end"
    assert seen[-1]["record"]["status"] == "completed"
    # Reconnecting after the end: just the end message and 1000.
    again, code = await read_ws(ws_url(server, "c-ws", after=seqs[-1], run_id=run_id))
    assert code == CLOSE_DONE
    assert [m["type"] for m in again] == ["end"]
    with trio.fail_after(10):  # the server notices our closes
        await server.server.wait_streams_closed()
    assert server.server.stats().open_streams == 0


async def test_websocket_refusals_close_with_4xxx(server, client):
    messages, code = await read_ws(ws_url(server, "nobody"))
    assert code == 4404
    assert messages == [
        {"type": "error", "status": 404, "error": "no run for conversation 'nobody'"}
    ]
    messages, code = await read_ws(ws_url(server, "bad%21id"))
    assert code == 4400
    messages, code = await read_ws(ws_url(server, "c", after="x"))
    assert code == 4400
    assert server.server.registry.list() == []


async def test_a_lagging_websocket_closes_with_resume_code(start_server):
    class Bursty:
        async def __call__(self, run, request):
            registry = running.server.registry
            for burst in range(3):
                # Each burst goes to a live subscriber, which cannot keep up.
                await wait_until(lambda: registry.stats().subscribers > 0)
                for i in range(30):
                    run.push_frame({"type": "token", "text": f"{burst}.{i} "})

    running = await start_server(
        model=Bursty(), registry_config=RegistryConfig(subscriber_buffer=4)
    )
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/wlag", json={"prompt": "p"})).json()["run_id"]
    seen, after, codes = [], 0, []
    for _attempt in range(20):
        messages, code = await read_ws(ws_url(running, "wlag", after=after, run_id=run_id))
        seen += messages
        codes.append(code)
        if code == CLOSE_DONE:
            break
        assert code == CLOSE_RESUME
        assert messages[-1]["type"] == "lagged"
        after = messages[-1]["resume_after"]
    assert CLOSE_RESUME in codes
    assert [m["seq"] for m in seen if m["type"] == "event"] == list(range(1, 91))


@pytest.mark.backends
async def test_server_dropped_websocket_says_resume(server, client):
    (await client.post("/v1/chat/runs/wdrop", json={"prompt": PROMPT})).raise_for_status()
    host, port, resource = _split(ws_url(server, "wdrop"))
    async with await trio.open_tcp_stream(host, port) as stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, host, resource)
        first = json.loads(await ws.get_message())
        assert first["type"] == "event"
        assert server.server.disconnect_streams() == 1
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            assert closed.reason.code == CLOSE_RESUME
        nursery.cancel_scope.cancel()


async def test_websocket_heartbeat_when_idle(start_server):
    pinged_twice = trio.Event()

    class Slow:
        async def __call__(self, run, request):
            run.push_frame({"type": "token", "text": "a"})
            await pinged_twice.wait()  # silent until the client saw two heartbeats
            run.push_frame({"type": "token", "text": "b"})

    running = await start_server(model=Slow(), heartbeat_interval=0.1)
    async with httpx.AsyncClient(base_url=running.url) as client:
        (await client.post("/v1/chat/runs/whb", json={"prompt": "p"})).raise_for_status()
    host, port, resource = _split(ws_url(running, "whb"))
    messages = []
    async with await trio.open_tcp_stream(host, port) as stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, host, resource)
        try:
            while True:
                messages.append(json.loads(await ws.get_message()))
                if [m["type"] for m in messages].count("ping") == 2:
                    pinged_twice.set()
        except ConnectionClosed as closed:
            code = closed.reason.code
        nursery.cancel_scope.cancel()
    assert code == CLOSE_DONE
    types = [m["type"] for m in messages]
    # Heartbeats only in the silence between the two frames (two at least).
    assert types[:3] == ["event", "ping", "ping"]
    assert set(types[3:-2]) <= {"ping"}
    assert types[-2:] == ["event", "end"]
