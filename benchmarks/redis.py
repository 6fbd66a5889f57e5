"""Workload: the Redis backend (``--only redis``), against a real
``redis-server`` this benchmark starts on a free loopback port (no
persistence) and stops; skipped with a message when none is installed.

Side by side in one run:

- ``batched``: the backend's writer (one ``WRITE`` script call per batch of
  pending frames) vs ``per_frame_xadd``: the naive way, one awaited ``XADD``
  per frame. Frames/s for one run pushing ``N`` frames (the clock stops when
  the last frame is in Redis), and for 10 runs pushing concurrently on one
  worker.
- latency from ``push_frame`` on worker A to a subscriber on worker B, p50
  and p99, at 1, 10 and 100 subscribers. A and B are two backends with their
  own coredis clients in one process (so they share one CPU: an upper bound).
- interrupt latency: ``interrupt`` through B until the producer on A is
  cancelled, p50/p99.
- Redis memory (``INFO memory`` ``used_memory``): bytes per buffered frame,
  per retained run; ``DBSIZE`` while churning runs (start -> frame -> end,
  default retention cap 256): flat means memory plateaus.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from typing import Any

import trio

from ._timing import fmt_bytes, fmt_rate, table

FRAME = {"type": "delta", "text": "token"}


class _Server:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self.dir, "--logfile", ""]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        ready = threading.Event()

        def watch() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if "Ready to accept connections" in line:
                    ready.set()

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        if not ready.wait(20):
            self.close()
            raise RuntimeError("redis-server did not start")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
        self.thread.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _prefix() -> str:
    return "bench-" + os.urandom(4).hex()


async def _batched(url: str, frames: int, runs_count: int) -> float:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    per_run = frames // runs_count

    async def producer(run: Any) -> None:
        for n in range(per_run):
            run.push_frame(FRAME)
            if n % 100 == 99:
                await trio.lowlevel.checkpoint()  # a model yields between chunks

    async with (
        coredis.Redis.from_url(url) as client,
        open_redis_chat_runs(client, key_prefix=_prefix()) as runs,
    ):
        t0 = time.perf_counter()
        handles = [await runs.try_start(f"c{i}", producer) for i in range(runs_count)]
        for handle in handles:
            await handle.wait()
        return per_run * runs_count / (time.perf_counter() - t0)


async def _per_frame(url: str, frames: int) -> float:
    import coredis
    from coredis.tokens import PureToken

    async with coredis.Redis.from_url(url) as client:
        key = _prefix() + ":{c}:frames"
        payload = '{"type":"delta","text":"token"}'
        t0 = time.perf_counter()
        for seq in range(1, frames + 1):
            await client.xadd(
                key,
                {"t": repr(time.time()), "f": payload},
                identifier=f"{seq}-0",
                trim_strategy=PureToken.MAXLEN,
                threshold=1000,
            )
        return frames / (time.perf_counter() - t0)


async def _latency(url: str, subscribers: int, frames: int) -> tuple[float, float]:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    prefix = _prefix()
    samples: list[float] = []
    async with (
        coredis.Redis.from_url(url) as client_a,
        coredis.Redis.from_url(url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=prefix, worker_id="A") as a,
        open_redis_chat_runs(client_b, key_prefix=prefix, worker_id="B") as b,
    ):
        go = trio.Event()

        async def producer(run: Any) -> None:
            await go.wait()
            for _ in range(frames):
                run.push_frame({"t": time.perf_counter()})
                await trio.sleep(0.005)

        await a.try_start("lat", producer)

        async def reader(task_status: Any) -> None:
            async with b.subscribe("lat") as sub:
                task_status.started()
                async for event in sub:
                    samples.append(time.perf_counter() - event.frame["t"])

        async with trio.open_nursery() as nursery:
            for _ in range(subscribers):
                await nursery.start(reader)
            go.set()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def _interrupt_latency(url: str, count: int) -> tuple[float, float]:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    prefix = _prefix()
    samples: list[float] = []
    async with (
        coredis.Redis.from_url(url) as client_a,
        coredis.Redis.from_url(url) as client_b,
        open_redis_chat_runs(client_a, key_prefix=prefix, worker_id="A") as a,
        open_redis_chat_runs(client_b, key_prefix=prefix, worker_id="B") as b,
    ):
        for i in range(count):
            started = trio.Event()
            stamp: dict[str, float] = {}

            async def producer(run: Any, started: trio.Event = started, stamp: Any = stamp) -> None:
                started.set()
                try:
                    await trio.sleep_forever()
                finally:
                    stamp["cancelled"] = time.perf_counter()

            run = await a.try_start(f"i{i}", producer)
            await started.wait()
            t0 = time.perf_counter()
            await b.interrupt(f"i{i}")
            await run.wait()
            samples.append(stamp["cancelled"] - t0)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def _memory(url: str, churn: int) -> dict[str, Any]:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    async def used(client: Any) -> int:
        info = await client.info("memory")
        return int(info["used_memory"])

    out: dict[str, Any] = {}
    async with coredis.Redis.from_url(url) as client:
        await client.flushall()

        async def frames(run: Any, n: int) -> None:
            for _ in range(n):
                run.push_frame(FRAME)

        async with open_redis_chat_runs(client, key_prefix="mem") as runs:
            before = await used(client)
            await (await runs.try_start("one", frames, 1000)).wait()
            out["bytes_per_frame"] = (await used(client) - before) / 1000
            before = await used(client)
            for i in range(200):
                await (await runs.try_start(f"r{i}", frames, 10)).wait()
            out["bytes_per_run_10_frames"] = (await used(client) - before) / 200
        await client.flushall()
        sizes: list[int] = []
        async with open_redis_chat_runs(client, key_prefix="churn") as runs:
            step = max(1, churn // 5)
            counter = iter(range(churn))

            async def churner() -> None:
                # 50 of these at once: one worker serving many conversations.
                for i in counter:
                    await (await runs.try_start(f"c{i}", frames, 1)).wait()
                    if i % step == step - 1:
                        sizes.append(int(await client.dbsize()))

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(churner)
            out["churn_runs_per_s"] = churn / (time.perf_counter() - t0)
        out["dbsize"] = sizes
        out["churned"] = churn
    return out


def run(quick: bool, reps: int) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        return {"skipped": "redis-server is not installed"}
    try:
        import coredis  # noqa: F401
    except ImportError:
        return {"skipped": "coredis is not installed (pip install 'trio-chatruns[redis]')"}
    server = _Server()
    try:
        frames = 5_000 if quick else 20_000
        res: dict[str, Any] = {}
        batched, naive, multi = [], [], []
        for _ in range(reps):
            batched.append(trio.run(_batched, server.url, frames, 1))
            naive.append(trio.run(_per_frame, server.url, frames // 4))
            multi.append(trio.run(_batched, server.url, frames, 10))
        res["batched"] = statistics.median(batched)
        res["per_frame_xadd"] = statistics.median(naive)
        res["batched_10_runs"] = statistics.median(multi)
        res["latency"] = {
            str(k): trio.run(_latency, server.url, k, 100 if quick else 300) for k in (1, 10, 100)
        }
        res["interrupt"] = trio.run(_interrupt_latency, server.url, 20 if quick else 100)
        res["memory"] = trio.run(_memory, server.url, 5_000 if quick else 20_000)
        return res
    finally:
        server.close()


def report(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"Redis backend: SKIPPED ({res['skipped']})"
    ratio = res["batched"] / res["per_frame_xadd"]
    rows = [
        ["batched writer, 1 run", fmt_rate(res["batched"]), f"{ratio:.1f}x"],
        ["batched writer, 10 runs", fmt_rate(res["batched_10_runs"]), ""],
        ["one XADD per frame", fmt_rate(res["per_frame_xadd"]), "1.0x"],
    ]
    out = ["Redis: frames/s into Redis on one worker (targets: >= 10x per-frame, >= 20k/s)"]
    out.append(table(["side", "frames/s", "vs naive"], rows))
    lat = [
        [k, f"{p50 * 1000:.2f} ms", f"{p99 * 1000:.2f} ms"]
        for k, (p50, p99) in res["latency"].items()
    ]
    p50, p99 = res["interrupt"]
    lat.append(["interrupt via B", f"{p50 * 1000:.2f} ms", f"{p99 * 1000:.2f} ms"])
    out.append("\npush on A -> subscriber on B (target p99 <= 10 ms at 100); interrupt B -> A")
    out.append(table(["subscribers", "p50", "p99"], lat))
    m = res["memory"]
    out.append("\nRedis memory")
    out.append(
        table(
            ["measure", "value"],
            [
                ["bytes per buffered frame", fmt_bytes(m["bytes_per_frame"])],
                ["bytes per retained run (10 frames)", fmt_bytes(m["bytes_per_run_10_frames"])],
                [f"DBSIZE while churning {m['churned']:,} runs", " ".join(map(str, m["dbsize"]))],
                ["churn runs/s (50 at once)", fmt_rate(m["churn_runs_per_s"])],
            ],
        )
    )
    return "\n".join(out)
