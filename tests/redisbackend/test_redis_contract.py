"""The registry contract, run against both backends: the in-memory
``ChatRunRegistry`` and the Redis backend on a real redis-server. The
in-memory registry's synchronous methods are awaited through a thin adapter,
so one test body states the rule for both."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_chatruns import (
    ChatRunStatus,
    RegistryConfig,
    ReplayGap,
    RunAlreadyActive,
    RunNotFound,
    RunTerminated,
    SubscriberLagged,
)


async def park(run) -> None:
    await trio.sleep_forever()


def pusher(count: int, status: str | None = None):
    async def producer(run) -> None:
        for n in range(1, count + 1):
            run.push_frame({"n": n}, status=status if n == count else None)

    return producer


async def ended(backend: Any, run) -> Any:
    await run.wait()
    # The Redis owner's wait() returns once the end is written: any reader sees it.
    return await backend.get(run.conversation_id)


async def test_one_active_run_per_conversation(open_backend) -> None:
    async with open_backend() as backend:
        run = await backend.try_start("c", park)
        with pytest.raises(RunAlreadyActive) as info:
            await backend.try_start("c", park)
        assert info.value.run_id == run.run_id
        with pytest.raises(TypeError):
            await backend.try_start("c", lambda run: None)
        with pytest.raises(ValueError):
            await backend.try_start("", park)
        assert await backend.interrupt("c") is True
        record = await ended(backend, run)
        assert record.status is ChatRunStatus.CANCELLED
        again = await backend.try_start("c", pusher(1))
        assert again.run_id != run.run_id


async def test_replay_from_any_cursor_then_end(open_backend) -> None:
    async with open_backend() as backend:
        run = await backend.try_start("c", pusher(5))
        record = await ended(backend, run)
        assert (record.status, record.latest_seq) == (ChatRunStatus.COMPLETED, 5)
        for after in range(6):
            async with backend.subscribe("c", after=after) as sub:
                assert [e.seq async for e in sub] == list(range(after + 1, 6))
        with pytest.raises(ValueError):
            async with backend.subscribe("c", after=6):
                pass
        with pytest.raises(RunNotFound):
            async with backend.subscribe("c", run_id="f" * 32):
                pass
        assert [e.frame for e in await backend.events("c", after=3)] == [{"n": 4}, {"n": 5}]


async def test_replay_gap_names_oldest_buffered(open_backend) -> None:
    async with open_backend(RegistryConfig(max_events_per_run=3)) as backend:
        run = await backend.try_start("c", pusher(10))
        await ended(backend, run)
        with pytest.raises(ReplayGap) as info:
            async with backend.subscribe("c", after=2):
                pass
        assert (info.value.after, info.value.available_from) == (2, 8)
        async with backend.subscribe("c", after=7) as sub:
            assert [e.seq async for e in sub] == [8, 9, 10]


async def test_live_follow_no_gap_no_duplicate(open_backend) -> None:
    async with open_backend() as backend:
        send, receive = trio.open_memory_channel[int](100)

        async def producer(run) -> None:
            async for n in receive:
                run.push_frame({"n": n})

        run = await backend.try_start("c", producer)
        send.send_nowait(1)
        send.send_nowait(2)
        async with backend.subscribe("c") as sub:
            assert [(await sub.__anext__()).seq for _ in range(2)] == [1, 2]
        # Resume from a cursor in the middle, then follow live frames.
        async with backend.subscribe("c", after=1) as sub:
            for n in range(3, 8):
                send.send_nowait(n)
            await send.aclose()
            assert [e.seq async for e in sub] == [2, 3, 4, 5, 6, 7]
        assert (await ended(backend, run)).status is ChatRunStatus.COMPLETED


async def test_terminal_status_pushed_ends_run(open_backend) -> None:
    async with open_backend() as backend:
        handles = []

        async def producer(run) -> None:
            handles.append(run)
            run.push_frame("last", status="failed", error="boom")
            with pytest.raises(RunTerminated):
                run.push_frame("too late")

        run = await backend.try_start("c", producer)
        record = await ended(backend, run)
        assert (record.status, record.last_error, record.latest_seq) == (
            ChatRunStatus.FAILED,
            "boom",
            1,
        )
        with pytest.raises(RunTerminated):
            handles[0].update("running")


async def test_producer_error_and_interrupt_rules(open_backend) -> None:
    async with open_backend() as backend:

        async def failing(run) -> None:
            run.push_frame("a")
            raise ValueError("bad model")

        run = await backend.try_start("f", failing)
        record = await ended(backend, run)
        assert (record.status, record.last_error) == (ChatRunStatus.FAILED, "ValueError: bad model")

        started = trio.Event()

        async def unwinding(run) -> None:
            run.push_frame("x")
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                run.push_frame("bye")

        run = await backend.try_start("i", unwinding)
        await started.wait()
        assert await backend.interrupt("i") is True
        record = await ended(backend, run)
        assert record.status is ChatRunStatus.CANCELLED
        assert [e.frame for e in await backend.events("i")] == ["x", "bye", {"type": "interrupted"}]
        assert await backend.interrupt("i") is False
        assert await backend.interrupt("nobody") is False


async def test_zero_retention_and_cap_oldest_first(open_backend) -> None:
    async with open_backend(RegistryConfig(terminal_retention=0)) as backend:
        run = await backend.try_start("gone", pusher(1))
        await run.wait()
        assert await backend.get("gone") is None
        with pytest.raises(RunNotFound):
            async with backend.subscribe("gone"):
                pass
    async with open_backend(RegistryConfig(max_retained_terminal=2)) as backend:
        for name in ("a", "b", "c", "d"):
            await (await backend.try_start(name, pusher(1))).wait()
        assert [await backend.get(name) is None for name in "abcd"] == [True, True, False, False]
        active = await backend.try_start("e", park)
        assert (await backend.stats()).retained_terminal == 2
        assert (await backend.get("e")).status is ChatRunStatus.RUNNING
        active.interrupt()
        await active.wait()
        assert await backend.get("c") is None  # the oldest ended went first
        assert (await backend.stats()).retained_terminal == 2


async def test_slow_subscriber_lags_producer_never_waits(open_backend) -> None:
    async with open_backend(RegistryConfig(subscriber_buffer=2)) as backend:
        gate = trio.Event()

        async def producer(run) -> None:
            run.push_frame(0)
            await gate.wait()
            for n in range(1, 50):
                run.push_frame(n)

        run = await backend.try_start("c", producer)
        async with backend.subscribe("c") as sub:
            first = await sub.__anext__()
            assert first.seq == 1
            gate.set()
            await run.wait()
            # Redis: the follower reads the frames back after they are written.
            while (await backend.stats()).lagged_subscribers < 1:
                await trio.lowlevel.checkpoint()
            with pytest.raises(SubscriberLagged) as info:
                async for _ in sub:
                    pass
            assert info.value.resume_after >= 1
        assert (await backend.stats()).lagged_subscribers == 1
        async with backend.subscribe("c", after=info.value.resume_after) as sub:
            assert [e.seq async for e in sub][-1] == 50


async def test_list_and_stats(open_backend) -> None:
    async with open_backend() as backend:
        parked = await backend.try_start("p", park)
        await (await backend.try_start("done", pusher(2))).wait()
        records = await backend.list()
        assert {r.conversation_id for r in records} == {"p", "done"}
        assert [r.conversation_id for r in await backend.list(active_only=True)] == ["p"]
        stats = await backend.stats()
        assert (stats.active, stats.retained_terminal) == (1, 1)
        parked.interrupt()
        await parked.wait()
