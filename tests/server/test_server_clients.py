"""Clients nobody here wrote: httpx-sse and websockets consume and resume a stream."""

from __future__ import annotations

import json

import httpx
import trio
from httpx_sse import aconnect_sse
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from trio_chatruns.server.producers import scripted_reply

PROMPT = "third-party clients"


async def test_httpx_sse_consumes_and_resumes(server):
    settings = server.server.settings
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        run_id = (await client.post("/v1/chat/runs/hs", json={"prompt": PROMPT})).json()["run_id"]
        seen = []
        last_id = None
        with trio.CancelScope() as drop:
            async with aconnect_sse(client, "GET", "/v1/chat/runs/hs/stream") as source:
                async for sse in source.aiter_sse():
                    seen.append(sse)
                    last_id = sse.id or last_id
                    if len(seen) == 10:
                        drop.cancel()  # a network drop, mid-reply
        assert len(seen) == 10
        # The retry travels with the first event: no empty event before it.
        assert seen[0].retry == settings.sse_retry_ms
        assert seen[0].event == "message" and seen[0].json()["seq"] == 1
        headers = {"Last-Event-ID": last_id}
        async with aconnect_sse(client, "GET", "/v1/chat/runs/hs/stream", headers=headers) as more:
            assert more.response.status_code == 200
            seen += [sse async for sse in more.aiter_sse()]
    assert all(sse.data for sse in seen), "every event carries data"
    events = [sse.json() for sse in seen if sse.event == "message"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    text = "".join(e["frame"]["text"] for e in events if e["frame"]["type"] == "token")
    assert text == "".join(scripted_reply(PROMPT, 60))
    assert seen[-1].event == "end"
    assert seen[-1].json()["run_id"] == run_id
    assert seen[-1].json()["reason"] == "completed"


def _websocket_session(url: str, stop_after: int | None) -> tuple[list[dict], int | None]:
    """Read a stream with the websockets library (blocking; run in a thread)."""
    messages: list[dict] = []
    with connect(url, open_timeout=10, close_timeout=5) as websocket:
        try:
            while True:
                messages.append(json.loads(websocket.recv(timeout=10)))
                if stop_after is not None and len(messages) == stop_after:
                    return messages, None  # leaving the block closes from our side
        except ConnectionClosedOK as closed:
            assert closed.rcvd is not None
            return messages, closed.rcvd.code


async def test_websockets_library_consumes_and_resumes(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        run_id = (await client.post("/v1/chat/runs/wl", json={"prompt": PROMPT})).json()["run_id"]
    base = server.url.replace("http://", "ws://") + "/v1/chat/runs/wl/ws"
    first, code = await trio.to_thread.run_sync(_websocket_session, base, 10)
    assert code is None and len(first) == 10
    after = [m for m in first if m["type"] == "event"][-1]["seq"]
    rest, code = await trio.to_thread.run_sync(
        _websocket_session, f"{base}?run_id={run_id}&after={after}", None
    )
    assert code == 1000
    messages = first + rest
    events = [m for m in messages if m["type"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    text = "".join(e["frame"]["text"] for e in events if e["frame"]["type"] == "token")
    assert text == "".join(scripted_reply(PROMPT, 60))
    assert messages[-1]["type"] == "end"
    assert messages[-1]["reason"] == "completed"
    assert messages[-1]["record"]["run_id"] == run_id
