"""Workload 6 — the cost of a byte budget on push.

One run, no subscriber, ``N`` pushes of a small dict frame
(``{"type": "delta", "text": "token"}``) through ``run.push_frame``, with the
default ``max_events_per_run`` (1000), so the buffer trims on every push once
full. Sides, alternating in one process:

* ``none``     — no budget: nothing is measured (the 0.1 path).
* ``per_run``  — ``max_bytes_per_run=1 MiB``: every frame is measured by the
  default ``frame_size`` (compact JSON) and trimmed by count and bytes.
* ``retained`` — ``max_retained_bytes=64 MiB`` only: frames are measured too
  (a run's bytes are what retention counts).
* ``accounting`` — ``max_bytes_per_run=1 MiB`` with ``frame_size=len``: the
  byte accounting and trimming alone, with a measure that costs nothing
  (what an application pays with a cheap ``frame_size`` of its own, say
  for frames it already holds encoded).

Figure: nanoseconds per push (median of reps). Target: a budget costs at most
1.3x the push without one.
"""

from __future__ import annotations

from typing import Any

import trio

from trio_chatruns import RegistryConfig, open_chat_run_registry

from ._timing import alternate, perf_counter, table

FRAME = {"type": "delta", "text": "token"}
CONFIGS = {
    "none": RegistryConfig(),
    "per_run": RegistryConfig(max_bytes_per_run=1 << 20),
    "retained": RegistryConfig(max_retained_bytes=64 << 20),
    "accounting": RegistryConfig(max_bytes_per_run=1 << 20, frame_size=len),
}


async def _pushes(config: RegistryConfig, n: int) -> float:
    async with open_chat_run_registry(config) as registry:

        async def producer(run: Any) -> None:
            await trio.sleep_forever()

        run = registry.try_start("bench", producer)
        push = run.push_frame
        t0 = perf_counter()
        for _ in range(n):
            push(FRAME)
        elapsed = perf_counter() - t0
        run.interrupt()
    return elapsed / n * 1e9


def run(quick: bool, reps: int) -> dict[str, Any]:
    n = 50_000 if quick else 200_000
    return alternate(
        {name: (lambda c=config: trio.run(_pushes, c, n)) for name, config in CONFIGS.items()},
        reps,
    )


def report(res: dict[str, Any]) -> str:
    base = res["none"]
    rows = [
        ["no budget", f"{base:.0f}", "1.00x"],
        ["max_bytes_per_run", f"{res['per_run']:.0f}", f"{res['per_run'] / base:.2f}x"],
        ["max_retained_bytes", f"{res['retained']:.0f}", f"{res['retained'] / base:.2f}x"],
        [
            "max_bytes_per_run, frame_size=len",
            f"{res['accounting']:.0f}",
            f"{res['accounting'] / base:.2f}x",
        ],
    ]
    return "Byte budget on push, small dict frames (ns per push; target <= 1.30x)\n" + table(
        ["side", "ns/push", "vs none"], rows
    )
