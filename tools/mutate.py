"""Mutation testing of the core and of the server's protocol modules, with mutmut 3.

Run by ``nox -s mutate`` (``nox -s mutate -- core`` or ``-- server`` for one
group; ``-- --quick`` keeps the work directory and the verdicts in it: it tests
the mutants of functions changed since the last run, then re-tests the last
run's survivors, and the mutants no test reached, against the current tests).
Not part of ``nox``'s default sessions: it takes minutes, not seconds (see
``docs/testing.md``).

Each group is mutated in its own work directory, ``.mutmut/<group>/``, holding
a copy of ``src/``, ``tests/`` and ``pyproject.toml`` and a ``setup.cfg`` with
that group's ``[mutmut]`` settings. That gives each group its own fast test
selection: the core modules are tested by the core tests only (the server
tests start real servers and run in real time), the server modules by the
server tests minus the browser and subprocess ones. Within a group mutmut runs,
for each mutant, only the tests that call the mutated function.

Prints, per group, mutmut's counts, the kill ratio (killed + timed out, over
all mutants that some test reaches) and every survivor, and writes the same
to ``.mutmut/<group>/summary.json``. Exits non-zero if mutmut itself fails;
survivors do not fail the session (they are a report, see docs/testing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutmut"

CORE_MODULES = "src/trio_chatruns/_*.py"
"""Every core module (mutmut 3 mutates code in functions only: ``_records.py``
and ``_counters.py``, field declarations, give no mutants)."""

SERVER_MODULES = [
    "server/sse.py",  # cursor parsing, SSE encoding, strict JSON
    "server/config.py",  # the conversation id rule
    "server/streams.py",  # cursor resolution, refusals, the stream loop
    "server/state.py",  # stream accounting, shutdown
    "server/routes.py",  # request limits: Content-Length, body size, prompt, caps
]

GROUPS: dict[str, dict[str, Any]] = {
    "core": {
        "only_mutate": [CORE_MODULES],
        "tests": [
            "tests",
            # Real-clock tests, with their own groups (or none): the server
            # (below) and the Redis backend (its own modules).
            "--ignore=tests/server",
            "--ignore=tests/redisbackend",
            # A subprocess cannot see the mutants: the examples, and the
            # documented example test run by a fresh pytest.
            "--ignore=tests/test_examples.py",
            "--deselect=tests/test_testing_helpers.py"
            "::test_the_documented_example_test_passes_with_the_plugin_alone",
            # Reads the source files, calls no core function.
            "--ignore=tests/test_import_cycles.py",
        ],
    },
    "server": {
        "only_mutate": [f"src/trio_chatruns/{name}" for name in SERVER_MODULES],
        # The protocol functions of those modules (mutmut's mangled names); the
        # page, the route plumbing, strict JSON and the error handlers are left
        # out, so a run fits this machine. (mutmut 3 does not mutate decorated
        # functions: ServerState.track_stream, a context manager, is covered by
        # the stream-slot tests instead.)
        "mutants": [
            # cursor parsing
            "trio_chatruns.server.sse.x_parse_seq_*",
            "trio_chatruns.server.sse.x_parse_run_id_*",
            "trio_chatruns.server.sse.x_parse_cursor_*",
            "trio_chatruns.server.sse.x_format_cursor_*",
            "trio_chatruns.server.streams.x_cursor_from_request_*",
            "trio_chatruns.server.config.*",
            # SSE encoding
            "trio_chatruns.server.sse.x_encode_sse_*",
            "trio_chatruns.server.sse.x__field_lines_*",
            "trio_chatruns.server.sse.x_encode_comment_*",
            # limits
            "trio_chatruns.server.routes.x__read_body_*",
            "trio_chatruns.server.routes.x_too_many_*",
            # the answer to a cursor (404, 204, 400 past latest_seq), shared by
            # the streams and GET .../events
            "trio_chatruns.server.streams.x_check_cursor_*",
            # stream accounting and refusals
            "trio_chatruns.server.streams.x_resolve_stream_*",
            "trio_chatruns.server.state.xǁServerStateǁstats_*",
            "trio_chatruns.server.state.xǁServerStateǁsubscriber_count_*",
            "trio_chatruns.server.state.xǁServerStateǁdisconnect_streams_*",
            "trio_chatruns.server.state.xǁServerStateǁbegin_shutdown_*",
        ],
        "tests": [
            "tests/server",
            # A real browser and subprocesses cannot see the mutants (and are slow).
            "--ignore=tests/server/test_server_browser.py",
            "--ignore=tests/server/test_server_browser_security.py",
            "--ignore=tests/server/test_server_cli.py",
            "--deselect=tests/server/test_server_shutdown.py::test_cli_exits_cleanly_on_signal",
            # Slow tests of other parts: they reach the protocol functions only
            # in passing, and would run in full for every surviving mutant (the
            # OpenAPI fuzz, the SQLite history and its restarts, the RSS waves,
            # the OpenAI-compatible model).
            "--ignore=tests/server/test_server_openapi.py",
            "--ignore=tests/server/test_server_history.py",
            "--ignore=tests/server/test_history_store.py",
            "--ignore=tests/server/test_server_stalled.py",
            "--ignore=tests/server/test_server_openai.py",
        ],
    },
}

# mutmut's own arguments come first (-x -q -p no:randomly); these follow.
PYTEST_ARGS = ["-p", "no:cacheprovider", "--timeout=300"]


def _setup_cfg(group: dict[str, Any]) -> str:
    def lines(values: list[str]) -> str:
        return "".join(f"\n    {value}" for value in values)

    return (
        "# Written by tools/mutate.py for this work directory only.\n"
        "[mutmut]\n"
        "source_paths = src\n"
        # Some tests read the docs (the documented example, the names shown).
        "also_copy = docs\n"
        f"only_mutate ={lines(group['only_mutate'])}\n"
        f"pytest_add_cli_args ={lines(PYTEST_ARGS)}\n"
        f"pytest_add_cli_args_test_selection ={lines(group['tests'])}\n"
    )


def _prepare_baseline(name: str, ref: str) -> Path:
    """A fresh work directory holding ``src/``, ``tests/`` and ``pyproject.toml``
    as they were at git revision ``ref`` (to measure the kill ratio before a change)."""
    work = WORK / f"{name}-{ref}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "src", "tests", "docs", "pyproject.toml"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    (work / "setup.cfg").write_text(_setup_cfg(GROUPS[name]))
    return work


def _prepare(name: str, fresh: bool) -> Path:
    """The group's work directory, with the current sources and tests copied in.

    ``copy2`` keeps modification times, so mutmut re-mutates (and re-tests)
    only the files that changed since its last run there.
    """
    work = WORK / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for folder in ("src", "tests", "docs"):
        target = work / folder
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / folder, target, copy_function=shutil.copy2, ignore=ignore)
        mutated = work / "mutants" / folder
        if folder != "src" and mutated.exists():
            # mutmut copies tests/ and docs/ only once; new tests must reach the mutants.
            shutil.rmtree(mutated)
            shutil.copytree(ROOT / folder, mutated, copy_function=shutil.copy2, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    (work / "setup.cfg").write_text(_setup_cfg(GROUPS[name]))
    return work


def _strip_mutmut_table(work: Path) -> None:
    # mutmut reads [tool.mutmut] from pyproject.toml before setup.cfg: the
    # project keeps none, but make sure a stray one cannot override the group.
    text = (work / "pyproject.toml").read_text()
    assert "[tool.mutmut]" not in text, "keep mutmut's settings in tools/mutate.py"


def _summary(work: Path) -> dict[str, object]:
    results = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    stats: dict[str, int] = {}
    survivors, untested = [], []
    for line in results.splitlines():
        key, _, status = line.strip().rpartition(": ")
        stats[status] = stats.get(status, 0) + 1
        if status == "survived":
            survivors.append(key)
        elif status == "no tests":
            untested.append(key)
    for status in ("killed", "timeout", "survived", "no tests", "suspicious", "not checked"):
        stats.setdefault(status, 0)
    killed = stats["killed"] + stats["timeout"]
    # Not reached: no test calls the function, or this run did not test it (a
    # group's "mutants" list or --only).
    reached = (
        sum(stats.values()) - stats["no tests"] - stats["not checked"] - stats.get("skipped", 0)
    )
    return {
        "counts": stats,
        "killed_or_timeout": killed,
        "reached": reached,
        "kill_ratio": round(100 * killed / reached, 1) if reached else 0.0,
        "survivors": survivors,
        "no_tests": untested,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", help=f"of {', '.join(GROUPS)} (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="keep earlier results; re-test changed code only"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="test only these mutants, e.g. 'trio_chatruns._retention*'",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="mutate the sources and tests of git revision REF instead (in .mutmut/GROUP-REF)",
    )
    parser.add_argument(
        "--max-children",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="mutants tested at once (default: 2, or 1 on one core)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="niceness added to mutmut and its tests (default 10: a shared machine stays usable)",
    )
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by mutmut and every forked test run
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}; choose from {list(GROUPS)}")
    failed = False
    for name in args.groups or list(GROUPS):
        if args.baseline:
            work = _prepare_baseline(name, args.baseline)
        else:
            work = _prepare(name, fresh=not args.quick)
        _strip_mutmut_table(work)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        if '"mutate"' in (work / "tests" / "conftest.py").read_text():
            env["HYPOTHESIS_PROFILE"] = "mutate"  # (an older revision may lack it)
        only = args.only or GROUPS[name].get("mutants", [])
        print(f"== mutmut: {name} group in {work.relative_to(ROOT)}", flush=True)
        started = time.monotonic()
        # mutmut's progress display is one long line per update: into a file.
        log = work / "mutmut-run.log"
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
        with log.open("w") as output:
            run = subprocess.run(
                [*command, *only], cwd=work, stdout=output, stderr=subprocess.STDOUT, env=env
            )
            retest: list[str] = []
            if run.returncode == 0 and args.quick:
                # mutmut keeps earlier verdicts: survivors must meet the new
                # tests, and so must the mutants no test reached last time (a
                # new test may call their function now).
                earlier = _summary(work)
                for key in ("survivors", "no_tests"):
                    retest.extend(cast("list[str]", earlier[key]))
            if retest:
                run = subprocess.run(
                    [*command, *retest],
                    cwd=work,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        minutes = (time.monotonic() - started) / 60
        if run.returncode != 0:
            tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
            print(
                f"mutmut run failed for {name} (exit {run.returncode}); see {log}", file=sys.stderr
            )
            failed = True
            continue
        summary = {"group": name, "minutes": round(minutes, 1), **_summary(work)}
        (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        counts = summary["counts"]
        print(
            f"{name}: {summary['kill_ratio']}% killed "
            f"({summary['killed_or_timeout']}/{summary['reached']} reached by a test; "
            f"{counts['killed']} killed, {counts['timeout']} timed out, "
            f"{counts['survived']} survived, {counts['no tests']} reached by no test, "
            f"{counts['suspicious']} suspicious) in {minutes:.1f} min"
        )
        for key in summary["survivors"]:
            print(f"  survived: {key}")
        for key in summary["no_tests"]:
            print(f"  no tests: {key}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
