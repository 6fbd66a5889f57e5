"""Workload 2 — replay: subscribe with ``after=0`` to a run holding 1000 frames.

A run pushes 1000 frames (``MAX_EVENTS_PER_RUN``) and then stays active. One
operation is: enter ``registry.subscribe(cid, after=0)``, read the 1000
buffered events, leave the block (an early disconnect, since the run is still
live). Also measured, alternating: the same on a *terminal* retained run
(iteration ends by itself), and the raw-Trio floor of reading 1000 queued
items from a memory channel with ``async for``.

Figure: microseconds per subscribe + 1000-frame replay (median of reps, each
rep the mean of ``OPS`` operations).
"""

from __future__ import annotations

from typing import Any

import trio

from trio_chatruns import RegistryConfig, open_chat_run_registry

from ._timing import alternate, perf_counter, table

FRAMES = 1000
FRAME = {"type": "delta", "text": "token"}


async def _registry(ops: int, terminal: bool) -> float:
    async with open_chat_run_registry(RegistryConfig(max_events_per_run=FRAMES)) as registry:
        filled = trio.Event()

        async def producer(run: Any) -> None:
            for _ in range(FRAMES):
                run.push_frame(FRAME)
            if terminal:
                return
            filled.set()
            await trio.sleep_forever()

        run = registry.try_start("bench", producer)
        if terminal:
            await run.wait()
        else:
            await filled.wait()
        total = 0.0
        for _ in range(ops):
            n = 0
            t0 = perf_counter()
            async with registry.subscribe("bench", after=0) as events:
                async for _ev in events:
                    n += 1
                    if n == FRAMES:
                        break
            total += perf_counter() - t0
            if n != FRAMES:
                raise RuntimeError(f"replay returned {n} frames")
        registry.interrupt("bench")
    return total / ops * 1e6


async def _raw(ops: int) -> float:
    total = 0.0
    for _ in range(ops):
        t0 = perf_counter()
        send, recv = trio.open_memory_channel[object](FRAMES)
        for _ in range(FRAMES):
            send.send_nowait(FRAME)
        send.close()
        n = 0
        async for _x in recv:
            n += 1
        total += perf_counter() - t0
    return total / ops * 1e6


def run(quick: bool, reps: int) -> dict[str, Any]:
    ops = 20 if quick else 100
    return alternate(
        {
            "active": lambda: trio.run(_registry, ops, False),
            "terminal": lambda: trio.run(_registry, ops, True),
            "raw_channel": lambda: trio.run(_raw, ops),
        },
        reps,
    )


def report(res: dict[str, Any]) -> str:
    rows = [
        ["registry, active run", f"{res['active']:.0f}"],
        ["registry, terminal run", f"{res['terminal']:.0f}"],
        ["raw channel, async for", f"{res['raw_channel']:.0f}"],
    ]
    return "Replay: subscribe + 1000 frames (us per op; target <= 2000)\n" + table(
        ["side", "us/op"], rows
    )
