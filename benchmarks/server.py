"""Server benchmark: ``trio-chatruns serve`` against an asyncio peer, side by side.

Sides, each its own server process on loopback:

- ``ours``: :func:`trio_chatruns.server.serve` (hypercorn's Trio worker) with
  the bench model of :mod:`benchmarks.server_ours`;
- ``h11``: Starlette + sse-starlette on uvicorn with asyncio and h11, fan-out
  through one ``asyncio.Queue`` per subscriber (:mod:`benchmarks.server_peer`);
- ``uvloop``: the same peer on uvloop + httptools, when both are installed.

The same load client (:mod:`benchmarks.server_load`, a separate process)
drives every side with the same frames and the same workloads. A repetition
starts each side in turn (the order rotates between repetitions), runs every
workload against it and stops it; figures are medians over repetitions, and
ratios are taken between medians of the same run. The peer needs the
``bench`` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from ._timing import median

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
STREAM_COUNTS = (1, 10, 100, 1000)


def available_sides() -> list[str]:
    """``ours`` plus the peers whose dependencies are installed."""
    have = importlib.util.find_spec
    if not (have("sse_starlette") and have("uvicorn")):
        raise RuntimeError('the server benchmark needs the bench extra: pip install -e ".[bench]"')
    sides = ["ours", "h11"]
    if have("uvloop") and have("httptools"):
        sides.append("uvloop")
    return sides


def plan(quick: bool) -> dict[str, Any]:
    """The workloads' sizes: total deliveries per stream count, rates and durations."""
    deliveries = 15_000 if quick else 60_000
    return {
        "deliveries": {k: max(deliveries // k, 20) for k in STREAM_COUNTS},
        "latency": (100, 100, 2.0 if quick else 4.0),
        "chats": (1000, 30, 2.0 if quick else 4.0),
        "end": 4000,
    }


def _env() -> dict[str, str]:
    """The environment of the child processes: ``benchmarks`` importable; the
    package as this process imports it (a checkout's ``src/`` when not installed)."""
    import trio_chatruns

    env = dict(os.environ)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(trio_chatruns.__file__)))
    path = [_ROOT, pkg, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One side's server process, started and stopped around a repetition."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.port = _free_port()
        module = "benchmarks.server_ours" if side == "ours" else "benchmarks.server_peer"
        args = [str(self.port)] if side == "ours" else [str(self.port), side]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=_env(),
            cwd=_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{side} server exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def load(self, workload: str, *args: float) -> dict[str, Any]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.server_load",
                str(self.port),
                str(self.proc.pid),
                workload,
                *map(str, args),
            ],
            env=_env(),
            cwd=_ROOT,
            capture_output=True,
            text=True,
            timeout=660,
        )
        if out.returncode:
            raise RuntimeError(f"{self.side} {workload} {args}: {out.stderr[-2000:]}")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()  # type: ignore[union-attr]


def measure(side: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Every workload once against a fresh server process of ``side``."""
    server = Server(side)
    try:
        server.load("deliveries", 10, 200)  # warm-up: imports, first connections
        out: dict[str, Any] = {"deliveries": {}}
        for k, n in sizes["deliveries"].items():
            out["deliveries"][str(k)] = server.load("deliveries", k, n)
        out["latency"] = server.load("latency", *sizes["latency"])
        out["chats"] = server.load("chats", *sizes["chats"])
        out["end"] = server.load("end", sizes["end"])["seconds"]
        return out
    finally:
        server.stop()


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions of one side's figures."""
    d0 = samples[0]["deliveries"]
    deliveries = {
        k: {f: median([s["deliveries"][k][f] for s in samples]) for f in d0[k]} for k in d0
    }
    gcs = [s["deliveries"][k]["gc_per_1000"] for s in samples for k in d0]
    return {
        "dps": {k: v["dps"] for k, v in deliveries.items()},
        "cpu_us": {k: v["cpu_us"] for k, v in deliveries.items()},
        "gc_per_1000": median(gcs),
        "latency_p50_ms": median([s["latency"]["p50_ms"] for s in samples]),
        "latency_p99_ms": median([s["latency"]["p99_ms"] for s in samples]),
        "chats_p50_ms": median([s["chats"]["p50_ms"] for s in samples]),
        "chats_p99_ms": median([s["chats"]["p99_ms"] for s in samples]),
        "chats_cpu_us": median([s["chats"].get("cpu_us", math.nan) for s in samples]),
        "end_s": median([s["end"] for s in samples]),
    }


def run(quick: bool, reps: int) -> dict[str, Any]:
    sides = available_sides()
    sizes = plan(quick)
    reps = 1 if quick else min(reps, 3)
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for rep in range(reps):
        order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
        for side in order:
            samples[side].append(measure(side, sizes))
    result: dict[str, Any] = {s: summarize(samples[s]) for s in sides}
    result["meta"] = {
        "reps": reps,
        "sizes": {k: v for k, v in sizes.items() if k != "deliveries"},
        "frames": {str(k): n for k, n in sizes["deliveries"].items()},
    }
    return result


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) against the h11 peer."""
    ours, peer = r["ours"], r["h11"]
    out = []
    for k in ours["dps"]:
        x = ours["dps"][k] / peer["dps"][k]
        out.append((f"server deliveries/s at {k} streams >= 1.0x h11 peer", f"{x:.2f}x", x >= 1.0))
    x = max(ours["cpu_us"][k] / peer["cpu_us"][k] for k in ours["cpu_us"])
    out.append(("server CPU per delivery <= 1.0x h11 peer (worst K)", f"{x:.2f}x", x <= 1.0))
    x = ours["latency_p99_ms"] / peer["latency_p99_ms"]
    out.append(("server p99 push->receipt at 100 streams <= 1.5x h11 peer", f"{x:.2f}x", x <= 1.5))
    x = ours["chats_p99_ms"]
    out.append(("1000 chats x 30 frames/s p99 <= 50 ms", f"{x:.1f} ms", x <= 50))
    x = ours["end_s"]
    out.append(("end a run with 4000 streams <= 0.5 s", f"{x:.2f} s", x <= 0.5))
    return out


def report(r: dict[str, Any]) -> str:
    peers = [s for s in ("h11", "uvloop") if s in r]
    head = ["figure", "ours"] + [f"{p} peer (ours / peer)" for p in peers]
    rows: list[list[str]] = []

    def row(name: str, key: str, sub: str | None, fmt: str) -> None:
        def get(side: str) -> float:
            v = r[side][key]
            return float(v[sub] if sub is not None else v)

        cells = [name, format(get("ours"), fmt)]
        for p in peers:
            cells.append(f"{format(get(p), fmt)} ({get('ours') / get(p):.2f}x)")
        rows.append(cells)

    for k in r["ours"]["dps"]:
        row(f"deliveries/s, {k} streams", "dps", k, ",.0f")
    for k in r["ours"]["cpu_us"]:
        row(f"server CPU us/delivery, {k} streams", "cpu_us", k, ".1f")
    row("p50 push->receipt ms, 100 streams x 100/s", "latency_p50_ms", None, ".2f")
    row("p99 push->receipt ms, 100 streams x 100/s", "latency_p99_ms", None, ".2f")
    n = r["meta"]["sizes"]["chats"][0]
    row(f"{n} chats x 30 frames/s p50 ms", "chats_p50_ms", None, ".2f")
    row(f"{n} chats x 30 frames/s p99 ms", "chats_p99_ms", None, ".2f")
    row(f"{n} chats: server CPU us/delivery", "chats_cpu_us", None, ".1f")
    row(f"end a run with {r['meta']['sizes']['end']} streams, s", "end_s", None, ".3f")
    row("young GC collections / 1000 deliveries", "gc_per_1000", None, ".2f")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = [f"Server vs asyncio peer ({r['meta']['reps']} repetition(s), medians)"]
    for cells in [head, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)
