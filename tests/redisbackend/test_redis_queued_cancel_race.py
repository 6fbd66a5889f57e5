"""A queued run cancelled twice at once: its owner (worker A) interrupts it
while worker B's ``interrupt`` start cancels it in Redis, and A has not yet
heard B's message (pub/sub gives no delivery guarantee). A's writer then
finds the end already written: the run is cancelled once, its hook called
once, and nothing claims it "ended failed" or "lost the run's lease"."""

from __future__ import annotations

import logging

import coredis
import trio

from trio_chatruns import ChatRunStatus
from trio_chatruns.redis import RedisChatRuns, open_redis_chat_runs


async def test_owner_interrupting_a_queued_run_another_worker_cancelled(
    redis_server, key_prefix, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="trio_chatruns.redis")
    # B's "cancelled" message to A is lost (A still holds its queued run as
    # queued when its owner interrupts it).
    deliver = RedisChatRuns._on_message

    def lossy(self, kind, conversation_id, run_id):
        if kind != "c":
            deliver(self, kind, conversation_id, run_id)

    monkeypatch.setattr(RedisChatRuns, "_on_message", lossy)
    hooked: list[tuple[str, ChatRunStatus]] = []

    async def hook(record, events):
        hooked.append((record.run_id, record.status))

    release = trio.Event()

    async def producer(run):
        await release.wait()

    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A", on_run_end=hook) as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B", on_run_end=hook) as b,
    ):
        first = await a.try_start("c", producer)
        queued = await a.try_start("c", producer, if_active="enqueue")
        assert queued.record.status is ChatRunStatus.QUEUED
        # B's "interrupt" start cancels A's queued run in Redis ...
        third = await b.try_start("c", producer, if_active="interrupt")
        assert queued.record.status is ChatRunStatus.QUEUED  # A has not heard
        # ... as A's owner interrupts it too.
        assert queued.interrupt()
        final = await queued.wait()
        assert final.status is ChatRunStatus.CANCELLED
        release.set()
        await first.wait()
        await third.wait()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors
    assert sorted(run_id for run_id, _ in hooked) == sorted(
        [first.run_id, queued.run_id, third.run_id]
    )
    assert (queued.run_id, ChatRunStatus.CANCELLED) in hooked
