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
import sys
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


async def _redis_usec(client: Any) -> int:
    """Microseconds Redis spent in commands since the last ``CONFIG RESETSTAT``."""
    info = await client.info("commandstats")
    return sum(int(v["usec"]) for k, v in info.items() if k.startswith("cmdstat_"))


async def _batched(url: str, frames: int, runs_count: int) -> tuple[float, float, float]:
    """``(frames/s, this process's CPU us per frame, Redis's us per frame)``."""
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
        await client.config_resetstat()
        t0, c0 = time.perf_counter(), time.process_time()
        handles = [await runs.try_start(f"c{i}", producer) for i in range(runs_count)]
        for handle in handles:
            await handle.wait()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = per_run * runs_count
        return n / elapsed, cpu / n * 1e6, await _redis_usec(client) / n


async def _per_frame(url: str, frames: int) -> tuple[float, float, float]:
    import coredis
    from coredis.tokens import PureToken

    async with coredis.Redis.from_url(url) as client:
        key = _prefix() + ":{c}:frames"
        payload = '{"type":"delta","text":"token"}'
        await client.config_resetstat()
        t0, c0 = time.perf_counter(), time.process_time()
        for seq in range(1, frames + 1):
            await client.xadd(
                key,
                {"t": repr(time.time()), "f": payload},
                identifier=f"{seq}-0",
                trim_strategy=PureToken.MAXLEN,
                threshold=1000,
            )
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        return frames / elapsed, cpu / frames * 1e6, await _redis_usec(client) / frames


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


async def _key_bytes(client: Any, keys: list[Any]) -> int:
    """``MEMORY USAGE key SAMPLES 0`` (every element counted) summed over ``keys``."""
    return sum([int(await client.memory_usage(key, samples=0)) for key in keys])


async def _memory(url: str) -> dict[str, Any]:
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    async def used(client: Any) -> int:
        info = await client.info("memory")
        return int(info["used_memory"])

    async def frames(run: Any, n: int) -> None:
        for _ in range(n):
            run.push_frame(FRAME)

    out: dict[str, Any] = {}
    async with coredis.Redis.from_url(url) as client:
        await client.flushall()
        async with open_redis_chat_runs(client, key_prefix="mem") as runs:
            before = await used(client)
            for i in range(5):
                await (await runs.try_start(f"f{i}", frames, 1000)).wait()
            out["bytes_per_frame"] = (await used(client) - before) / 5000
            streams = [key async for key in client.scan_iter(match="mem:{f*}:frames:*")]
            out["stream_bytes_per_frame"] = await _key_bytes(client, streams) / 5000
            before = await used(client)
            for i in range(200):
                await (await runs.try_start(f"r{i}", frames, 10)).wait()
            out["bytes_per_run_10_frames"] = (await used(client) - before) / 200
            keys = [key async for key in client.scan_iter(match="mem:{r1}:*")]
            out["key_bytes_per_run_10_frames"] = await _key_bytes(client, keys)
    return out


class _Worker:
    """A ``benchmarks.redis_worker`` process; its stdout lines are read by a
    thread into ``lines``."""

    def __init__(self, *args: object) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-m", "benchmarks.redis_worker", *map(str, args)]
        self.process = subprocess.Popen(
            argv, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.progress = 0  # the last count a churn worker printed
        self.arrived = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())
            if line.strip().isdigit():
                self.progress = int(line)
            self.arrived.set()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.thread.join(5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


async def _latency_remote(url: str, subscribers: int, frames: int) -> tuple[float, float, float]:
    """A (the producer) in a worker process of its own; B here: ``(p50, p99,
    B's CPU seconds per frame)``, CPU from the first frame to the end (B's
    follower, fan-out and subscribers)."""
    import coredis

    from trio_chatruns.redis import open_redis_chat_runs

    prefix = _prefix()
    samples: list[float] = []
    worker = _Worker("produce", url, prefix, frames, 0.005)
    try:
        await trio.to_thread.run_sync(worker.arrived.wait, 60)
        if worker.lines[:1] != ["started"]:
            raise RuntimeError(f"benchmark worker did not start: {worker.lines}")
        async with (
            coredis.Redis.from_url(url) as client_b,
            open_redis_chat_runs(client_b, key_prefix=prefix, worker_id="B") as b,
        ):

            async def reader(task_status: Any) -> None:
                async with b.subscribe("lat") as sub:
                    task_status.started()
                    async for event in sub:
                        samples.append(time.perf_counter() - event.frame["t"])

            async with trio.open_nursery() as nursery:
                for _ in range(subscribers):
                    await nursery.start(reader)
                worker.send("go")
                c0 = time.process_time()
            cpu = time.process_time() - c0
        await trio.to_thread.run_sync(worker.process.wait)
    finally:
        worker.close()
    if len(samples) != subscribers * frames:
        raise RuntimeError(f"{len(samples)} deliveries, expected {subscribers * frames}")
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1], cpu / frames


async def _churn(url: str, runs_count: int, workers: int, concurrency: int) -> dict[str, Any]:
    """``runs_count`` runs churned by ``workers`` worker processes (default
    config: retention 300 s, cap 256 retained runs), ``DBSIZE`` and
    ``used_memory`` sampled at every tenth of the way."""
    import coredis

    async with coredis.Redis.from_url(url) as client:
        await client.flushall()

        async def sample(done: int) -> list[int]:
            info: Any = await client.info("memory")
            return [done, int(await client.dbsize()), int(info["used_memory"])]

        samples = [await sample(0)]
        per_worker = runs_count // workers
        procs = [_Worker("churn", url, "churn", per_worker, concurrency) for _ in range(workers)]
        t0 = time.perf_counter()
        try:
            step = runs_count // 10
            next_at = step
            while True:
                finished = [w for w in procs if w.lines and w.lines[-1].startswith("done")]
                done = sum(w.progress for w in procs)
                if len(finished) == workers:
                    break
                for w in procs:
                    if w.process.poll() not in (None, 0):
                        raise RuntimeError(f"churn worker failed (exit {w.process.returncode})")
                if done >= next_at:
                    samples.append(await sample(done))
                    next_at += step
                await trio.sleep(0.05)
            elapsed = time.perf_counter() - t0
            samples.append(await sample(per_worker * workers))
            cpu = [float(w.lines[-1].split()[2]) for w in procs]
        finally:
            for w in procs:
                w.close()
    return {
        "runs": per_worker * workers,
        "workers": workers,
        "seconds": elapsed,
        "runs_per_s": per_worker * workers / elapsed,
        "worker_cpu_ms_per_run": sum(cpu) / (per_worker * workers) * 1000,
        "samples": samples,
    }


async def _expiry(url: str, runs_count: int) -> dict[str, Any]:
    """Runs ended with ``terminal_retention=1`` s (cap far away): how many of
    their keys are left just after, and how long until Redis expired them
    all (retention + the stream's grace period)."""
    import coredis

    from trio_chatruns import RegistryConfig
    from trio_chatruns.redis import open_redis_chat_runs

    async def one_frame(run: Any) -> None:
        run.push_frame(FRAME)

    config = RegistryConfig(terminal_retention=1.0, max_retained_terminal=1_000_000)
    async with coredis.Redis.from_url(url) as client:

        async def count() -> int:
            return len([key async for key in client.scan_iter(match="expiry:*", count=1000)])

        async with open_redis_chat_runs(client, config, key_prefix="expiry") as runs:
            for i in range(runs_count):
                await (await runs.try_start(f"e{i}", one_frame)).wait()
            t0 = time.perf_counter()
            after_end = await count()
            left = after_end
            while left and time.perf_counter() - t0 < 30:
                await trio.sleep(0.25)
                await runs.prune()  # drops the index's expired entries
                left = await count()
    return {
        "runs": runs_count,
        "keys_after_end": after_end,
        "keys_left": left,
        "gone_after_s": time.perf_counter() - t0,
    }


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
        res: dict[str, Any] = {"load_before": os.getloadavg()[0]}
        sides: dict[str, list[tuple[float, float, float]]] = {
            "batched": [],
            "per_frame_xadd": [],
            "batched_10_runs": [],
        }
        for _ in range(reps):
            sides["batched"].append(trio.run(_batched, server.url, frames, 1))
            sides["per_frame_xadd"].append(trio.run(_per_frame, server.url, frames // 4))
            sides["batched_10_runs"].append(trio.run(_batched, server.url, frames, 10))
        for name, values in sides.items():
            res[name] = statistics.median(v[0] for v in values)
            res[name + "_cpu_us"] = statistics.median(v[1] for v in values)
            res[name + "_redis_us"] = statistics.median(v[2] for v in values)
        latency_frames = 100 if quick else 300
        res["latency"] = {
            str(k): trio.run(_latency, server.url, k, latency_frames) for k in (1, 10, 100)
        }
        res["latency_remote"] = {
            str(k): trio.run(_latency_remote, server.url, k, latency_frames) for k in (1, 10, 100)
        }
        res["interrupt"] = trio.run(_interrupt_latency, server.url, 20 if quick else 100)
        res["memory"] = trio.run(_memory, server.url)
        res["churn"] = trio.run(_churn, server.url, 5_000 if quick else 100_000, 2, 50)
        res["expiry"] = trio.run(_expiry, server.url, 200)
        res["load_after"] = os.getloadavg()[0]
        return res
    finally:
        server.close()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"Redis backend: SKIPPED ({res['skipped']})"
    ratio = res["batched"] / res["per_frame_xadd"]
    rows = []
    for side, label, vs in (
        ("batched", "batched writer, 1 run", f"{ratio:.1f}x"),
        ("batched_10_runs", "batched writer, 10 runs", ""),
        ("per_frame_xadd", "one XADD per frame", "1.0x"),
    ):
        rows.append(
            [
                label,
                fmt_rate(res[side]),
                vs,
                f"{res[side + '_cpu_us']:.1f}",
                f"{res[side + '_redis_us']:.1f}",
            ]
        )
    out = [
        f"Redis (load average {res['load_before']:.1f} before, {res['load_after']:.1f} after)",
        "frames/s into Redis on one worker (targets: >= 10x per-frame, >= 20k/s)",
    ]
    out.append(
        table(["side", "frames/s", "vs naive", "worker CPU us/frame", "Redis us/frame"], rows)
    )
    lat = []
    for k in res["latency"]:
        p50, p99, cpu = res["latency_remote"][k]
        q50, q99 = res["latency"][k]
        lat.append([k, _ms(p50), _ms(p99), _ms(cpu), _ms(q50), _ms(q99)])
    p50, p99 = res["interrupt"]
    lat.append(["interrupt via B", "", "", "", _ms(p50), _ms(p99)])
    out.append(
        "\npush on A -> subscriber on B (target p99 <= 10 ms at 100): A in its own process,"
        " and A, B in one process; interrupt B -> A"
    )
    out.append(table(["subscribers", "p50", "p99", "B CPU/frame", "1 proc p50", "1 proc p99"], lat))
    m = res["memory"]
    out.append("\nRedis memory")
    out.append(
        table(
            ["measure", "used_memory", "MEMORY USAGE"],
            [
                [
                    "bytes per buffered frame",
                    fmt_bytes(m["bytes_per_frame"]),
                    fmt_bytes(m["stream_bytes_per_frame"]),
                ],
                [
                    "bytes per retained run (10 frames)",
                    fmt_bytes(m["bytes_per_run_10_frames"]),
                    fmt_bytes(m["key_bytes_per_run_10_frames"]),
                ],
            ],
        )
    )
    c = res["churn"]
    out.append(
        f"\nchurn: {c['runs']:,} runs (start -> 1 frame -> completed) by {c['workers']} worker"
        f" processes, 50 conversations at once each, default config: {c['seconds']:.0f} s,"
        f" {fmt_rate(c['runs_per_s'])} runs/s, {c['worker_cpu_ms_per_run']:.2f} ms worker CPU/run"
    )
    out.append(
        table(
            ["runs churned", "DBSIZE", "used_memory"],
            [[f"{done:,}", str(size), fmt_bytes(mem)] for done, size, mem in c["samples"]],
        )
    )
    e = res["expiry"]
    out.append(
        f"\nexpiry: {e['runs']} runs ended with terminal_retention=1 s: {e['keys_after_end']} keys"
        f" just after, {e['keys_left']} left {e['gone_after_s']:.1f} s later"
        " (retention + 5 s stream grace)"
    )
    return "\n".join(out)
