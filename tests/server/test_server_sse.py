"""SSE: a client that drops mid-reply and resumes with Last-Event-ID."""

from __future__ import annotations

import httpx
import pytest
import trio

from trio_chatruns import RegistryConfig
from trio_chatruns.server.producers import scripted_reply

from helpers import wait_until

PROMPT = "tell me about structured concurrency"


async def collect(
    client, sse, conversation_id, *, headers=None, params=None, stop_after_tokens=None
):
    """Read the stream; return (messages, dropped). Stops with a cancel scope."""
    messages = []
    tokens = 0
    dropped = False
    with trio.CancelScope() as scope:
        async with client.stream(
            "GET", f"/v1/chat/runs/{conversation_id}/stream", headers=headers, params=params
        ) as response:
            assert response.status_code == 200, response.status_code
            assert response.headers["content-type"].startswith("text/event-stream")
            async for message in sse(response):
                messages.append(message)
                if message.event == "message" and message.json()["frame"]["type"] == "token":
                    tokens += 1
                    if stop_after_tokens is not None and tokens >= stop_after_tokens:
                        dropped = True
                        scope.cancel()
    return messages, dropped


def reply_text(messages):
    return "".join(
        m.json()["frame"]["text"]
        for m in messages
        if m.event == "message" and m.json()["frame"]["type"] == "token"
    )


@pytest.mark.backends
async def test_drop_and_resume_with_last_event_id(server, client, sse):
    response = await client.post("/v1/chat/runs/c-sse", json={"prompt": PROMPT})
    assert response.status_code == 202
    run_id = response.json()["run_id"]

    first, dropped = await collect(client, sse, "c-sse", stop_after_tokens=10)
    assert dropped
    assert first[0].retry == server.server.settings.sse_retry_ms
    last_id = [m.id for m in first if m.id][-1]
    assert last_id.startswith(run_id + ":")

    # Drop twice more, each time resuming from the last id seen.
    seen = list(first)
    for _ in range(2):
        more, _ = await collect(
            client, sse, "c-sse", headers={"Last-Event-ID": last_id}, stop_after_tokens=8
        )
        seen += more
        last_id = [m.id for m in seen if m.id][-1]
    rest, dropped = await collect(client, sse, "c-sse", headers={"Last-Event-ID": last_id})
    assert not dropped
    seen += rest

    events = [m.json() for m in seen if m.event == "message"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate"
    assert reply_text(seen) == "".join(scripted_reply(PROMPT, 60))
    end = seen[-1]
    assert end.event == "end"
    record = end.json()
    assert record["status"] == "completed"
    assert record["latest_seq"] == seqs[-1]
    assert end.id == f"{run_id}:{seqs[-1]}"

    # A reconnect after the end: 204, which stops EventSource.
    response = await client.get("/v1/chat/runs/c-sse/stream", headers={"Last-Event-ID": end.id})
    assert response.status_code == 204
    stats = server.server.stats()
    assert stats.streams_resumed == 3
    assert stats.open_streams == 0


@pytest.mark.backends
async def test_query_cursor_for_clients_without_headers(server, client, sse):
    run_id = (await client.post("/v1/chat/runs/c-q", json={"prompt": "q"})).json()["run_id"]
    first, _ = await collect(client, sse, "c-q", params={"run_id": run_id}, stop_after_tokens=5)
    after = first[-1].json()["seq"]
    rest, _ = await collect(client, sse, "c-q", params={"run_id": run_id, "after": after})
    seqs = [m.json()["seq"] for m in first + rest if m.event == "message"]
    assert seqs == list(range(1, len(seqs) + 1))
    assert reply_text(first + rest) == "".join(scripted_reply("q", 60))
    # The header wins over the query.
    response = await client.get(
        "/v1/chat/runs/c-q/stream",
        params={"run_id": run_id, "after": 1},
        headers={"Last-Event-ID": f"{run_id}:{seqs[-1]}"},
    )
    assert response.status_code == 204


@pytest.mark.backends
async def test_a_finished_run_replays_from_the_start(server, client, sse):
    run_id = (await client.post("/v1/chat/runs/c-done", json={"prompt": "x"})).json()["run_id"]
    messages, _ = await collect(client, sse, "c-done")  # live to the end
    again, _ = await collect(client, sse, "c-done")  # no cursor: the whole run again
    assert [m.id for m in again] == [m.id for m in messages]
    assert again[-1].event == "end"
    # A cursor naming an older run means that run is over: 204.
    (await client.post("/v1/chat/runs/c-done", json={"prompt": "y"})).raise_for_status()
    response = await client.get("/v1/chat/runs/c-done/stream", params={"run_id": run_id})
    assert response.status_code == 204


@pytest.mark.backends
async def test_trimmed_cursor_gets_a_gap_event(start_server, sse):
    running = await start_server(registry_config=RegistryConfig(max_events_per_run=10))
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/c-gap", json={"prompt": "g"})).json()["run_id"]
        await collect(client, sse, "c-gap")  # wait for the end
        record = await running.server.backend.get("c-gap")
        latest = record.latest_seq
        assert latest > 20
        messages, _ = await collect(client, sse, "c-gap", headers={"Last-Event-ID": f"{run_id}:3"})
    gap = messages[0]
    assert gap.event == "gap"
    assert gap.retry is not None  # retry travels in the first message's block
    assert gap.json() == {"run_id": run_id, "from": 4, "to": latest - 10}
    seqs = [m.json()["seq"] for m in messages if m.event == "message"]
    assert seqs == list(range(latest - 9, latest + 1))
    assert messages[-1].event == "end"


async def test_heartbeat_comments_keep_an_idle_stream_alive(start_server):
    pinged_twice = trio.Event()

    class Slow:
        async def __call__(self, run, request):
            run.push_frame({"type": "token", "text": "a"})
            await pinged_twice.wait()  # silent until the client saw two heartbeats
            run.push_frame({"type": "token", "text": "b"})

    running = await start_server(model=Slow(), heartbeat_interval=0.1)
    lines = []
    async with httpx.AsyncClient(base_url=running.url) as client:
        (await client.post("/v1/chat/runs/hb", json={"prompt": "p"})).raise_for_status()
        async with client.stream("GET", "/v1/chat/runs/hb/stream") as response:
            async for line in response.aiter_lines():
                lines.append(line)
                if lines.count(": ping") == 2:
                    pinged_twice.set()
    body = "\n".join(lines)
    assert body.count(": ping\n") >= 2
    first_ping, second_b = body.index(": ping"), body.index('"text":"b"')
    assert body.index('"text":"a"') < first_ping < second_b
    assert body.rstrip().splitlines()[-1].startswith("data: {")
    assert "event: end" in body


async def test_a_lagging_client_is_closed_and_resumes(start_server, sse):
    """A burst bigger than the subscriber buffer drops the stream; a reconnect resumes."""

    class Bursty:
        async def __call__(self, run, request):
            registry = running.server.registry
            for burst in range(3):
                # Each burst goes to a live subscriber.
                await wait_until(lambda: registry.stats().subscribers > 0)
                for i in range(30):  # no checkpoint: the subscriber cannot keep up
                    run.push_frame({"type": "token", "text": f"{burst}.{i} "})

    running = await start_server(
        model=Bursty(), registry_config=RegistryConfig(subscriber_buffer=4)
    )
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/lag", json={"prompt": "p"})).json()["run_id"]
        seen = []
        headers = {}
        for _attempt in range(20):
            messages, _ = await collect(client, sse, "lag", headers=headers)
            seen += messages
            if messages[-1].event == "end":
                break
            assert messages[-1].event == "lagged"
            lag = messages[-1].json()
            assert messages[-1].id == f"{run_id}:{lag['resume_after']}"
            headers = {"Last-Event-ID": messages[-1].id}
        else:
            raise AssertionError("never reached the end")
    assert any(m.event == "lagged" for m in seen)
    seqs = [m.json()["seq"] for m in seen if m.event == "message"]
    assert seqs == list(range(1, 91))
    assert running.server.registry.stats().lagged_subscribers >= 1
    # ServerStats.streams_lagged: every stream closed with "lagged", each once.
    assert running.server.stats().streams_lagged == sum(m.event == "lagged" for m in seen)
