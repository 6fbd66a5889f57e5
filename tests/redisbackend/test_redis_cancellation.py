"""Cancellation on the Redis backend: every call is a cancel point, and one
task's cancellation never reaches another task."""

from __future__ import annotations

import pytest
import trio

from trio_chatruns.redis import RedisUnavailable, open_redis_chat_runs


async def park(run) -> None:
    await trio.sleep_forever()


async def test_closed_subscription_anext_is_a_cancel_point(redis_client, key_prefix) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        run = await runs.try_start("c", park)
        async with runs.subscribe("c") as subscription:
            pass
        with trio.CancelScope() as scope:
            scope.cancel()
            await subscription.__anext__()
        assert scope.cancelled_caught
        with pytest.raises(trio.ClosedResourceError):
            await subscription.__anext__()
        run.interrupt()
        await run.wait()


async def one_then_park(run) -> None:
    run.push_frame("a")
    await trio.sleep_forever()


def gate_first_frames_read(monkeypatch, runs, first):
    """Make the first read of a run's frames (a follower's priming) run
    ``first`` instead of reading Redis; later reads read Redis."""
    store = runs._store
    real = store.frames
    calls = 0

    async def frames(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            await first()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "frames", frames)


async def wait_for_waiters(runs, run_id, count) -> None:
    while (
        run_id not in runs._followers
        or runs._followers[run_id].ready.statistics().tasks_waiting < count
    ):
        await trio.lowlevel.checkpoint()


async def test_first_subscriber_cancelled_while_priming_cancels_no_other(
    redis_client, key_prefix, monkeypatch
) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        run = await runs.try_start("c", one_then_park)
        priming = trio.Event()

        async def stuck() -> None:
            priming.set()
            await trio.sleep_forever()

        gate_first_frames_read(monkeypatch, runs, stuck)
        first_scope = trio.CancelScope()
        seen = []

        async def first() -> None:
            with first_scope:
                async with runs.subscribe("c"):
                    pass

        async def second() -> None:
            async with runs.subscribe("c") as subscription:
                seen.append((await subscription.__anext__()).frame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await priming.wait()
            nursery.start_soon(second)
            await wait_for_waiters(runs, run.run_id, 1)
            first_scope.cancel()
        assert first_scope.cancelled_caught
        assert seen == ["a"]
        run.interrupt()
        await run.wait()


async def test_priming_error_reaches_each_waiter_as_its_own_unavailable(
    redis_client, key_prefix, monkeypatch
) -> None:
    async with open_redis_chat_runs(redis_client, key_prefix=key_prefix) as runs:
        run = await runs.try_start("c", one_then_park)
        priming = trio.Event()
        release = trio.Event()
        original = RuntimeError("unreadable stream")

        async def failing() -> None:
            priming.set()
            await release.wait()
            raise original

        gate_first_frames_read(monkeypatch, runs, failing)
        errors = []

        async def subscriber() -> None:
            try:
                async with runs.subscribe("c"):
                    pass
            except Exception as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber)
            await priming.wait()
            nursery.start_soon(subscriber)
            nursery.start_soon(subscriber)
            await wait_for_waiters(runs, run.run_id, 2)
            release.set()
        # The primer gets the error itself; each waiter its own
        # RedisUnavailable chained from it (never one shared object).
        assert errors[0] is original
        waiters = errors[1:]
        assert len(waiters) == 2 and waiters[0] is not waiters[1]
        assert all(type(e) is RedisUnavailable for e in waiters)
        assert all(e.__cause__ is original for e in waiters)
        # The next subscriber primes a fresh follower.
        async with runs.subscribe("c") as subscription:
            assert (await subscription.__anext__()).frame == "a"
        run.interrupt()
        await run.wait()
