"""How runs end: producer outcomes, interrupts, terminal pushes, shutdown."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import trio
import trio.testing

from trio_chatruns import (
    ChatRunStatus,
    RegistryConfig,
    RunAlreadyActive,
    RunNotFound,
    RunTerminated,
    open_chat_run_registry,
)

from helpers import finished_run, make_ticker, park

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


async def test_a_producer_that_returns_completes_its_run(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", make_ticker(3))
        assert run.record.status is ChatRunStatus.RUNNING
        record = await run.wait()
        assert (record.status, record.latest_seq, record.last_error) == (
            ChatRunStatus.COMPLETED,
            3,
            None,
        )
        assert registry.get("c") == record


async def test_a_producer_may_set_its_own_terminal_status_and_keep_finishing(autojump_clock):
    finished = trio.Event()

    async def producer(run):
        run.push_frame("answer", status=ChatRunStatus.COMPLETED)
        await trio.sleep(10)  # e.g. flushing a transcript
        finished.set()

    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", producer)
        record = await run.wait()
        assert record.status is ChatRunStatus.COMPLETED
        assert not finished.is_set()  # wait() did not wait for the task
        await finished.wait()
        assert run.record == record


async def test_a_failing_producer_fails_only_its_run(autojump_clock, caplog):
    async def broken(run):
        run.push_frame("partial")
        await trio.sleep(1)
        raise RuntimeError("model exploded")

    async with open_chat_run_registry() as registry:
        healthy = registry.try_start("healthy", make_ticker(5))
        failing = registry.try_start("failing", broken)
        record = await failing.wait()
        assert record.status is ChatRunStatus.FAILED
        assert record.last_error == "RuntimeError: model exploded"
        assert record.latest_seq == 1
        assert (await healthy.wait()).status is ChatRunStatus.COMPLETED
        # The registry still works.
        registry.try_start("failing", make_ticker(1))
    [log] = [r for r in caplog.records if r.name == "trio_chatruns"]
    assert log.levelno == logging.ERROR
    assert log.exc_info is not None and log.exc_info[0] is RuntimeError
    assert failing.run_id in log.getMessage()


async def test_a_failing_producer_with_a_nursery_fails_its_run_with_the_group(autojump_clock):
    async def producer(run):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise ValueError("bad tool output")

    async with open_chat_run_registry() as registry:
        record = await registry.try_start("c", producer).wait()
        assert record.status is ChatRunStatus.FAILED
        assert "bad tool output" in (record.last_error or "")


async def test_keyboard_interrupt_in_a_producer_fails_the_run_and_propagates(autojump_clock):
    async def producer(run):
        await trio.sleep(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        async with open_chat_run_registry() as registry:
            run = registry.try_start("c", producer)
            other = registry.try_start("other", park)
            await trio.sleep_forever()
    assert run.record.status is ChatRunStatus.FAILED
    assert other.record.status is ChatRunStatus.CANCELLED


async def test_interrupt_keeps_frames_pushed_while_unwinding(autojump_clock):
    async def producer(run):
        run.push_frame({"type": "token", "text": "Hel"})
        try:
            await trio.sleep_forever()
        finally:
            run.push_frame({"type": "token", "text": "lo (cut)"})

    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", producer)
        async with trio.open_nursery() as nursery:
            seen = []

            async def subscriber():
                async with registry.subscribe("c") as subscription:
                    seen.extend([e.frame async for e in subscription])

            nursery.start_soon(subscriber)
            await trio.sleep(1)
            assert registry.interrupt("c") is True
            assert registry.interrupt("c") is True  # still active: idempotent
            # Still active until the producer has exited.
            assert run.record.status is ChatRunStatus.RUNNING
            record = await run.wait()
        assert record.status is ChatRunStatus.CANCELLED
        assert seen == [
            {"type": "token", "text": "Hel"},
            {"type": "token", "text": "lo (cut)"},
            {"type": "interrupted"},
        ]
        assert registry.interrupt("c") is False


async def test_interrupt_before_the_producer_ran_never_runs_it(autojump_clock):
    ran = False

    async def producer(run):
        nonlocal ran
        ran = True

    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", producer)
        assert run.interrupt() is True
        # Ended on the spot: nothing to unwind.
        assert run.record.status is ChatRunStatus.CANCELLED
        assert [e.frame for e in registry.events("c")] == [{"type": "interrupted"}]
        await trio.testing.wait_all_tasks_blocked()
    assert not ran


async def test_interrupt_of_an_unknown_or_finished_run_is_false(autojump_clock):
    async with open_chat_run_registry() as registry:
        assert registry.interrupt("nobody") is False
        run = finished_run(registry, "c")
        assert registry.interrupt("c") is False
        assert run.interrupt() is False


async def test_push_or_update_after_terminal_raises_run_terminated(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = finished_run(registry, "c", frames=2)
        with pytest.raises(RunTerminated, match="completed"):
            run.push_frame("late")
        with pytest.raises(RunTerminated):
            run.update(ChatRunStatus.RUNNING)
        with pytest.raises(RunTerminated):
            registry.push_frame("c", "late")
        with pytest.raises(RunTerminated):
            registry.update("c", "failed")
        assert registry.get("c").latest_seq == 2
        assert registry.stats().frames_pushed == 2


async def test_a_replaced_runs_handle_cannot_touch_the_new_run(autojump_clock):
    async with open_chat_run_registry() as registry:
        old = finished_run(registry, "c")
        new = registry.try_start("c", park)
        with pytest.raises(RunTerminated):
            old.push_frame("stale")
        assert new.record.latest_seq == 0
        new.interrupt()


async def test_try_start_refuses_an_active_conversation_and_changes_nothing(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        before = registry.get("c")
        with pytest.raises(RunAlreadyActive) as info:
            registry.try_start("c", park)
        assert info.value.run_id == run.run_id
        assert registry.get("c") == before
        assert registry.stats().active == 1
        run.interrupt()


async def test_active_statuses_move_freely(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.update(ChatRunStatus.WAITING_APPROVAL, current_tool="shell")
        assert run.record.status is ChatRunStatus.WAITING_APPROVAL
        assert run.record.current_tool == "shell"
        run.push_frame({"type": "approved"}, status="running", current_tool=None)
        assert (run.record.status, run.record.current_tool) == (ChatRunStatus.RUNNING, None)
        run.update("waiting_hitl", error="needs a human")
        assert run.record.last_error == "needs a human"
        assert registry.list(active_only=True)[0].status is ChatRunStatus.WAITING_HITL
        run.interrupt()


async def test_keyed_mutations_of_an_unknown_conversation_raise_run_not_found(autojump_clock):
    async with open_chat_run_registry() as registry:
        with pytest.raises(RunNotFound):
            registry.push_frame("nobody", "x")
        with pytest.raises(RunNotFound):
            registry.update("nobody", "running")


async def test_list_is_newest_updated_first(autojump_clock):
    async with open_chat_run_registry() as registry:
        a = registry.try_start("a", park)
        await trio.sleep(1)
        b = registry.try_start("b", park)
        await trio.sleep(1)
        finished_run(registry, "c")
        await trio.sleep(1)
        a.push_frame("bump")
        assert [r.conversation_id for r in registry.list()] == ["a", "c", "b"]
        assert [r.conversation_id for r in registry.list(active_only=True)] == ["a", "b"]
        a.interrupt()
        b.interrupt()


async def test_shutdown_cancels_active_runs_and_ends_every_subscription(autojump_clock):
    ended = []

    async def subscriber(registry, conversation_id):
        async with registry.subscribe(conversation_id) as subscription:
            frames = [e.frame async for e in subscription]
        ended.append((conversation_id, frames[-1]))

    async with trio.open_nursery() as outside:
        async with open_chat_run_registry() as registry:
            runs = [registry.try_start(f"c{n}", make_ticker(100)) for n in range(3)]
            await trio.sleep(2.5)
            for n in range(3):
                outside.start_soon(subscriber, registry, f"c{n}")
            await trio.testing.wait_all_tasks_blocked()
        # Returned only after every producer exited.
        assert registry.closed
        assert [r.record.status for r in runs] == [ChatRunStatus.CANCELLED] * 3
        assert registry.stats().subscribers == 0
        with pytest.raises(RuntimeError, match="closed"):
            registry.try_start("late", park)
        assert registry.get("c0") is not None  # still readable
    assert sorted(ended) == [(f"c{n}", {"type": "interrupted"}) for n in range(3)]


async def test_shutdown_stops_a_producer_still_finishing_after_its_terminal_push(
    autojump_clock,
):
    # Infinite retention: no deadline would ever stop this producer, so only
    # closing the registry (cancelling its nursery) can, and it must do so at once.
    stopped_at = []

    async def producer(run):
        run.update("completed")
        try:
            await trio.sleep_forever()
        finally:
            stopped_at.append(trio.current_time())

    async with open_chat_run_registry(RegistryConfig(terminal_retention=math.inf)) as registry:
        run = registry.try_start("c", producer)
        await trio.sleep(1)
        closed_at = trio.current_time()
    assert run.record.status is ChatRunStatus.COMPLETED
    assert stopped_at == [closed_at]


async def test_an_exception_in_the_body_propagates_as_itself(autojump_clock):
    with pytest.raises(ValueError, match="from the body") as info:
        async with open_chat_run_registry() as registry:
            run = registry.try_start("c", park)
            await trio.sleep(1)
            raise ValueError("from the body")
    assert type(info.value) is ValueError
    assert run.record.status is ChatRunStatus.CANCELLED


async def test_an_exception_group_from_the_body_is_not_rewrapped(autojump_clock):
    group = ExceptionGroup("mine", [ValueError("a"), KeyError("b")])
    with pytest.raises(ExceptionGroup) as info:
        async with open_chat_run_registry():
            raise group
    assert info.value is group


async def test_outer_cancellation_passes_through_the_registry(autojump_clock):
    with trio.move_on_after(5) as scope:
        async with open_chat_run_registry() as registry:
            run = registry.try_start("c", park)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert run.record.status is ChatRunStatus.CANCELLED


async def unwinding_with_an_error(run, started):
    """A producer whose child task fails while being cancelled (say, a
    connection reset during cleanup)."""

    async def child():
        try:
            await trio.sleep_forever()
        finally:
            raise OSError("connection reset while closing")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)
        started.set()
        await trio.sleep_forever()


async def test_an_error_while_unwinding_a_shutdown_is_logged_not_raised(autojump_clock, caplog):
    started = trio.Event()
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", unwinding_with_an_error, started)
        await started.wait()
    record = run.record
    assert record.status is ChatRunStatus.CANCELLED
    assert record.last_error == "OSError: connection reset while closing"
    assert [r.exc_info[0] for r in caplog.records if r.name == "trio_chatruns"] == [ExceptionGroup]


async def test_an_error_while_unwinding_an_outer_cancel_does_not_escape(autojump_clock):
    started = trio.Event()
    with trio.move_on_after(10) as scope:
        async with open_chat_run_registry() as registry:
            run = registry.try_start("c", unwinding_with_an_error, started)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert run.record.status is ChatRunStatus.CANCELLED


async def test_an_error_while_unwinding_an_interrupt_is_recorded(autojump_clock):
    started = trio.Event()
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", unwinding_with_an_error, started)
        await started.wait()
        run.interrupt()
        record = await run.wait()
        assert record.status is ChatRunStatus.CANCELLED
        assert "connection reset" in (record.last_error or "")
        assert registry.events("c")[-1].frame == {"type": "interrupted"}


async def test_a_producer_finishing_after_its_run_ended_gets_the_retention_as_deadline(
    autojump_clock,
):
    exited_at = []

    async def producer(run):
        run.push_frame("answer", status="completed")
        try:
            await trio.sleep_forever()  # e.g. a transcript upload that hangs
        finally:
            exited_at.append(trio.current_time())

    config = RegistryConfig(terminal_retention=60)
    async with open_chat_run_registry(config) as registry:
        registry.try_start("c", producer)
        await trio.sleep(1000)
        # Cancelled when its run's retention ran out, not left running forever.
        assert exited_at == [60]


async def test_evicting_a_run_cancels_its_still_finishing_producer(autojump_clock):
    exited = []

    async def producer(run, name):
        run.update("completed")
        try:
            await trio.sleep_forever()
        finally:
            exited.append(name)

    config = RegistryConfig(max_retained_terminal=1)
    async with open_chat_run_registry(config) as registry:
        registry.try_start("a", producer, "a")
        await trio.sleep(1)
        registry.try_start("b", producer, "b")
        await trio.sleep(1)  # b ended, so a was evicted (LRU) and its producer cancelled
        assert exited == ["a"]
        assert registry.get("a") is None


async def test_try_start_passes_extra_arguments_to_the_producer(autojump_clock):
    async def producer(run, prompt, *, _unused=None):
        run.push_frame({"echo": prompt})

    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", producer, "hello")
        await run.wait()
        assert registry.events("c")[0].frame == {"echo": "hello"}


async def test_a_terminal_status_set_before_the_producer_ran_means_it_never_runs(
    autojump_clock,
):
    ran = []

    async def producer(run):
        ran.append(True)

    async with open_chat_run_registry() as registry:
        registry.try_start("c", producer)
        registry.update("c", "failed", error="refused by a moderation check")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.get("c").last_error == "refused by a moderation check"
    assert ran == []


async def test_keyboard_interrupt_while_interrupted_still_fails_the_run(autojump_clock):
    async def producer(run):
        try:
            await trio.sleep_forever()
        finally:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        async with open_chat_run_registry() as registry:
            run = registry.try_start("c", producer)
            await trio.sleep(1)
            run.interrupt()
            await trio.sleep_forever()
    assert run.record.status is ChatRunStatus.FAILED
    assert run.record.last_error == "KeyboardInterrupt"


async def test_replacing_a_run_lets_its_finishing_producer_finish_until_the_deadline(
    autojump_clock,
):
    saved = []

    async def producer(run, save_seconds):
        run.push_frame("answer", status="completed")
        await trio.sleep(save_seconds)  # e.g. writing the transcript
        saved.append(run.run_id)

    config = RegistryConfig(terminal_retention=60)
    async with open_chat_run_registry(config) as registry:
        quick = registry.try_start("c", producer, 5)
        await trio.testing.wait_all_tasks_blocked()
        registry.try_start("c", producer, 1000)  # the next prompt, at once
        await trio.sleep(10)
        assert saved == [quick.run_id]  # the replaced run's producer finished
        await trio.sleep(1000)
        assert len(saved) == 1  # the hanging one was cancelled at its deadline
