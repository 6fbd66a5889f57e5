"""A lease renewal that runs while a start is on its way to Redis.

``try_start`` registers the new run with its worker before the ``START``
script runs (its "started" message may come before the script's answer). A
renewal round that began in that window used to renew the new run too; if
its ``RENEW`` reached Redis before the ``START`` (another connection, or
Redis reconnecting), Redis knew no such run, so the worker ended its fresh
run ``failed`` ("no longer in Redis") before its producer ran, with nothing
logged: a subscriber then saw a run with no frame. (Found as a flaky
``test_redis_restarted_mid_run``: after the restart both commands waited for
a new connection.)

Here the interleaving is forced: the ``START`` is held back until a renewal
round that began after ``try_start`` was called has been answered."""

from __future__ import annotations

import logging

import coredis
import trio

from trio_chatruns import ChatRunStatus
from trio_chatruns.redis import open_redis_chat_runs


async def park(run) -> None:
    await trio.sleep_forever()


async def hello(run) -> None:
    run.push_frame("hello")


async def test_a_renewal_before_the_start_reaches_redis_leaves_the_run_alone(
    redis_server, key_prefix, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_chatruns.redis")
    async with (
        coredis.Redis.from_url(redis_server.url) as client,
        open_redis_chat_runs(client, key_prefix=key_prefix, worker_id="B", lease=1.0) as b,
    ):
        # A run of its own, so that every renewal round sends a RENEW.
        parked = await b.try_start("parked", park)
        store = b._store
        real_start, real_renew = store.start, store.renew
        starting = False
        renewed = trio.Event()

        async def renew(leases):
            # Entered in the same step as the round took its list of runs.
            began_while_starting = starting
            results = await real_renew(leases)
            if began_while_starting:
                renewed.set()
            return results

        async def start(*args):
            nonlocal starting
            starting = True  # the new run is registered on the worker by now
            await renewed.wait()  # a whole renewal round, then the START
            return await real_start(*args)

        store.renew = renew
        store.start = start
        run = await b.try_start("conv", hello)
        assert renewed.is_set()
        final = await run.wait()
        assert final.status is ChatRunStatus.COMPLETED, final.last_error
        async with b.subscribe("conv", run_id=run.run_id) as sub:
            assert [event.frame async for event in sub] == ["hello"]
        assert await b.interrupt("parked") is True
        assert (await parked.wait()).status is ChatRunStatus.CANCELLED
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
