"""The load client of the server benchmark: one process, loopback only.

``python -m benchmarks.server_load PORT PID WORKLOAD [ARGS...]`` drives a
server started by :mod:`benchmarks.server` (ours or the peer: it cannot tell
them apart) and prints one JSON object. It runs on asyncio (uvloop when
installed), reading each stream with raw sockets: it counts ``token`` frames
(``,"t":`` in a ``data:`` line), notes when the ``end`` event arrives, and for
latency reads each frame's push time ``t`` (``time.monotonic()`` in the server
process; the clock is system-wide) against its own clock on receipt. Server
CPU is read from ``/proc/PID/stat`` (user + system), young-generation GC
collections from the server itself (an ``{"op": "gc"}`` run).

Workloads:

- ``deliveries K N``: one run, K streams, N frames as fast as the server
  pushes them: deliveries/s, server CPU µs per delivery, GC per 1000;
- ``latency K RATE SECONDS``: one run, K streams, RATE frames/s: p50/p99 ms;
- ``chats C RATE SECONDS``: C runs, one stream each, RATE frames/s each:
  p50/p99 ms, and server CPU µs per frame received;
- ``end K``: one run with K streams and no frames: seconds from ``go`` until
  every stream has its ``end``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import sys
import time
from typing import Any

_T = re.compile(rb',"t":([0-9.e+-]+)')
_YOUNG = re.compile(rb'"young":([0-9]+)')
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_OPEN_AT_ONCE = 256
CUTOFF = 20.0
_LIMIT_S = 600  # one workload, attaching included (4000 streams on a loaded machine)
_ids = itertools.count()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


class Client:
    def __init__(self, port: int, pid: int, tag: str) -> None:
        self.port = port
        self.pid = pid
        self.tag = tag
        self.reconnects = 0

    def cid(self, name: str) -> str:
        return f"{self.tag}-{name}-{next(_ids)}"

    async def post(self, cid: str, order: dict[str, Any]) -> None:
        body = json.dumps({"prompt": json.dumps(order)}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            f"POST /v1/chat/runs/{cid} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        answer = await reader.read()
        writer.close()
        if not answer.startswith(b"HTTP/1.1 202"):
            raise RuntimeError(f"POST {cid}: {answer[:200]!r}")

    async def follow(
        self, cid: str, attached: asyncio.Semaphore | None, on_first: Any, lat: list[float] | None
    ) -> tuple[int, bytes]:
        """Read one stream to its end; returns (token frames, the last message block)."""
        if attached is not None:
            await attached.acquire()
        for attempt in range(20):
            # A saturated server may reset a connection before answering (as
            # EventSource would, the client then reconnects).
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(
                    f"GET /v1/chat/runs/{cid}/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    "Accept: text/event-stream\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionResetError, asyncio.IncompleteReadError):
                writer.close()
                self.reconnects += 1
                if attempt == 19:
                    raise
        try:
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"GET {cid}: {head[:200]!r}")
            buf = b""
            count = 0
            first = True
            while True:
                data = await reader.read(262144)
                if not data:
                    return count, buf
                buf += data
                i = buf.rfind(b"\n\n")
                if i < 0:
                    continue
                done, buf = buf[: i + 2], buf[i + 2 :]
                if first and b"data: " in done:
                    first = False
                    if attached is not None:
                        attached.release()
                    on_first()
                count += done.count(b',"t":')
                if lat is not None:
                    now = time.monotonic()
                    lat.extend(now - float(t) for t in _T.findall(done))
                if b"event: end" in done:
                    return count, done
        finally:
            writer.close()

    async def young_gcs(self) -> int:
        cid = self.cid("gc")
        await self.post(cid, {"op": "gc"})
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            f"GET /v1/chat/runs/{cid}/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        m = _YOUNG.search(await reader.read())
        writer.close()
        assert m is not None
        return int(m.group(1))

    async def streams(
        self, cids: list[str], lat: list[float] | None
    ) -> tuple[asyncio.Event, list[asyncio.Task[tuple[int, bytes]]]]:
        """Open a stream on each of ``cids``; the event is set once all are attached."""
        all_attached = asyncio.Event()
        left = len(cids)

        def on_first() -> None:
            nonlocal left
            left -= 1
            if not left:
                all_attached.set()

        # At most _OPEN_AT_ONCE handshakes in flight, so no listen backlog overflows.
        gate = asyncio.Semaphore(_OPEN_AT_ONCE)
        tasks = [asyncio.create_task(self.follow(c, gate, on_first, lat)) for c in cids]
        return all_attached, tasks

    async def one_run(
        self, k: int, frames: int, rate: float, lat: list[float] | None
    ) -> dict[str, float]:
        """K streams on one run, all attached before the frames start.

        Returns the seconds from sending ``go`` to the last ``end`` (the answer
        to ``go`` itself is not waited for in that window), the token frames
        delivered, and the server's CPU seconds and young GC collections over
        that window.
        """
        key = self.cid("key")
        cid = self.cid("run")
        await self.post(cid, {"op": "stream", "key": key, "frames": frames, "rate": rate})
        attached, tasks = await self.streams([cid] * k, lat)
        await until(attached, tasks)
        gc0 = await self.young_gcs()
        cpu0 = cpu_seconds(self.pid)
        t0 = time.perf_counter()
        # The answer to ``go`` is not part of the timing: the window ends with
        # the last stream's ``end`` (the answer may come later under load).
        go = asyncio.create_task(self.post(self.cid("go"), {"op": "go", "key": key}))
        counts = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        await go
        cpu = cpu_seconds(self.pid) - cpu0
        gc1 = await self.young_gcs()
        return {
            "seconds": elapsed,
            "delivered": sum(c for c, _ in counts),
            "cpu": cpu,
            "young_gcs": gc1 - gc0,
        }


async def until(event: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for ``event``; raise at once if one of ``tasks`` fails first."""
    waiter = asyncio.ensure_future(event.wait())
    while not waiter.done():
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                waiter.cancel()
                raise task.exception()  # type: ignore[misc]
        tasks = [t for t in tasks if not t.done()]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def workload(port: int, pid: int, name: str, args: list[float]) -> dict[str, Any]:
    client = Client(port, pid, f"{name}{os.getpid()}")
    if name == "deliveries":
        k, n = int(args[0]), int(args[1])
        r = await client.one_run(k, n, 0, None)
        delivered = r["delivered"]
        return {
            "dps": delivered / r["seconds"],
            "cpu_us": r["cpu"] / delivered * 1e6,
            "gc_per_1000": r["young_gcs"] / delivered * 1000,
            "delivered": delivered,
            "expected": k * n,
        }
    if name == "latency":
        k, rate, seconds = int(args[0]), args[1], args[2]
        lat: list[float] = []
        await client.one_run(k, int(rate * seconds), rate, lat)
        return {"p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "samples": len(lat)}
    if name == "chats":
        c, rate, seconds = int(args[0]), args[1], args[2]
        key = client.cid("key")
        order = {"op": "stream", "key": key, "frames": int(rate * seconds), "rate": rate}
        cids = [client.cid("chat") for _ in range(c)]
        for i in range(0, c, _OPEN_AT_ONCE):
            await asyncio.gather(*(client.post(cid, order) for cid in cids[i : i + _OPEN_AT_ONCE]))
        lat = []
        attached, tasks = await client.streams(cids, lat)
        await until(attached, tasks)
        cpu0 = cpu_seconds(pid)
        await client.post(client.cid("go"), {"op": "go", "key": key})
        # A saturated server may never catch up: stop CUTOFF s after the last
        # push; frames not received by then count as infinitely late.
        _, pending = await asyncio.wait(tasks, timeout=seconds + CUTOFF)
        cpu = cpu_seconds(pid) - cpu0
        for task in pending:
            task.cancel()
        received = len(lat)
        missing = c * order["frames"] - received
        lat.extend([math.inf] * missing)
        return {
            "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99),
            "samples": len(lat),
            "missing": missing,
            "reconnects": client.reconnects,
            # Server CPU from ``go`` to the last end (or the cutoff) per frame received.
            "cpu_us": cpu / max(received, 1) * 1e6,
        }
    if name == "end":
        return {"seconds": (await client.one_run(int(args[0]), 0, 0, None))["seconds"]}
    raise SystemExit(f"unknown workload {name!r}")


def main() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, pid, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    args = [float(a) for a in sys.argv[4:]]
    try:
        import uvloop

        result = uvloop.run(asyncio.wait_for(workload(port, pid, name, args), _LIMIT_S))
    except ImportError:
        result = asyncio.run(asyncio.wait_for(workload(port, pid, name, args), _LIMIT_S))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
