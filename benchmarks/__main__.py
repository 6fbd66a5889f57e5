"""``python -m benchmarks [--quick] [--json] [--only NAMES] [--reps N]``.

Human-readable tables by default; ``--json`` prints only the JSON document
described in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import budget, churn, eviction, fanout, memory, redis, replay, server
from ._timing import clock_name, machine, use_cpu_clock

WORKLOADS = {
    "fanout": fanout,
    "replay": replay,
    "eviction": eviction,
    "memory": memory,
    "churn": churn,
    "budget": budget,
    "redis": redis,
    "server": server,
}


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) for every target whose workload ran."""
    out: list[tuple[str, str, bool]] = []
    if "fanout" in res:
        for k, r in res["fanout"].items():
            a, b = r["registry"] / r["raw_iter"], r["registry"] / r["raw_drain"]
            out.append((f"fan-out K={k} >= 0.80x raw async-for", f"{a:.2f}x", a >= 0.8))
            out.append((f"fan-out K={k} >= 0.50x raw drain", f"{b:.2f}x", b >= 0.5))
    if "replay_us" in res:
        x = res["replay_us"]
        out.append(("subscribe + 1000-frame replay <= 2 ms", f"{x / 1000:.2f} ms", x <= 2000))
    if "eviction" in res:
        x = res["eviction"]["100000"] / res["eviction"]["1000"]
        out.append(("eviction cost 100k/1k <= 1.20x", f"{x:.2f}x", x <= 1.2))
    if "memory" in res:
        m = res["memory"]
        cps = [k for k in m if k.isdigit()]
        x = m[cps[-1]] / m[cps[0]]
        out.append((f"memory {int(cps[-1]):,} / {int(cps[0]):,} <= 1.10x", f"{x:.3f}x", x <= 1.1))
    if "budget" in res:
        r = res["budget"]
        for side, label in (("per_run", "max_bytes_per_run"), ("retained", "max_retained_bytes")):
            x = r[side] / r["none"]
            out.append((f"push with {label} <= 1.30x none", f"{x:.2f}x", x <= 1.3))
    if "churn_runs_per_s" in res:
        x = res["churn_runs_per_s"]
        out.append(("churn >= 20,000 runs/s", f"{x:,.0f}/s", x >= 20_000))
    if "redis" in res and "skipped" not in res["redis"]:
        r = res["redis"]
        x = r["batched"] / r["per_frame_xadd"]
        out.append(("redis batched writer >= 10x one XADD per frame", f"{x:.1f}x", x >= 10))
        x = r["batched"]
        out.append(("redis >= 20,000 frames/s per worker", f"{x:,.0f}/s", x >= 20_000))
        x = r["latency_remote"]["100"][1] * 1000
        out.append(("redis p99 push -> remote subscriber (100) <= 10 ms", f"{x:.2f} ms", x <= 10))
        x = r["interrupt"][1] * 1000
        out.append(("redis interrupt via another worker p99 <= 100 ms", f"{x:.2f} ms", x <= 100))
        c = r["churn"]
        x = c["samples"][-1][1] / c["samples"][1][1]
        out.append(
            (
                f"redis DBSIZE after {c['runs']:,} churned runs / after a tenth <= 1.10",
                f"{x:.2f}x",
                x <= 1.1,
            )
        )
        e = r["expiry"]
        out.append(
            ("redis keys of expired runs all gone", f"{e['keys_left']} left", not e["keys_left"])
        )
    if "server" in res:
        out.extend(server.targets(res["server"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="scaled-down counts, under 60 s")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--save", metavar="PATH", help="also write the JSON document to PATH")
    p.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(WORKLOADS))
    p.add_argument("--reps", type=int, default=0, help="repetitions (default 3 quick, 5 full)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time with wall clock (default) or process CPU time (steadier on a shared machine)",
    )
    args = p.parse_args(argv)
    if args.clock == "cpu":
        use_cpu_clock()
    reps = args.reps or (3 if args.quick else 5)
    if reps < 3:
        p.error("--reps must be at least 3 (figures are medians of >= 3 repetitions)")
    names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads: {sorted(unknown)}")

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    if args.quick:
        say("QUICK MODE: counts scaled down (memory churn to 40k, not 1M); not for the record.\n")
    res: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        r = WORKLOADS[name].run(args.quick, reps)
        raw[name] = r
        say(WORKLOADS[name].report(r))
        say(f"({time.perf_counter() - t0:.1f} s)\n")
        if name == "replay":
            res["replay_us"] = r["active"]
        elif name == "churn":
            res["churn_runs_per_s"] = r["registry"]
        elif name == "memory":
            res["memory"] = {k: v for k, v in r.items() if k.isdigit() or k == "no_eviction"}
        else:
            res[name] = r
    checks = targets(res)
    res["meta"] = {
        "quick": args.quick,
        "reps": reps,
        "clock": clock_name(),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "replay_us": raw.get("replay"),
        "churn_runs_per_s": raw.get("churn"),
        "memory": {
            k: v for k, v in raw.get("memory", {}).items() if not k.isdigit() and k != "no_eviction"
        },
        "targets": {t: {"measured": m, "holds": ok} for t, m, ok in checks},
    }
    if args.save:
        with open(args.save, "w") as f:
            json.dump(res, f, indent=2)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        width = max((len(t) for t, _, _ in checks), default=0)
        print("Targets")
        for t, m, ok in checks:
            print(f"  {'PASS' if ok else 'MISS'}  {t.ljust(width)}  {m}")
        print(f"\ntotal {res['meta']['seconds']} s; {res['meta']['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
