"""Small shared helpers: repetition, alternation, medians, memory probes."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

_clock = time.perf_counter


def perf_counter() -> float:
    """The harness clock: wall time (``time.perf_counter``) by default, or this
    process's CPU time after :func:`use_cpu_clock` (``--clock cpu``), which a
    busy shared machine disturbs far less. Either way both sides of every
    comparison use the same clock."""
    return _clock()


def use_cpu_clock() -> None:
    global _clock
    _clock = time.process_time


def clock_name() -> str:
    return "cpu" if _clock is time.process_time else "wall"


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def alternate(
    sides: dict[str, Callable[[], float]], reps: int, *, warmup: bool = True
) -> dict[str, float]:
    """Run every side ``reps`` times, interleaved, and return each side's median.

    Each callable performs one complete measurement and returns a figure.
    Sides run in the same process and alternate (the order rotates every
    repetition), so machine noise, turbo and cache state hit every side alike.
    One untimed warm-up pass of every side runs first.
    """
    names = list(sides)
    if warmup:
        for name in names:
            sides[name]()
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            results[name].append(sides[name]())
    return {name: median(vals) for name, vals in results.items()}


def run_trio(afn: Callable[..., Any], *args: Any, clock: Any = None) -> Any:
    """``trio.run`` with the harness's defaults (one fresh run per measurement)."""
    return trio.run(afn, *args, clock=clock)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - non-Linux
        return 0


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_bytes(x: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GiB"  # pragma: no cover


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)
