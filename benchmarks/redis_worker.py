"""One worker process of the Redis benchmark (``benchmarks/redis.py`` starts
it): its own Trio loop, its own coredis client, its own
``open_redis_chat_runs``, sharing the Redis and the key prefix with the
benchmark process, as a second server worker would.

``python -m benchmarks.redis_worker produce URL PREFIX FRAMES INTERVAL``
    starts run ``lat`` as worker ``A``, prints ``started``, waits for a line
    on stdin, then pushes ``FRAMES`` frames ``{"t": time.perf_counter()}``
    one every ``INTERVAL`` seconds (``perf_counter`` is ``CLOCK_MONOTONIC``
    on Linux, one clock for every process) and ends the run.

``python -m benchmarks.redis_worker churn URL PREFIX RUNS CONCURRENCY``
    churns ``RUNS`` runs (start -> one frame -> completed, each awaited to
    its end, ``CONCURRENCY`` conversations at once, fresh conversation ids),
    printing the count done every 100 runs and ``done SECONDS CPU`` at the
    end.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from typing import Any

import trio

FRAME = {"type": "delta", "text": "token"}


async def produce(url: str, prefix: str, frames: int, interval: float) -> None:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    async def producer(run: Any) -> None:
        await trio.to_thread.run_sync(sys.stdin.readline)
        for _ in range(frames):
            run.push_frame({"t": time.perf_counter()})
            await trio.sleep(interval)

    async with (
        coredis.Redis.from_url(url) as client,
        open_redis_chat_runs(client, key_prefix=prefix, worker_id="A") as runs,
    ):
        run = await runs.try_start("lat", producer)
        print("started", flush=True)
        await run.wait()


async def churn(url: str, prefix: str, runs_count: int, concurrency: int) -> None:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    async def one_frame(run: Any) -> None:
        run.push_frame(FRAME)

    tag = os.urandom(3).hex()
    counter = itertools.count()
    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    async with (
        coredis.Redis.from_url(url) as client,
        open_redis_chat_runs(client, key_prefix=prefix) as runs,
    ):

        async def churner() -> None:
            nonlocal done
            for i in counter:
                if i >= runs_count:
                    return
                await (await runs.try_start(f"{tag}-{i}", one_frame)).wait()
                done += 1
                if done % 100 == 0:
                    print(done, flush=True)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(churner)
        print(f"done {time.perf_counter() - t0:.3f} {time.process_time() - c0:.3f}", flush=True)


def main(argv: list[str]) -> None:
    what, url, prefix, count, other = argv
    if what == "produce":
        trio.run(produce, url, prefix, int(count), float(other))
    elif what == "churn":
        trio.run(churn, url, prefix, int(count), int(other))
    else:
        raise SystemExit(f"unknown command {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
