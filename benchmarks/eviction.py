"""Workload 3 — eviction scaling: mutation cost against 1k / 10k / 100k retained runs.

Three registries live in one ``trio.run``. Each is configured with
``max_retained_terminal = N`` (and a retention far in the future) and
pre-filled with N terminal runs, so it sits exactly at its cap: every further
completion must evict the oldest terminal run (the LRU path), and every
mutation also runs the TTL sweep against N retained runs.

One operation, done from the benchmark task through the handle:
``run = registry.try_start(cid, producer)``, ``run.push_frame(frame)``,
``run.update(ChatRunStatus.COMPLETED)`` with a fresh conversation id; the
producer returns at once and the scheduler runs the producers in batches of
100 (that time is included). Batches of ops alternate between the three
registries, rotating the order each repetition.

Figure: microseconds per operation; the target is the 100k/1k ratio. The
cyclic GC is paused inside each timed batch (and run between batches): a
gen-2 collection walks every object in the process, ~0.1-0.3 s with 111k
runs held, and would otherwise land whole in whichever batch trips it.
"""

from __future__ import annotations

import gc
from contextlib import AsyncExitStack
from typing import Any

import trio

from trio_chatruns import ChatRunStatus, RegistryConfig, open_chat_run_registry

from ._timing import median, perf_counter, table

FRAME = {"type": "delta", "text": "token"}
SIZES = (1_000, 10_000, 100_000)
BATCH = 100


async def _noop(run: Any) -> None:
    return None


async def _mutate(registry: Any, prefix: str, start: int, count: int) -> None:
    completed = ChatRunStatus.COMPLETED
    try_start = registry.try_start
    for i in range(start, start + count):
        run = try_start(f"{prefix}{i}", _noop)
        run.push_frame(FRAME)
        run.update(completed)
        if i % BATCH == BATCH - 1:
            await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()


async def _main(quick: bool, reps: int) -> dict[str, Any]:
    ops = 1_000 if quick else 3_000
    async with AsyncExitStack() as stack:
        regs: dict[int, Any] = {}
        for n in SIZES:
            config = RegistryConfig(max_retained_terminal=n, terminal_retention=1e9)
            regs[n] = await stack.enter_async_context(open_chat_run_registry(config))
            await _mutate(regs[n], f"fill{n}-", 0, n)
            stats = regs[n].stats()
            if stats.retained_terminal != n:
                raise RuntimeError(f"expected {n} retained, got {stats.retained_terminal}")
        cursor = dict.fromkeys(SIZES, 0)
        samples: dict[int, list[float]] = {n: [] for n in SIZES}
        order = list(SIZES)
        for rep in range(reps + 1):  # rep 0 is a warm-up
            shift = rep % len(order)
            for n in order[shift:] + order[:shift]:
                # The cyclic GC is paused inside a timed batch and run between
                # batches: a full collection walks every live object in the
                # process (all three registries), so it would land, whole, in
                # whichever sample trips the threshold.
                gc.collect()
                gc.disable()
                try:
                    t0 = perf_counter()
                    await _mutate(regs[n], f"m{n}-", cursor[n], ops)
                    dt = perf_counter() - t0
                finally:
                    gc.enable()
                cursor[n] += ops
                if rep:
                    samples[n].append(dt / ops * 1e6)
        for n in SIZES:
            stats = regs[n].stats()
            if stats.retained_terminal != n or stats.evicted_lru < cursor[n]:
                raise RuntimeError(f"registry {n} did not stay at its cap: {stats}")
    return {str(n): median(samples[n]) for n in SIZES}


def run(quick: bool, reps: int) -> dict[str, Any]:
    return trio.run(_main, quick, reps)


def report(res: dict[str, Any]) -> str:
    base = res["1000"]
    rows = [[f"{int(n):,}", f"{us:.2f}", f"{us / base:.2f}x"] for n, us in res.items()]
    return (
        "Eviction scaling: start -> 1 frame -> complete (+1 LRU eviction), us/op "
        "(target 100k/1k <= 1.20x)\n" + table(["retained", "us/op", "vs 1k"], rows)
    )
