"""Cancellation on the Redis backend: every call is a cancel point, and one
task's cancellation never reaches another task."""

from __future__ import annotations

import pytest
import trio

from trio_chatruns.redis import open_redis_chat_runs


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

