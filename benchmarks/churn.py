"""Workload 5 — run churn: runs per second through start -> complete -> evicted.

Default caps (``MAX_RETAINED_TERMINAL`` = 256, so from the 257th run on every
completion evicts one). Each run is ``registry.try_start(cid, producer)`` with
a fresh conversation id; the producer pushes one frame through its handle and
returns, which completes the run. The benchmark task starts runs in batches of
100 and yields once per batch so the scheduler runs the producers; the clock
stops when every run has ended and all but the cap have been evicted.

Alongside, alternating: ``raw_spawn`` — the Trio floor for the same shape,
``nursery.start_soon`` of a task that appends one item to a list and returns,
with a dict entry per "run" dropped FIFO past 256.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import trio

from trio_chatruns import open_chat_run_registry

from ._timing import alternate, fmt_rate, perf_counter, table

FRAME = {"type": "delta", "text": "token"}
BATCH = 100


async def _producer(run: Any) -> None:
    run.push_frame(FRAME)


async def _registry(n: int) -> float:
    async with open_chat_run_registry() as registry:
        try_start = registry.try_start
        t0 = perf_counter()
        for i in range(n):
            try_start(f"c{i}", _producer)
            if i % BATCH == BATCH - 1:
                await trio.lowlevel.checkpoint()
        while registry.stats().active:  # producers drain in a round or two
            await trio.lowlevel.checkpoint()
        elapsed = perf_counter() - t0
        stats = registry.stats()
        if stats.evicted_lru + stats.evicted_ttl < n - 256:
            raise RuntimeError(f"churn did not evict: {stats}")
    return n / elapsed


async def _raw(n: int) -> float:
    kept: OrderedDict[str, list[object]] = OrderedDict()

    async def task(buf: list[object]) -> None:
        buf.append(FRAME)

    async with trio.open_nursery() as nursery:
        t0 = perf_counter()
        for i in range(n):
            buf: list[object] = []
            kept[f"c{i}"] = buf
            if len(kept) > 256:
                kept.popitem(last=False)
            nursery.start_soon(task, buf)
            if i % BATCH == BATCH - 1:
                await trio.lowlevel.checkpoint()
    return n / (perf_counter() - t0)


def run(quick: bool, reps: int) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    return alternate(
        {"registry": lambda: trio.run(_registry, n), "raw_spawn": lambda: trio.run(_raw, n)},
        reps,
    )


def report(res: dict[str, Any]) -> str:
    rows = [
        ["registry", fmt_rate(res["registry"]), f"{res['registry'] / res['raw_spawn']:.2f}x"],
        ["raw spawn floor", fmt_rate(res["raw_spawn"]), "1.00x"],
    ]
    return "Run churn: start -> complete -> evicted (runs/s; target >= 20k)\n" + table(
        ["side", "runs/s", "vs raw"], rows
    )
