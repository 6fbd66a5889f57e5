"""The Redis backend on one worker: start, push, replay, follow, end, errors."""

from __future__ import annotations

import sys

import pytest
import trio

from trio_chatruns import (
    ChatRunStatus,
    RegistryConfig,
    ReplayGap,
    RunAlreadyActive,
    RunNotFound,
    RunTerminated,
)
from trio_chatruns.redis import open_redis_chat_runs

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


async def park(run) -> None:
    await trio.sleep_forever()


async def collect(subscription) -> list:
    return [event async for event in subscription]


async def test_start_push_follow_complete(redis_client, key_prefix) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        gate = trio.Event()

        async def producer(run) -> None:
            run.push_frame({"n": 1})
            await gate.wait()
            run.push_frame({"n": 2})
            run.push_frame({"n": 3})

        run = await runs.try_start("c1", producer)
        record = await runs.get("c1")
        assert record is not None and record.status is ChatRunStatus.RUNNING
        assert record.run_id == run.run_id
        with pytest.raises(RunAlreadyActive):
            await runs.try_start("c1", producer)
        async with runs.subscribe("c1") as subscription:
            first = await subscription.__anext__()
            assert (first.seq, first.frame) == (1, {"n": 1})
            gate.set()
            rest = await collect(subscription)
        assert [(e.seq, e.frame) for e in rest] == [(2, {"n": 2}), (3, {"n": 3})]
        final = await run.wait()
        assert final.status is ChatRunStatus.COMPLETED
        record = await runs.get("c1")
        assert record is not None
        assert record.status is ChatRunStatus.COMPLETED
        assert record.latest_seq == 3
        assert record.terminated_at is not None
        # A retained terminal run replays and ends.
        async with runs.subscribe("c1", after=1) as subscription:
            assert [e.seq for e in await collect(subscription)] == [2, 3]
        assert [e.seq for e in await runs.events("c1")] == [1, 2, 3]
        with pytest.raises(RunTerminated):
            run.push_frame({"late": True})
        with pytest.raises(ValueError):
            async with runs.subscribe("c1", after=4):
                pass
        with pytest.raises(RunNotFound):
            async with runs.subscribe("c1", run_id="0" * 32):
                pass
        with pytest.raises(RunNotFound):
            async with runs.subscribe("nobody"):
                pass
        assert await runs.get("nobody") is None
        assert await runs.events("nobody") == []


async def test_replay_gap_after_trim(redis_client, key_prefix) -> None:
    config = RegistryConfig(max_events_per_run=5)
    async with open_redis_chat_runs(redis_client, config, key_prefix=key_prefix) as runs:

        async def producer(run) -> None:
            for n in range(1, 13):
                run.push_frame({"n": n})

        run = await runs.try_start("c", producer)
        await run.wait()
        with pytest.raises(ReplayGap) as info:
            async with runs.subscribe("c", after=3):
                pass
        assert info.value.available_from == 8
        async with runs.subscribe("c", after=7) as subscription:
            assert [e.seq for e in await collect(subscription)] == [8, 9, 10, 11, 12]


async def test_interrupt_ends_cancelled_with_interrupted_frame(redis_client, key_prefix) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        started = trio.Event()

        async def producer(run) -> None:
            run.push_frame({"n": 1})
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                run.push_frame({"cleanup": True})

        run = await runs.try_start("c", producer)
        await started.wait()
        assert await runs.interrupt("c") is True
        final = await run.wait()
        assert final.status is ChatRunStatus.CANCELLED
        frames = [e.frame for e in await runs.events("c")]
        assert frames == [{"n": 1}, {"cleanup": True}, {"type": "interrupted"}]
        assert await runs.interrupt("c") is False


async def test_failing_producer_and_bad_frames(redis_client, key_prefix) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:

        async def producer(run) -> None:
            with pytest.raises(TypeError, match="JSON"):
                run.push_frame({"bad": object()})
            run.push_frame("ok")
            raise RuntimeError("model exploded")

        run = await runs.try_start("c", producer)
        final = await run.wait()
        assert final.status is ChatRunStatus.FAILED
        record = await runs.get("c")
        assert record is not None
        assert record.status is ChatRunStatus.FAILED
        assert record.last_error == "RuntimeError: model exploded"
        assert [e.frame for e in await runs.events("c")] == ["ok"]


async def test_closing_cancels_owned_runs(redis_client, key_prefix) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        await runs.try_start("c", park)
        await trio.lowlevel.checkpoint()
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        record = await runs.get("c")
        assert record is not None and record.status is ChatRunStatus.CANCELLED
        assert [e.frame for e in await runs.events("c")] == [{"type": "interrupted"}]
        runs2 = runs
    with pytest.raises(RuntimeError):
        await runs2.try_start("d", park)


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: ValueError("from the body"),
        lambda: ExceptionGroup("mine", [ValueError("a"), KeyError("b")]),
        lambda: ExceptionGroup("one", [ValueError("only")]),
    ],
    ids=["error", "group", "one-leaf-group"],
)
async def test_an_error_from_the_body_propagates_as_itself(
    redis_client, key_prefix, make_error
) -> None:
    error = make_error()
    with pytest.raises(Exception) as info:
        async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
            await runs.try_start("c", park)
            raise error
    assert info.value is error
