"""Followers and the coredis connection pool: each follower's blocking
``XREAD`` holds a connection of the pool while it waits, so a worker
following more runs than the pool has connections would leave none for its
other commands. Followers hold at most half of the pool and take turns past
that; every subscriber still gets every frame, in order."""

from __future__ import annotations

import coredis
import trio

from trio_chatruns import ChatRunStatus
from trio_chatruns.redis import open_redis_chat_runs
from trio_chatruns.redis._follower import _blocking_read_slots

RUNS = 6
FRAMES = 5


async def test_more_followed_runs_than_connections(redis_server, key_prefix) -> None:
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url, max_connections=4) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A") as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B") as b,
    ):
        go = trio.Event()

        async def producer(run) -> None:
            await go.wait()
            for n in range(1, FRAMES + 1):
                run.push_frame({"n": n})
                await trio.lowlevel.checkpoint()

        for i in range(RUNS):
            await a.try_start(f"c{i}", producer)
        slots = _blocking_read_slots(b._store)
        assert slots.total_tokens == 2  # half of max_connections=4
        seen: dict[str, list[int]] = {}

        async def reader(cid: str, task_status) -> None:
            async with b.subscribe(cid) as sub:
                task_status.started()
                seen[cid] = [event.frame["n"] async for event in sub]

        async with trio.open_nursery() as nursery:
            for i in range(RUNS):
                await nursery.start(reader, f"c{i}")
            # Six followers, two reading at a time: ordinary commands of
            # this worker still get a connection.
            assert slots.statistics().borrowed_tokens <= 2
            for i in range(RUNS):
                record = await b.get(f"c{i}")
                assert record is not None and record.status is ChatRunStatus.RUNNING
            assert slots.statistics().borrowed_tokens <= 2
            go.set()
        assert seen == {f"c{i}": list(range(1, FRAMES + 1)) for i in range(RUNS)}
