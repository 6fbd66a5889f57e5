"""The page, stats, and the scripted model's status walk and failure path."""

from __future__ import annotations

import trio

from trio_chatruns.server import ScriptedModel


async def follow(registry, conversation_id):
    async with registry.subscribe(conversation_id) as subscription:
        return [event.frame async for event in subscription], subscription.record


async def test_page_and_script_are_served_without_a_cdn(client):
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/app.js"></script>' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    script = await client.get("/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "new EventSource(" in script.text


async def test_stats(server, client):
    (await client.post("/v1/chat/runs/st", json={"prompt": "p"})).raise_for_status()
    stats = (await client.get("/v1/stats")).json()
    assert stats["registry"]["active"] == 1
    assert stats["server"] == {
        "open_streams": 0, "streams_opened": 0, "streams_resumed": 0, "streams_dropped": 0,
        "streams_lagged": 0, "run_failures": 0,
    }  # fmt: skip


async def test_scripted_model_walks_every_active_status(server, client):
    (await client.post("/v1/chat/runs/walk", json={"prompt": "p"})).raise_for_status()
    with trio.fail_after(10):
        frames, record = await follow(server.server.registry, "walk")
    statuses = [f["status"] for f in frames if f["type"] == "status"]
    assert set(statuses) == {"running", "waiting_approval", "waiting_hitl"}
    tools = [f.get("current_tool") for f in frames if f["type"] == "status"]
    assert "search" in tools
    assert [f["type"] for f in frames if f["type"].startswith("tool")] == [
        "tool_call",
        "tool_result",
    ]
    assert record.status.value == "completed"
    assert record.current_tool is None
    assert frames[-1] == {"type": "done", "finish_reason": "stop"}


async def test_scripted_failure_and_interrupt(start_server):
    import httpx

    running = await start_server(model=ScriptedModel(tokens_per_second=100))
    async with httpx.AsyncClient(base_url=running.url) as client:
        (await client.post("/v1/chat/runs/f", json={"prompt": "/fail now"})).raise_for_status()
        with trio.fail_after(10):
            frames, record = await follow(running.server.registry, "f")
        assert record.status.value == "failed"
        assert record.last_error == "scripted failure requested by the prompt"
        assert frames[-1]["type"] == "error"

        (await client.post("/v1/chat/runs/i", json={"prompt": "p"})).raise_for_status()
        with trio.fail_after(10):  # mid-reply: once the first frame is out
            async with running.server.registry.subscribe("i") as subscription:
                await subscription.__anext__()
        assert (await client.post("/v1/chat/runs/i/interrupt")).status_code == 200
        with trio.fail_after(10):
            frames, record = await follow(running.server.registry, "i")
        assert record.status.value == "cancelled"
        assert frames[-1] == {"type": "interrupted"}


async def test_prompt_length_limit(start_server):
    import httpx

    running = await start_server(max_prompt_chars=10)
    async with httpx.AsyncClient(base_url=running.url) as client:
        response = await client.post("/v1/chat/runs/long", json={"prompt": "x" * 11})
    assert response.status_code == 400
    assert "longer than 10" in response.json()["error"]
