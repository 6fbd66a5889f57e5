"""Byte budgets against both backends (the in-memory registry and the Redis
backend on a real redis-server): the rules of ``tests/test_budgets.py`` that
do not need ``MockClock``. On Redis the stream is trimmed by bytes in the
``WRITE`` script and the retained runs' bytes are kept cluster-wide by
``INDEX``; both answers are read once the run's end is written
(``run.wait()``)."""

from __future__ import annotations

import pytest
import trio

from trio_chatruns import ChatRunStatus, RegistryConfig, ReplayGap


async def park(run) -> None:
    await trio.sleep_forever()


def pushing(*frames: str, status: str | None = None):
    async def producer(run) -> None:
        for n, frame in enumerate(frames, 1):
            run.push_frame(frame, status=status if n == len(frames) else None)
        await trio.sleep_forever()

    return producer


async def written(backend, cid: str, count: int) -> None:
    """Wait until ``count`` frames of the current run are in the backend
    (Redis: written by the owner's writer)."""
    while (record := await backend.get(cid)) is None or record.latest_seq < count:
        await trio.lowlevel.checkpoint()


async def test_nothing_is_measured_without_a_budget(open_backend) -> None:
    calls = []

    def size(frame) -> int:  # pragma: no cover - must not be called
        calls.append(frame)
        return 1

    async with open_backend(RegistryConfig(frame_size=size)) as backend:
        run = await backend.try_start("c", park)
        run.push_frame({"a": 1})
        assert (await backend.stats()).buffered_bytes is None
        run.interrupt()
        await run.wait()
    assert calls == []


async def test_byte_trimming_gives_replay_gap_with_the_right_available_from(open_backend) -> None:
    config = RegistryConfig(max_bytes_per_run=10, frame_size=len)
    async with open_backend(config) as backend:
        run = await backend.try_start("c", pushing("aaaa", "bbbb", "cccc"))
        await written(backend, "c", 3)  # 12 bytes > 10: "aaaa" goes
        assert [e.frame for e in await backend.events("c")] == ["bbbb", "cccc"]
        assert (await backend.stats()).buffered_bytes == 8
        with pytest.raises(ReplayGap) as info:
            async with backend.subscribe("c", after=0):
                pass  # pragma: no cover
        assert (info.value.after, info.value.available_from) == (0, 2)
        async with backend.subscribe("c", after=1) as subscription:  # accepting the gap
            run.push_frame("d", status="completed")
            assert [e.seq async for e in subscription] == [2, 3, 4]


async def test_a_frame_larger_than_the_budget_is_kept_alone(open_backend) -> None:
    config = RegistryConfig(max_bytes_per_run=10, frame_size=len)
    async with open_backend(config) as backend:
        run = await backend.try_start("c", pushing("small", "x" * 100))
        await written(backend, "c", 2)
        assert [e.seq for e in await backend.events("c")] == [2]
        assert (await backend.stats()).buffered_bytes == 100
        run.push_frame("tiny")  # the big one goes once a newer frame arrives
        await written(backend, "c", 3)
        assert [e.frame for e in await backend.events("c")] == ["tiny"]
        run.interrupt()
        await run.wait()


async def test_the_count_limit_still_applies_with_a_byte_budget(open_backend) -> None:
    config = RegistryConfig(max_events_per_run=2, max_bytes_per_run=1000, frame_size=len)
    async with open_backend(config) as backend:
        run = await backend.try_start("c", pushing("a", "b", "c"))
        await written(backend, "c", 3)
        assert [e.frame for e in await backend.events("c")] == ["b", "c"]
        assert (await backend.stats()).buffered_bytes == 2
        run.interrupt()
        await run.wait()


async def test_a_bad_frame_size_refuses_the_push_and_changes_nothing(open_backend) -> None:
    results = iter([-1, "3", 2.0])

    def size(frame):
        if frame == {"type": "interrupted"}:
            raise RuntimeError("our own frame must end the run anyway")
        return next(results)

    config = RegistryConfig(max_bytes_per_run=100, frame_size=size)
    async with open_backend(config) as backend:
        run = await backend.try_start("c", park)
        with pytest.raises(ValueError, match="frame_size"):
            run.push_frame("x")
        with pytest.raises(TypeError, match="frame_size"):
            run.push_frame("x")
        with pytest.raises(TypeError, match="frame_size"):
            run.push_frame("x")
        assert run.record.latest_seq == 0
        assert (await backend.stats()).buffered_bytes == 0
        run.interrupt()
        assert (await run.wait()).status is ChatRunStatus.CANCELLED
        assert (await backend.stats()).buffered_bytes == len('{"type":"interrupted"}')


async def test_max_retained_bytes_evicts_the_oldest_ended_terminal_runs(open_backend) -> None:
    config = RegistryConfig(max_retained_bytes=10, frame_size=len)
    async with open_backend(config) as backend:
        for cid in ("a", "b", "c"):
            run = await backend.try_start(cid, park)
            run.push_frame("xxxx", status="completed")  # 4 bytes each
            await run.wait()
        active = await backend.try_start("d", park)
        active.push_frame("y" * 50)  # active runs never count and are never evicted
        stats = await backend.stats()
        assert (stats.retained_terminal, stats.evicted_bytes) == (2, 1)
        assert await backend.get("a") is None
        assert await backend.get("b") is not None
        assert stats.buffered_bytes == 8 + 50
        big = await backend.try_start("e", park)
        big.push_frame("z" * 11, status="completed")  # alone over the budget: evicted too
        await big.wait()
        stats = await backend.stats()
        assert stats.evicted_bytes == 4
        assert stats.retained_terminal == 0
        assert stats.buffered_bytes == 50
        assert (stats.evicted_ttl, stats.evicted_lru) == (0, 0)
        assert [await backend.get(cid) is None for cid in "abcde"] == [True] * 3 + [False, True]
        active.interrupt()
        await active.wait()


async def test_queued_runs_are_never_evicted_by_bytes(open_backend) -> None:
    config = RegistryConfig(max_retained_bytes=0, frame_size=len)
    async with open_backend(config) as backend:
        first = await backend.try_start("c", park)
        queued = await backend.try_start("c", park, if_active="enqueue")
        queued.push_frame("waiting")
        first.push_frame("x", status="completed")  # replaced by the queued run, not evicted
        await first.wait()
        assert (await backend.get("c")).run_id == queued.run_id
        stats = await backend.stats()
        assert (stats.evicted_bytes, stats.buffered_bytes) == (0, 7)
        queued.interrupt()
        await queued.wait()
        assert await backend.get("c") is None  # evicted when it ended: 0 bytes allowed
        stats = await backend.stats()
        assert (stats.evicted_bytes, stats.buffered_bytes) == (1, 0)
