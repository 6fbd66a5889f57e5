"""Every error status of the HTTP API, with the registry unchanged afterwards."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from trio_chatruns import RegistryConfig


async def wait_until_terminal(registry, conversation_id):
    """Follow the run to its end (the subscription ends after the terminal frame)."""
    async with registry.subscribe(conversation_id) as subscription:
        async for _ in subscription:
            pass


def snapshot(running):
    registry = running.server.registry
    stats = attrs.asdict(registry.stats())
    stats.pop("frames_pushed")  # runs still streaming keep pushing
    return [(r.conversation_id, r.run_id) for r in registry.list()], stats


class Waits:
    """A model that stays active until interrupted."""

    async def __call__(self, run, request):
        run.push_frame({"type": "token", "text": "…"})
        await trio.sleep_forever()


@pytest.fixture
async def busy(start_server):
    running = await start_server(
        model=Waits(), max_active_runs=2, max_subscribers_per_run=1, max_body_bytes=1024
    )
    async with httpx.AsyncClient(base_url=running.url) as client:
        for cid in ("a", "b"):
            assert (
                await client.post(f"/v1/chat/runs/{cid}", json={"prompt": "p"})
            ).status_code == 202
        yield running, client


JSON = {"content-type": "application/json"}
"""Bodies sent with ``content=`` need it said (415 otherwise); httpx's ``json=`` says it."""


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        # invalid conversation ids
        ("POST", "/v1/chat/runs/bad%20id", {"json": {"prompt": "p"}}, 400),
        ("POST", "/v1/chat/runs/" + "x" * 129, {"json": {"prompt": "p"}}, 400),
        ("GET", "/v1/chat/runs/%C3%A9", {}, 400),
        ("GET", "/v1/chat/runs/bad%2Fid/events", {}, 404),  # %2F is a path separator to the router
        ("POST", "/v1/chat/runs/a%21/interrupt", {}, 400),
        ("GET", "/v1/chat/runs/a%21/stream", {}, 400),
        # bodies
        ("POST", "/v1/chat/runs/new", {"content": b"not json", "headers": JSON}, 400),
        ("POST", "/v1/chat/runs/new", {"json": {"prompt": 3}}, 400),
        ("POST", "/v1/chat/runs/new", {"json": ["prompt"]}, 400),
        ("POST", "/v1/chat/runs/new", {"json": {"prompt": "   "}}, 400),
        ("POST", "/v1/chat/runs/new", {"json": {"prompt": "x" * 2000}}, 413),
        # state conflicts and caps
        ("POST", "/v1/chat/runs/a", {"json": {"prompt": "p"}}, 409),
        ("POST", "/v1/chat/runs/c", {"json": {"prompt": "p"}}, 429),
        # unknown runs
        ("GET", "/v1/chat/runs/nope", {}, 404),
        ("GET", "/v1/chat/runs/nope/events", {}, 404),
        ("POST", "/v1/chat/runs/nope/interrupt", {}, 404),
        ("GET", "/v1/chat/runs/nope/stream", {}, 404),
        # bad queries and cursors
        ("GET", "/v1/chat/runs?active=maybe", {}, 400),
        ("GET", "/v1/chat/runs/a/events?after=-1", {}, 400),
        ("GET", "/v1/chat/runs/a/stream?after=x", {}, 400),
        ("GET", "/v1/chat/runs/a/stream?after=99", {}, 400),
        ("GET", "/v1/chat/runs/a/stream", {"headers": {"Last-Event-ID": "garbage"}}, 400),
        # routing
        ("GET", "/v1/nothing-here", {}, 404),
        ("DELETE", "/v1/chat/runs/a", {}, 405),
    ],
)
async def test_error_statuses(busy, method, path, kwargs, status):
    running, client = busy
    before = snapshot(running)
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["error"], str)
    assert snapshot(running) == before


async def test_too_many_subscribers(busy):
    running, client = busy
    before = snapshot(running)
    with trio.CancelScope() as scope:
        async with client.stream("GET", "/v1/chat/runs/a/stream") as first:
            assert first.status_code == 200
            second = await client.get("/v1/chat/runs/a/stream")
            assert second.status_code == 429
            assert second.json() == {"error": "too many streams open for this run"}
            scope.cancel()
    with trio.fail_after(5):  # the server notices the disconnect
        await running.server.wait_streams_closed()
    assert snapshot(running) == before


async def test_body_limit_without_content_length(busy):
    running, client = busy

    async def chunks():
        for _ in range(10):
            yield b"x" * 200

    response = await client.post("/v1/chat/runs/new", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert running.server.registry.get("new") is None


async def test_interrupt_and_status_codes_of_success(busy):
    running, client = busy
    response = await client.post("/v1/chat/runs/a/interrupt")
    assert response.status_code == 200
    assert response.json()["interrupted"] is True
    with trio.fail_after(5):
        await wait_until_terminal(running.server.registry, "a")
    record = (await client.get("/v1/chat/runs/a")).json()
    assert record["status"] == "cancelled"
    events = (await client.get("/v1/chat/runs/a/events", params={"after": 1})).json()
    assert [e["frame"] for e in events["events"]] == [{"type": "interrupted"}]
    # No longer active: a second interrupt is a 404, a new prompt is accepted.
    assert (await client.post("/v1/chat/runs/a/interrupt")).status_code == 404
    assert (await client.post("/v1/chat/runs/a", json={"prompt": "again"})).status_code == 202
    runs = (await client.get("/v1/chat/runs", params={"active": "true"})).json()["runs"]
    assert sorted(r["conversation_id"] for r in runs) == ["a", "b"]
    all_runs = (await client.get("/v1/chat/runs")).json()["runs"]
    assert [r["updated_at"] for r in all_runs] == sorted(
        (r["updated_at"] for r in all_runs), reverse=True
    )


async def test_closing_server_refuses_new_work(start_server):
    running = await start_server(registry_config=RegistryConfig())
    running.server.begin_shutdown()
    async with httpx.AsyncClient(base_url=running.url) as client:
        response = await client.post("/v1/chat/runs/z", json={"prompt": "p"})
        assert response.status_code == 503
        assert "shutting down" in response.json()["error"]
