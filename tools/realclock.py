"""Run the real-clock tests many times in a row and report the streak.

The core tests run on Trio's ``MockClock`` and cannot be flaky by timing; the
tests that run real servers, real Redis, a real browser and child processes on
the real clock can. This runs those (:data:`REAL_CLOCK`) ``--runs`` times
(default 20), ``--parallel`` runs at once (default 1; 2 loads this 2-core
machine the way CI's two cores are loaded), stops starting runs at the first
failure, and prints each run's result and time and the streak: how many runs
passed before the first failure (all of them when none failed).

Usage: ``nox -s realclock -- [--runs N] [--parallel K]`` (``docs/testing.md``).
Each run's pytest output goes to ``build/realclock/run-<i>.log``; exits 1 if
any run failed. Extra arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "realclock"

REAL_CLOCK = [
    "tests/server",
    "tests/redisbackend",
    "tests/test_examples.py",
    "tests/test_testing_helpers.py",
    "tests/test_rr_proxy.py",
]
"""The test paths that run on the real clock (the rest run on ``MockClock``)."""


def _start(index: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], float, Path]:
    log = OUT / f"run-{index}.log"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-W",
        "error",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={OUT / f'tmp-{index}'}",
        *REAL_CLOCK,
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return process, time.monotonic(), log


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return lines[-1] if lines else "(no output)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs in a row (default 20)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    args, extra = parser.parse_known_args()
    if args.runs < 1 or args.parallel < 1:
        parser.error(f"--runs and --parallel must be >= 1, got {args.runs} and {args.parallel}")
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running: dict[int, tuple[subprocess.Popen[bytes], float, Path]] = {}
    results: dict[int, bool] = {}
    next_run = 1
    failed = False
    while running or (next_run <= args.runs and not failed):
        while not failed and next_run <= args.runs and len(running) < args.parallel:
            running[next_run] = _start(next_run, extra)
            next_run += 1
        time.sleep(0.5)
        for index, (process, begun, log) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[index]
            results[index] = code == 0
            failed = failed or code != 0
            verdict = "passed" if code == 0 else f"FAILED (exit {code})"
            load = os.getloadavg()[0]
            print(
                f"run {index}: {verdict} in {time.monotonic() - begun:.0f} s "
                f"(load {load:.1f}): {_tail(log)}",
                flush=True,
            )
    streak = 0
    for index in sorted(results):
        if not results[index]:
            break
        streak += 1
    total = time.monotonic() - started
    print(
        f"streak: {streak} of {len(results)} runs passed before the first failure "
        f"({total / 60:.1f} min, {args.parallel} at once); logs in {OUT}",
        flush=True,
    )
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
