"""Workload 1 — fan-out: one producer, K subscribers, one frame per round.

The producer pushes one frame, then takes one checkpoint (one scheduling
round), N times. K subscribers each read every frame. Three sides do the same
work in the same process, alternating:

* ``registry``  — ``registry.try_start`` + ``run.push_frame``; subscribers use
  ``async with registry.subscribe(cid) as events: async for ev in events``.
* ``raw_iter``  — K ``trio.open_memory_channel(256)`` pairs, ``send_nowait``
  to each, subscribers ``async for`` over the receive side.
* ``raw_drain`` — same channels, subscribers ``await receive()`` and then
  ``receive_nowait()`` until ``WouldBlock``.

The clock starts when every subscriber is attached and stops when every
subscriber has seen the end of the stream. Figure: deliveries per second
(N x K / elapsed).
"""

from __future__ import annotations

from typing import Any

import trio

from trio_chatruns import RegistryConfig, open_chat_run_registry

from ._timing import alternate, fmt_rate, perf_counter, table

FRAME = {"type": "delta", "text": "token"}
BUFFER = 256  # the registry's default subscriber_buffer, used by the raw sides too
KS = (1, 10, 100)


def frames_for(k: int, quick: bool) -> int:
    deliveries = 40_000 if quick else 150_000
    return max(deliveries // k, 1_000)


async def _registry(k: int, n: int) -> float:
    config = RegistryConfig(subscriber_buffer=BUFFER)
    async with open_chat_run_registry(config) as registry:
        go = trio.Event()
        all_ready = trio.Event()
        ready = 0
        counts = [0] * k

        async def producer(run: Any) -> None:
            await go.wait()
            push = run.push_frame
            checkpoint = trio.lowlevel.checkpoint
            for _ in range(n):
                push(FRAME)
                await checkpoint()

        async def subscriber(i: int) -> None:
            nonlocal ready
            c = 0
            async with registry.subscribe("bench") as events:
                ready += 1
                if ready == k:
                    all_ready.set()
                async for _ev in events:
                    c += 1
            counts[i] = c

        registry.try_start("bench", producer)
        async with trio.open_nursery() as nursery:
            for i in range(k):
                nursery.start_soon(subscriber, i)
            await all_ready.wait()
            t0 = perf_counter()
            go.set()
        elapsed = perf_counter() - t0
    got = sum(counts)
    if got < n * k:
        raise RuntimeError(f"registry fan-out lost frames: {got} < {n * k}")
    return n * k / elapsed


async def _raw(k: int, n: int, drain: bool) -> float:
    pairs = [trio.open_memory_channel[object](BUFFER) for _ in range(k)]
    sends = [s for s, _ in pairs]
    counts = [0] * k

    async def producer() -> None:
        checkpoint = trio.lowlevel.checkpoint
        for _ in range(n):
            for s in sends:
                s.send_nowait(FRAME)
            await checkpoint()
        for s in sends:
            s.close()

    async def sub_iter(i: int, recv: Any) -> None:
        c = 0
        async with recv:
            async for _x in recv:
                c += 1
        counts[i] = c

    async def sub_drain(i: int, recv: Any) -> None:
        c = 0
        async with recv:
            receive = recv.receive
            receive_nowait = recv.receive_nowait
            while True:
                try:
                    await receive()
                except trio.EndOfChannel:
                    break
                c += 1
                try:
                    while True:
                        receive_nowait()
                        c += 1
                except trio.WouldBlock:
                    pass
                except trio.EndOfChannel:
                    break
        counts[i] = c

    sub = sub_drain if drain else sub_iter
    async with trio.open_nursery() as nursery:
        for i, (_, recv) in enumerate(pairs):
            nursery.start_soon(sub, i, recv)
        await (
            trio.lowlevel.checkpoint()
        )  # let every subscriber block in receive, like the registry side
        t0 = perf_counter()
        nursery.start_soon(producer)
    elapsed = perf_counter() - t0
    if sum(counts) != n * k:
        raise RuntimeError("raw fan-out lost frames")
    return n * k / elapsed


def run(quick: bool, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in KS:
        n = frames_for(k, quick)
        med = alternate(
            {
                "registry": lambda k=k, n=n: trio.run(_registry, k, n),
                "raw_iter": lambda k=k, n=n: trio.run(_raw, k, n, False),
                "raw_drain": lambda k=k, n=n: trio.run(_raw, k, n, True),
            },
            reps,
        )
        out[str(k)] = med
    return out


def report(res: dict[str, Any]) -> str:
    rows = []
    for k, r in res.items():
        rows.append(
            [
                k,
                fmt_rate(r["registry"]),
                fmt_rate(r["raw_iter"]),
                fmt_rate(r["raw_drain"]),
                f"{r['registry'] / r['raw_iter']:.2f}x",
                f"{r['registry'] / r['raw_drain']:.2f}x",
            ]
        )
    return "Fan-out (deliveries/s; targets: >=0.80x raw iter, >=0.50x raw drain)\n" + table(
        ["K", "registry", "raw async-for", "raw drain", "vs iter", "vs drain"], rows
    )
