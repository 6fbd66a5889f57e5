"""``serve --redis`` cancelled (a second Ctrl+C, or the caller cancelling it
instead of a graceful shutdown): it ends cleanly, the cancellation propagates
as itself, and nothing complains that Redis connections were closed."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

from trio_chatruns.server import ScriptedModel, ServerSettings, serve

pytest.importorskip("coredis")

SLOW = ScriptedModel(tokens_per_second=40.0, reply_tokens=400, pause_tokens=0)


@pytest.mark.parametrize("attempt", range(3))  # the teardown race shows about one time in three
async def test_a_cancelled_redis_server_ends_cleanly(redis_url, caplog, attempt):
    caplog.set_level(logging.WARNING)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                lambda task_status: serve(
                    SLOW,
                    ServerSettings(port=0, redis=redis_url, graceful_timeout=2.0),
                    handle_signals=False,
                    task_status=task_status,
                )
            )
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
                started = await client.post(f"/v1/chat/runs/hard{attempt}", json={"prompt": "x"})
                assert started.status_code == 202, started.text
                # The run is live on this worker: its producer, writer, lease.
                record = (await client.get(f"/v1/chat/runs/hard{attempt}")).json()
                assert record["status"] == "running", record
            scope.cancel()
    # Cancelled propagated as itself (no ExceptionGroup with a non-cancel error).
    assert scope.cancelled_caught
    noisy = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and any(word in r.getMessage() for word in ("ClosedResourceError", "Connection lost"))
    ]
    assert not noisy
