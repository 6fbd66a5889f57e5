"""``trio_chatruns.testing``: the pytest plugin, its fixtures, and the helpers;
and the example test in docs/ runs and passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trio_chatruns import ChatRunStatus, RegistryConfig, SubscriberLagged
from trio_chatruns.testing import (
    Push,
    Raise,
    Sleep,
    WaitFor,
    collect_events,
    open_event_collector,
    scripted_producer,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "test_chat_handler.py"


def test_the_documented_example_test_passes_with_the_plugin_alone(tmp_path):
    # A fresh directory with no conftest.py and no trio_mode: the fixtures
    # must come from the installed plugin (entry point pytest11).
    (tmp_path / "test_chat_handler.py").write_text(EXAMPLE.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_example_is_shown_in_the_docs():
    doc = (ROOT / "docs" / "testing-helpers.md").read_text()
    assert "examples/test_chat_handler.py" in doc
    for name in ("chat_run_registry", "chat_run_config", "chat_run_ends", "scripted_producer"):
        assert name in doc


async def test_the_registry_fixture_is_open_and_records_run_ends(
    autojump_clock, chat_run_registry, chat_run_ends, chat_run_config
):
    assert chat_run_registry.config == chat_run_config == RegistryConfig()
    assert not chat_run_registry.closed
    run = chat_run_registry.try_start("c", scripted_producer("x"))
    await run.wait()
    [record] = await chat_run_ends.wait_for(1)
    assert record.run_id == run.run_id
    assert [e.frame for e in chat_run_ends.by_run_id(run.run_id)[1]] == ["x"]
    with pytest.raises(KeyError):
        chat_run_ends.by_run_id("no-such-run")


async def test_scripted_producer_plays_frames_pushes_sleeps_waits_and_raises(
    chat_run_registry, autojump_clock
):
    gate = trio.Event()
    producer = scripted_producer(
        "a",
        Push({"tool": "search"}, status="waiting_approval", current_tool="search"),
        WaitFor(gate),
        Sleep(5),
        "b",
        Raise(ValueError("model down")),
        "never",
        delay=1,
    )
    run = chat_run_registry.try_start("c", producer)
    async with open_event_collector(chat_run_registry, "c") as collector:
        await collector.wait_for(2)
        assert run.record.status is ChatRunStatus.WAITING_APPROVAL
        assert run.record.current_tool == "search"
        assert trio.current_time() == 1.0
        gate.set()
        events = await collector.wait_done()
    assert [e.frame for e in events] == ["a", {"tool": "search"}, "b"]
    # 1 s after "a", 1 s after the Push, Sleep(5), 1 s after "b", then the error.
    assert trio.current_time() == 8.0
    assert run.record.status is ChatRunStatus.FAILED
    assert run.record.last_error == "ValueError: model down"
    assert collector.error is None and collector.done


async def test_a_terminal_push_ends_the_script(autojump_clock, chat_run_registry):
    run = chat_run_registry.try_start(
        "c", scripted_producer(Push("bye", status="completed"), "never")
    )
    assert [e.frame for e in await collect_events(chat_run_registry, "c")] == ["bye"]
    assert run.record.status is ChatRunStatus.COMPLETED


@pytest.mark.parametrize("bad", [{"delay": -1}, {"delay": float("nan")}])
def test_scripted_producer_refuses_bad_delays(bad):
    with pytest.raises(ValueError, match="delay"):
        scripted_producer("a", **bad)
    with pytest.raises(ValueError, match="Sleep"):
        scripted_producer(Sleep(-1))


async def test_the_collector_reports_lag(autojump_clock):
    from trio_chatruns import open_chat_run_registry

    async with open_chat_run_registry(RegistryConfig(subscriber_buffer=1)) as registry:
        run = registry.try_start("c", scripted_producer(WaitFor(trio.Event())))
        async with open_event_collector(registry, "c") as collector:
            run.push_frame(1)
            run.push_frame(2)  # the reader has not run yet: its one slot is full
            await collector.wait_done()
        assert isinstance(collector.error, SubscriberLagged)
        assert collector.seqs == [1]
        run.interrupt()
