"""Workload 4 — memory plateau over a server's life.

Churn conversations (``try_start`` with a fresh id; the producer pushes 5
frames through its handle and returns, completing the run) with the Trio
clock driven by ``trio.testing.MockClock``: it jumps 1 s per run (so the
300 s retention window spans ~300 runs and the 256-run LRU cap is what
binds), plus an idle gap of 400 s every 10,000 runs, half-way between
checkpoints (so the whole retained set expires and the TTL path evicts it,
while every checkpoint sees the registry full at its 256-run cap). Runs are
started in batches of 100; the scheduler runs their producers between batches.

At each checkpoint: ``gc.collect()``, then the traced size
(``tracemalloc``, started just before ``trio.run``) and the process RSS.

Phases, each in a fresh subprocess so RSS is not shared:

* ``default`` — default caps, up to 1,000,000 runs (40,000 with --quick).
* ``no_eviction`` — retention 1e12 s and a cap of 10**9: nothing is ever
  evicted; run far enough to see linear growth.
* ``frames`` — eviction off, 10,000 runs of 105 frames (5,000 with --quick), to split the
  no-eviction slope into bytes per retained run and per buffered frame.

Frames are one shared dict, so the figures are the registry's own overhead,
not the payload's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from typing import Any

import trio
from trio.testing import MockClock

from ._timing import fmt_bytes, perf_counter, rss_bytes, table

FRAME = {"type": "delta", "text": "token"}
BATCH = 100
IDLE_EVERY = 10_000


def _config(phase: str) -> Any:
    from trio_chatruns import RegistryConfig

    if phase == "default":
        return RegistryConfig()
    return RegistryConfig(terminal_retention=1e12, max_retained_terminal=10**9)


async def _churn(phase: str, checkpoints: list[int], frames: int) -> dict[str, Any]:
    from trio_chatruns import open_chat_run_registry

    clock = trio.lowlevel.current_clock()
    jump = clock.jump  # type: ignore[attr-defined]

    async def producer(run: Any) -> None:
        push = run.push_frame
        for _ in range(frames):
            push(FRAME)

    out: dict[str, Any] = {}
    t0 = perf_counter()
    async with open_chat_run_registry(_config(phase)) as registry:
        try_start = registry.try_start
        targets = sorted(checkpoints)
        i = 0
        for target in targets:
            while i < target:
                try_start(f"c{i}", producer)
                jump(1.0)
                i += 1
                if i % BATCH == 0:
                    await trio.lowlevel.checkpoint()
                if i % IDLE_EVERY == IDLE_EVERY // 2:
                    jump(400.0)
            while registry.stats().active:  # producers drain in a round or two
                await trio.lowlevel.checkpoint()
            gc.collect()
            stats = registry.stats()
            out[str(target)] = {
                "traced": tracemalloc.get_traced_memory()[0],
                "rss": rss_bytes(),
                "retained_terminal": stats.retained_terminal,
                "evicted_ttl": stats.evicted_ttl,
                "evicted_lru": stats.evicted_lru,
                "seconds": perf_counter() - t0,
            }
    return out


def _child(phase: str, checkpoints: list[int], frames: int) -> dict[str, Any]:
    tracemalloc.start()
    return trio.run(_churn, phase, checkpoints, frames, clock=MockClock())


def _spawn(phase: str, checkpoints: list[int], frames: int) -> subprocess.Popen[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        phase,
        ",".join(map(str, checkpoints)),
        str(frames),
    ]
    return subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"memory child failed:\n{err}")
    return json.loads(out)  # type: ignore[no-any-return]


def run(quick: bool, reps: int) -> dict[str, Any]:
    del reps  # one pass: the figures are sizes, not timings
    if quick:
        default_cps = [10_000, 20_000, 40_000]
        noev_cps = [5_000, 10_000, 20_000]
    else:
        default_cps = [10_000, 100_000, 1_000_000]
        noev_cps = [10_000, 50_000, 100_000, 200_000]
    fat_runs = noev_cps[0]
    # The three children only measure sizes, so they run side by side (this
    # workload times nothing); each has its own process, heap and RSS.
    procs = [
        _spawn("default", default_cps, 5),
        _spawn("no_eviction", noev_cps, 5),
        _spawn("no_eviction", [fat_runs], 105),
    ]
    default, noev, fat = (_collect(p) for p in procs)
    out: dict[str, Any] = {str(k): v["traced"] for k, v in default.items()}
    out["no_eviction"] = {k: v["traced"] for k, v in noev.items()}
    # Bytes per buffered frame: runs holding 105 frames vs 5 frames each.
    k = str(fat_runs)
    per_frame = (fat[k]["traced"] - noev[k]["traced"]) / (fat_runs * 100)
    lo, hi = noev_cps[0], noev_cps[-1]
    slope = (noev[str(hi)]["traced"] - noev[str(lo)]["traced"]) / (hi - lo)
    out["bytes_per_frame"] = per_frame
    out["bytes_per_terminal_run"] = slope - 5 * per_frame
    out["detail"] = {"default": default, "no_eviction": noev, "frames_105": fat}
    out["quick"] = quick
    return out


def report(res: dict[str, Any]) -> str:
    d = res["detail"]["default"]
    keys = [k for k in d]
    first = d[keys[0]]["traced"]
    rows = []
    for k in keys:
        v = d[k]
        rows.append(
            [
                f"{int(k):,}",
                fmt_bytes(v["traced"]),
                f"{v['traced'] / first:.3f}x",
                fmt_bytes(v["rss"]),
                str(v["retained_terminal"]),
                f"{v['evicted_ttl']:,}/{v['evicted_lru']:,}",
                f"{v['seconds']:.1f}",
            ]
        )
    n = res["detail"]["no_eviction"]
    rows2 = [
        [f"{int(k):,}", fmt_bytes(v["traced"]), fmt_bytes(v["rss"]), f"{v['retained_terminal']:,}"]
        for k, v in n.items()
    ]
    scale = " (scaled down: --quick)" if res.get("quick") else ""
    return (
        f"Memory plateau, default caps{scale} (target: last <= 1.10x first)\n"
        + table(["runs", "traced", "vs first", "RSS", "retained", "evicted ttl/lru", "s"], rows)
        + "\n\nMemory with eviction off (unbounded)\n"
        + table(["runs", "traced", "RSS", "retained"], rows2)
        + f"\n\nbytes per retained terminal run: {res['bytes_per_terminal_run']:.0f}"
        + f"   bytes per buffered frame: {res['bytes_per_frame']:.0f}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["default", "no_eviction"])
    p.add_argument("checkpoints")
    p.add_argument("frames", type=int)
    a = p.parse_args()
    cps = [int(x) for x in a.checkpoints.split(",")]
    json.dump(_child(a.phase, cps, a.frames), sys.stdout)


if __name__ == "__main__":
    main()
