"""The run-end hook on the Redis backend, and the 0.2 options it refuses."""

from __future__ import annotations

import pytest
import trio

from trio_chatruns import ChatRunStatus, RegistryConfig
from trio_chatruns.redis import open_redis_chat_runs


async def park(run) -> None:
    await trio.sleep_forever()


async def test_hook_once_per_run_with_final_record_and_frames(redis_client, key_prefix) -> None:
    calls = []

    async def hook(record, events) -> None:
        await trio.lowlevel.checkpoint()
        calls.append((record, [event.frame for event in events]))

    async def two_frames(run) -> None:
        run.push_frame("a")
        run.push_frame("b")

    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix, on_run_end=hook) as runs:
        first = await runs.try_start("c", two_frames)
        await first.wait()
        await runs.try_start("c", park)
        await runs.try_start("other", park)
    # Leaving waited for the hooks of the runs the closing cancelled.
    by_run = {record.run_id: (record, frames) for record, frames in calls}
    assert len(calls) == 3 and len(by_run) == 3
    record, frames = by_run[first.run_id]
    assert (record.status, record.latest_seq, frames) == (ChatRunStatus.COMPLETED, 2, ["a", "b"])
    cancelled = [r for r, f in calls if r.run_id != first.run_id]
    assert {r.status for r in cancelled} == {ChatRunStatus.CANCELLED}
    assert all(f == [{"type": "interrupted"}] for r, f in calls if r.run_id != first.run_id)
    # One conversation's hooks ran in the order its runs ended.
    assert next(r.run_id for r, _ in calls if r.conversation_id == "c") == first.run_id


async def test_failing_hook_is_counted_and_changes_nothing(redis_client, key_prefix) -> None:
    async def hook(record, events) -> None:
        raise RuntimeError("audit store down")

    async def one(run) -> None:
        run.push_frame(1)

    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix, on_run_end=hook) as runs:
        await (await runs.try_start("c", one)).wait()
        await (await runs.try_start("c", one)).wait()
        while (await runs.stats()).run_end_failures < 2:
            await trio.lowlevel.checkpoint()
        assert (await runs.get("c")).status is ChatRunStatus.COMPLETED


async def test_bad_options_are_refused(redis_client, key_prefix) -> None:
    with pytest.raises(TypeError):
        async with open_redis_chat_runs(redis_client, on_run_end=lambda r, e: None):
            pass
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        with pytest.raises(ValueError):
            await runs.try_start("c", park, if_active="shove")
        run = await runs.try_start("c", park, if_active="reject")
        assert await runs.queued("c") == []
        run.interrupt()
        await run.wait()


async def test_the_owners_hook_gets_the_frames_without_reading_them(
    redis_client, key_prefix, monkeypatch
) -> None:
    """The WRITE of the end answers with the run's frames: the hook needs no
    read that could hang, fail, or find the stream replaced already."""
    calls = []

    async def hook(record, events) -> None:
        calls.append((record, [e.frame for e in events]))

    async def one(run) -> None:
        run.push_frame("a")

    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix, on_run_end=hook) as runs:

        async def unanswered(*args, **kwargs):  # pragma: no cover - must not be called
            await trio.sleep_forever()

        monkeypatch.setattr(runs._store, "frames", unanswered)
        run = await runs.try_start("c", one)
        await run.wait()
    assert [(r.run_id, r.status, r.latest_seq, e) for r, e in calls] == [
        (run.run_id, ChatRunStatus.COMPLETED, 1, ["a"])
    ]


async def test_the_hook_of_a_reaped_run_is_bounded_and_counted(redis_client, key_prefix) -> None:
    """A run whose owner died is ended by the worker that reaps it; its hook
    call gets the frames from the reaping script itself (no read that could
    hang or fail), and is bounded by run_end_timeout like any other."""
    from trio_chatruns.redis._keys import KeyLayout
    from trio_chatruns.redis._store import RedisStore

    calls = []

    async def hook(record, events) -> None:
        calls.append((record.run_id, record.status, [e.frame for e in events]))
        await trio.sleep_forever()  # hangs: cancelled after run_end_timeout

    config = RegistryConfig(run_end_timeout=0.2)
    ghost = RedisStore(redis_client, KeyLayout(key_prefix), config, lease=0.05)
    dead_id = "f" * 32
    assert (await ghost.start("c", dead_id, "ghost", "reject", 8)).outcome == "started"
    assert await ghost.write("c", dead_id, [(1, 1.0, '"last words"', -1)], "running", None, None)
    async with open_redis_chat_runs(
        redis_client, config, key_prefix=key_prefix, on_run_end=hook
    ) as runs:
        while True:  # until the lease lapsed and a read reaped it
            record = await runs.get("c")
            if record.status is ChatRunStatus.FAILED:
                break
            await trio.sleep(0.02)
        assert record.run_id == dead_id
        while True:
            if (await runs.stats()).run_end_failures == 1:
                break
            await trio.sleep(0.02)
    assert calls == [(dead_id, ChatRunStatus.FAILED, ["last words"])]
