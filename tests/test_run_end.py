"""The run-end hook ``on_run_end`` (API.md "Run-end hook")."""

from __future__ import annotations

import logging
import math

import pytest
import trio
import trio.testing

from trio_chatruns import (
    ChatRun,
    ChatRunStatus,
    RegistryConfig,
    open_chat_run_registry,
)

from helpers import park


class Recorder:
    """An ``on_run_end`` hook that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.tasks: list[trio.lowlevel.Task] = []

    async def __call__(self, record, events) -> None:
        self.tasks.append(trio.lowlevel.current_task())
        self.calls.append((record, list(events)))

    @property
    def run_ids(self) -> list[str]:
        return [record.run_id for record, _ in self.calls]


async def test_the_hook_gets_the_final_record_and_the_buffered_events(autojump_clock):
    hook = Recorder()
    config = RegistryConfig(max_events_per_run=3)
    async with open_chat_run_registry(config, on_run_end=hook) as registry:
        run = registry.try_start("c", park)
        for n in range(1, 5):
            run.push_frame({"n": n})
        run.push_frame({"n": 5}, status="completed", current_tool="search")
        assert hook.calls == []  # not in the ending task: in the registry's nursery
        await trio.testing.wait_all_tasks_blocked()
        assert len(hook.calls) == 1
        record, events = hook.calls[0]
        assert record == run.record
        assert record.status is ChatRunStatus.COMPLETED
        assert record.terminated_at is not None
        assert record.current_tool == "search"
        assert [e.seq for e in events] == [3, 4, 5]  # events[0].seq > 1: frames were trimmed
        assert events == registry.events("c")


async def test_exactly_once_for_every_run_whatever_its_status(autojump_clock):
    hook = Recorder()

    async def fail(run: ChatRun) -> None:
        raise RuntimeError("boom")

    async def complete(run: ChatRun) -> None:
        run.push_frame("hi")

    async with open_chat_run_registry(on_run_end=hook) as registry:
        done = registry.try_start("done", complete)
        failed = registry.try_start("failed", fail)
        cancelled = registry.try_start("cancelled", park)
        cancelled.interrupt()
        set_by_hand = registry.try_start("hand", park)
        set_by_hand.update("failed", error="by hand")
        set_by_hand.interrupt()  # already terminal: no second end
        long = registry.try_start("queue", park)
        await trio.testing.wait_all_tasks_blocked()
        queued_cancelled = registry.try_start("queue", park, if_active="enqueue")
        queued_cancelled.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        expected = {
            done.run_id: ChatRunStatus.COMPLETED,
            failed.run_id: ChatRunStatus.FAILED,
            cancelled.run_id: ChatRunStatus.CANCELLED,
            set_by_hand.run_id: ChatRunStatus.FAILED,
            queued_cancelled.run_id: ChatRunStatus.CANCELLED,
        }
        assert {r.run_id: r.status for r, _ in hook.calls} == expected
        assert len(hook.calls) == len(expected)
    # Closing ended the last active run; its hook ran before the block returned.
    assert sorted(hook.run_ids) == sorted([*expected, long.run_id])
    assert registry.stats().run_end_failures == 0


async def test_per_conversation_order_one_at_a_time_and_conversations_concurrently(
    autojump_clock,
):
    log: list[tuple] = []
    busy: dict[str, int] = {}

    async def hook(record, events) -> None:
        cid = record.conversation_id
        busy[cid] = busy.get(cid, 0) + 1
        assert busy[cid] == 1, "two hooks of one conversation at once"
        log.append(("start", cid, events[-1].frame, trio.current_time()))
        await trio.sleep(10)
        log.append(("end", cid, events[-1].frame, trio.current_time()))
        busy[cid] -= 1

    async with open_chat_run_registry(on_run_end=hook) as registry:
        for n in range(3):
            for cid in ("a", "b"):
                run = registry.try_start(cid, park)
                run.push_frame(n, status="completed")
        await trio.sleep(100)
    starts = [(cid, frame, t) for kind, cid, frame, t in log if kind == "start"]
    # Each conversation: its runs in the order they ended, 10 s apart (one at a time);
    # the two conversations side by side (concurrently).
    assert [s for s in starts if s[0] == "a"] == [("a", 0, 0.0), ("a", 1, 10.0), ("a", 2, 20.0)]
    assert [s for s in starts if s[0] == "b"] == [("b", 0, 0.0), ("b", 1, 10.0), ("b", 2, 20.0)]


async def test_the_hook_never_runs_in_the_producer_task_nor_delays_subscribers(autojump_clock):
    hook_release = trio.Event()
    producer_tasks = []
    hook_tasks = []

    async def slow_hook(record, events) -> None:
        hook_tasks.append(trio.lowlevel.current_task())
        await hook_release.wait()

    async def producer(run: ChatRun) -> None:
        producer_tasks.append(trio.lowlevel.current_task())
        run.push_frame("only")

    async with open_chat_run_registry(on_run_end=slow_hook) as registry:
        run = registry.try_start("c", producer)
        async with registry.subscribe("c") as subscription:
            # The subscriber sees the end while the hook is still running.
            assert [e.frame async for e in subscription] == ["only"]
        assert (await run.wait()).status is ChatRunStatus.COMPLETED
        await trio.testing.wait_all_tasks_blocked()
        assert len(hook_tasks) == 1
        assert hook_tasks[0] is not producer_tasks[0]
        hook_release.set()


async def test_a_hook_that_raises_is_logged_counted_and_changes_nothing_else(
    autojump_clock, caplog
):
    calls = []

    async def hook(record, events) -> None:
        calls.append(record.run_id)
        if len(calls) == 1:
            raise ValueError("disk full")

    async with open_chat_run_registry(on_run_end=hook) as registry:
        first = registry.try_start("c", park)
        first.update("completed")
        second = registry.try_start("c", park)
        second.update("completed")
        await trio.testing.wait_all_tasks_blocked()
        assert calls == [first.run_id, second.run_id]  # the next call still happened
        stats = registry.stats()
        assert stats.run_end_failures == 1
        assert stats.retained_terminal == 1
        assert registry.get("c") == second.record
        third = registry.try_start("c", park)  # the registry goes on
        third.interrupt()
    [message] = [r for r in caplog.records if "on_run_end" in r.getMessage()]
    assert message.levelno == logging.ERROR
    assert first.run_id in message.getMessage()
    assert isinstance(message.exc_info[1], ValueError)


async def test_a_hook_that_hangs_is_cancelled_after_run_end_timeout_and_counted(
    autojump_clock, caplog
):
    calls = []

    async def hook(record, events) -> None:
        calls.append((record.run_id, trio.current_time()))
        if len(calls) == 1:
            await trio.sleep_forever()

    config = RegistryConfig(run_end_timeout=7)
    assert config.run_end_timeout == 7.0
    async with open_chat_run_registry(config, on_run_end=hook) as registry:
        first = registry.try_start("c", park)
        first.update("completed")
        second = registry.try_start("c", park)
        second.update("completed")
        await trio.sleep(20)
        # The second call waited for the first one to be cancelled at 7 s.
        assert calls == [(first.run_id, 0.0), (second.run_id, 7.0)]
        assert registry.stats().run_end_failures == 1
    assert any(
        "timed out" in r.getMessage() and first.run_id in r.getMessage() for r in caplog.records
    )


async def test_leaving_the_registry_with_runs_active_and_queued_calls_every_hook(autojump_clock):
    saved = []

    async def hook(record, events) -> None:
        await trio.sleep(1)  # a hook that takes time still completes
        saved.append((record.run_id, record.status, [e.frame for e in events]))

    async def talking(run: ChatRun) -> None:
        run.push_frame("partial reply")
        await trio.sleep_forever()

    async with open_chat_run_registry(on_run_end=hook) as registry:
        runs = [registry.try_start(f"c{n}", talking) for n in range(3)]
        waiting = registry.try_start("c0", talking, if_active="enqueue")
        await trio.testing.wait_all_tasks_blocked()
    by_id = {run_id: (status, frames) for run_id, status, frames in saved}
    for run in runs:
        assert by_id[run.run_id] == (
            ChatRunStatus.CANCELLED,
            ["partial reply", {"type": "interrupted"}],
        )
    assert by_id[waiting.run_id] == (ChatRunStatus.CANCELLED, [{"type": "interrupted"}])
    assert len(saved) == 4


async def test_hooks_complete_even_when_the_registry_is_left_by_an_error_or_a_cancellation(
    autojump_clock,
):
    saved = []

    async def hook(record, events) -> None:
        await trio.sleep(1)
        saved.append(record.run_id)

    with pytest.raises(KeyError):
        async with open_chat_run_registry(on_run_end=hook) as registry:
            run = registry.try_start("c", park)
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("body")
    assert saved == [run.run_id]

    with trio.move_on_after(5) as scope:
        async with open_chat_run_registry(on_run_end=hook) as registry:
            other = registry.try_start("c", park)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert saved == [run.run_id, other.run_id]


async def test_a_body_error_propagates_as_itself_with_a_hook(autojump_clock):
    async def hook(record, events) -> None:
        pass

    with pytest.raises(ZeroDivisionError):
        async with open_chat_run_registry(on_run_end=hook) as registry:
            registry.try_start("c", park)
            1 / 0  # noqa: B018


@pytest.mark.parametrize("bad", [print, lambda record, events: None, "hook", 1])
async def test_on_run_end_must_be_an_async_function(autojump_clock, bad):
    with pytest.raises(TypeError, match="on_run_end"):
        async with open_chat_run_registry(on_run_end=bad):
            pass  # pragma: no cover


@pytest.mark.parametrize("bad", [0, -1, math.nan, "30", True])
def test_run_end_timeout_is_validated(bad):
    with pytest.raises((TypeError, ValueError), match="run_end_timeout"):
        RegistryConfig(run_end_timeout=bad)


def test_run_end_timeout_accepts_infinity():
    assert RegistryConfig(run_end_timeout=math.inf).run_end_timeout == math.inf
    assert RegistryConfig().run_end_timeout == 30.0
