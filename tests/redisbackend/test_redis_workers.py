"""Two workers sharing one Redis: each is a backend instance with its own
coredis client (and a third test runs the owner in another process, to kill
it). Nothing here is mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial

import coredis
import pytest
import trio

from trio_chatruns import ChatRunStatus, RunAlreadyActive, RunNotFound
from trio_chatruns.redis import RedisUnavailable, open_redis_chat_runs


async def park(run) -> None:
    await trio.sleep_forever()


def stepper():
    """A producer ``producer(run, count)`` pushing ``{"n": i}`` once per
    ``step()`` call, and ``step``."""
    send, receive = trio.open_memory_channel[None](1000)

    async def producer(run, count: int) -> None:
        for n in range(1, count + 1):
            await receive.receive()
            run.push_frame({"n": n})

    def step() -> None:
        send.send_nowait(None)

    return producer, step


async def test_start_on_a_follow_and_resume_on_b(redis_server, key_prefix) -> None:
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A") as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B") as b,
    ):

        async def producer(run) -> None:
            for n in range(1, 31):
                run.push_frame({"n": n})
                await trio.sleep(0.001)

        run = await a.try_start("conv", producer)
        with pytest.raises(RunAlreadyActive):
            await b.try_start("conv", park)
        seen: list[int] = []
        workers = [b, a]
        turn = 0
        # Drop and resume alternating B/A, a few frames at a time.
        while True:
            worker = workers[turn % 2]
            turn += 1
            async with worker.subscribe("conv", after=len(seen), run_id=run.run_id) as sub:
                got_any = False
                async for event in sub:
                    seen.append(event.seq)
                    got_any = True
                    if len(seen) % 7 == 0:
                        break
                else:
                    if not got_any or seen[-1] == 30:
                        break
        assert seen == list(range(1, 31))
        record = await b.get("conv")
        assert record is not None and record.status is ChatRunStatus.COMPLETED
        # Now B can start the next run of the conversation.
        second = await b.try_start("conv", park)
        assert second.run_id != run.run_id
        assert await a.interrupt("conv") is True
        assert (await second.wait()).status is ChatRunStatus.CANCELLED


async def test_one_reader_per_run_per_worker(redis_server, key_prefix) -> None:
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A") as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B") as b,
    ):
        producer, step = stepper()
        run = await a.try_start("conv", producer, 3)
        results: list[list[int]] = []

        async def reader(task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with b.subscribe("conv") as sub:
                task_status.started()
                results.append([event.seq async for event in sub])

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                await nursery.start(reader)
            assert len(b._followers) == 1  # one Redis reader for ten subscribers
            assert (await b.stats()).subscribers == 10
            for _ in range(3):
                step()
                await trio.lowlevel.checkpoint()
        assert results == [[1, 2, 3]] * 10
        await run.wait()
        assert b._followers == {}


async def test_interrupt_through_b_reaches_owner_a(redis_server, key_prefix) -> None:
    # A long lease: the interrupt must come over pub/sub, not at a renewal.
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A", lease=600) as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B", lease=600) as b,
    ):
        started = trio.Event()

        async def producer(run) -> None:
            run.push_frame({"token": "hi"})
            started.set()
            await trio.sleep_forever()

        run = await a.try_start("conv", producer)
        await started.wait()
        async with b.subscribe("conv") as sub:
            assert await b.interrupt("conv") is True
            frames = [event.frame async for event in sub]
        assert frames == [{"token": "hi"}, {"type": "interrupted"}]
        assert (await run.wait()).status is ChatRunStatus.CANCELLED
        assert (await b.get("conv")).status is ChatRunStatus.CANCELLED
        assert await b.interrupt("conv") is False


OWNER_SCRIPT = """
import sys, coredis, trio
from trio_chatruns.redis import open_redis_chat_runs

async def producer(run):
    run.push_frame({"n": 1})
    await trio.sleep_forever()

async def main(url, prefix):
    async with coredis.Redis.from_url(url) as client:
        async with open_redis_chat_runs(client, key_prefix=prefix, lease=1.0,
                                        worker_id="doomed") as runs:
            run = await runs.try_start("conv", producer)
            async with runs.subscribe("conv") as sub:
                await sub.__anext__()  # the frame is in Redis
            print(run.run_id, flush=True)
            await trio.sleep_forever()

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_owner_killed_run_fails_within_lease(redis_server, key_prefix) -> None:
    ended = []

    async def hook(record, events) -> None:
        ended.append((record, [event.frame for event in events]))

    async with (
        coredis.Redis.from_url(redis_server.url) as client,
        open_redis_chat_runs(
            client, key_prefix=key_prefix, worker_id="B", lease=1.0, on_run_end=hook
        ) as b,
        trio.open_nursery() as nursery,
    ):
        process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-c", OWNER_SCRIPT, redis_server.url, key_prefix],
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some()
            assert chunk, "the owner process exited early"
            line += chunk
        run_id = line.decode().strip()
        async with b.subscribe("conv", run_id=run_id) as sub:
            first = await sub.__anext__()
            assert first.frame == {"n": 1}
            os.kill(process.pid, signal.SIGKILL)
            # The stream on B ends once the lease lapses: B reaps the run.
            rest = [event async for event in sub]
        assert rest == []
        record = await b.get("conv")
        assert record is not None
        assert record.status is ChatRunStatus.FAILED
        assert "doomed" in record.last_error and "lease" in record.last_error
        # The conversation can start a new run, through B.
        new = await b.try_start("conv", park)
        assert new.run_id != run_id
        await b.interrupt("conv")
        await new.wait()
    # B ended the dead owner's run, so B's hook got it (once), with its frame.
    dead = [(r, f) for r, f in ended if r.run_id == run_id]
    assert len(dead) == 1
    assert dead[0][0].status is ChatRunStatus.FAILED and dead[0][1] == [{"n": 1}]


async def test_redis_restarted_mid_run(own_redis, key_prefix) -> None:
    async with (
        coredis.Redis.from_url(own_redis.url) as client_a,
        coredis.Redis.from_url(own_redis.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A", lease=2.0) as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B", lease=2.0) as b,
    ):
        producer, step = stepper()
        run = await a.try_start("conv", producer, 1000)
        step()
        async with b.subscribe("conv") as sub:
            assert (await sub.__anext__()).seq == 1
            own_redis.stop()
            with pytest.raises(RedisUnavailable, match="Redis is unavailable for get"):
                await b.get("conv")
            with pytest.raises(RedisUnavailable):
                await b.try_start("other", park)
            step()  # a frame while Redis is down: pushing never waits
            await trio.lowlevel.checkpoint()
            own_redis.start()  # empty: no persistence
            # The run's data is gone; the owner says so and ends it failed.
            final = await run.wait()
            assert final.status is ChatRunStatus.FAILED
            assert "no longer in Redis" in final.last_error
            with pytest.raises(RunNotFound):
                async for _ in sub:
                    pass
        # Both workers recovered: a new run starts on B and is followed on A.
        done = await b.try_start("conv", lambda_producer)
        async with a.subscribe("conv", run_id=done.run_id) as sub:
            assert [event.frame async for event in sub] == ["after restart"]
        # And an interrupt through A still reaches B (pub/sub reconnected).
        parked = await b.try_start("parked", park)
        async with a.subscribe("parked") as sub:
            assert await a.interrupt("parked") is True
            assert [event.frame async for event in sub] == [{"type": "interrupted"}]
        assert (await parked.wait()).status is ChatRunStatus.CANCELLED


async def lambda_producer(run) -> None:
    run.push_frame("after restart")


async def test_owner_renews_its_lease_while_the_run_lasts(redis_server, key_prefix) -> None:
    # A run that outlives several leases stays running: the owner renews it.
    # (A lease of 1 s, not less: on a loaded 2-core machine a shorter one lapses
    # whenever the owner is not scheduled for that long.)
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A", lease=1.0) as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B", lease=1.0) as b,
    ):
        run = await a.try_start("conv", park)
        key = f"{key_prefix}:{{conv}}:run"
        first = int(await client_b.hget(key, "lease_until"))
        # Wait (polling Redis, the event itself) until the lease was renewed
        # past two original leases; B's reads reap a lapsed run, so each
        # get() also checks it never lapsed.
        renewed = first
        for _ in range(1000):
            record = await b.get("conv")
            assert record.status is ChatRunStatus.RUNNING, record.last_error
            renewed = int(await client_b.hget(key, "lease_until"))
            if renewed >= first + 2000:
                break
            await trio.sleep(0.02)
        assert renewed >= first + 2000
        assert await b.interrupt("conv") is True
        assert (await run.wait()).status is ChatRunStatus.CANCELLED


async def test_frames_unwritable_end_the_run_failed(own_redis, key_prefix) -> None:
    async with (
        coredis.Redis.from_url(own_redis.url) as client,
        open_redis_chat_runs(client, key_prefix=key_prefix, write_timeout=0.5, lease=60) as a,
    ):
        gate = trio.Event()
        cancelled = trio.Event()

        async def producer(run) -> None:
            run.push_frame("before")
            await gate.wait()
            run.push_frame("while down")
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

        run = await a.try_start("conv", producer)
        async with a.subscribe("conv") as sub:
            assert (await sub.__anext__()).frame == "before"
        own_redis.stop()
        gate.set()
        final = await run.wait()
        await cancelled.wait()  # the producer was stopped, not left running
        assert final.status is ChatRunStatus.FAILED
        assert "1 frame(s) could not be written to Redis" in final.last_error
        with pytest.raises(RedisUnavailable):
            await a.get("conv")
        own_redis.start()
        # Redis came back empty; the backend works again.
        again = await a.try_start("conv", park)
        assert await a.interrupt("conv") is True
        await again.wait()


async def test_concurrent_starts_across_workers_one_wins(redis_server, key_prefix) -> None:
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=key_prefix, worker_id="A") as a,
        open_redis_chat_runs(client_b, key_prefix=key_prefix, worker_id="B") as b,
    ):
        started, refused = [], []

        async def start(worker) -> None:
            try:
                started.append(await worker.try_start("conv", park))
            except RunAlreadyActive as exc:
                refused.append(exc.run_id)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(start, a if i % 2 else b)
        assert len(started) == 1 and len(refused) == 19
        assert set(refused) == {started[0].run_id}
        assert await a.interrupt("conv") is True
        await started[0].wait()
