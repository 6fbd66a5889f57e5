"""Start policies: reject, interrupt and enqueue; queued runs (API.md "Added in 0.2")."""

from __future__ import annotations

import pickle

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_chatruns import (
    ChatRun,
    ChatRunError,
    ChatRunStatus,
    RegistryConfig,
    RunAlreadyActive,
    RunNotFound,
    RunQueueFull,
    StartPolicy,
    open_chat_run_registry,
)

from helpers import park

QUEUED = ChatRunStatus.QUEUED
RUNNING = ChatRunStatus.RUNNING


def test_start_policy_values_and_queued_status():
    assert [p.value for p in StartPolicy] == ["reject", "interrupt", "enqueue"]
    assert StartPolicy("enqueue") is StartPolicy.ENQUEUE
    assert isinstance(StartPolicy.REJECT, str)
    assert ChatRunStatus.QUEUED.value == "queued"
    assert ChatRunStatus.QUEUED.is_active
    assert not ChatRunStatus.QUEUED.is_terminal


def test_run_queue_full_is_a_chat_run_error_and_pickles():
    exc = RunQueueFull("c", 3)
    assert isinstance(exc, ChatRunError)
    assert (exc.conversation_id, exc.max_queued) == ("c", 3)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.conversation_id, copy.max_queued, str(copy)) == ("c", 3, str(exc))


async def test_every_policy_starts_at_once_with_no_active_run(autojump_clock):
    async with open_chat_run_registry() as registry:
        for n, policy in enumerate(["reject", "interrupt", "enqueue", *StartPolicy]):
            run = registry.try_start(f"c{n}", park, if_active=policy)
            assert run.record.status is RUNNING
            assert registry.queued(f"c{n}") == []
        assert registry.stats().queued == 0


@pytest.mark.parametrize("bad", ["Reject", "", "queue", 1, None, ChatRunStatus.RUNNING])
async def test_unknown_policy_is_a_value_error_and_changes_nothing(autojump_clock, bad):
    async with open_chat_run_registry() as registry:
        first = registry.try_start("c", park)
        before = registry.stats()
        with pytest.raises(ValueError, match="if_active"):
            registry.try_start("c", park, if_active=bad)
        with pytest.raises(ValueError, match="if_active"):
            registry.try_start("other", park, if_active=bad)  # even with nothing active
        assert registry.stats() == before
        assert registry.get("other") is None
        first.interrupt()


async def test_reject_is_the_default_and_changes_nothing(autojump_clock):
    async with open_chat_run_registry() as registry:
        first = registry.try_start("c", park)
        with pytest.raises(RunAlreadyActive) as info:
            registry.try_start("c", park, if_active="reject")
        assert info.value.run_id == first.run_id
        with pytest.raises(RunAlreadyActive):
            registry.try_start("c", park)
        assert registry.get("c").run_id == first.run_id
        assert registry.queued("c") == []
        first.interrupt()


async def test_enqueue_runs_in_fifo_order_one_at_a_time(autojump_clock):
    order = []

    async def step(run: ChatRun, name: str) -> None:
        order.append((name, "start", trio.current_time()))
        # The invariant: never two running runs in one conversation.
        assert [r.status for r in registry.list(active_only=True) if r.status is not QUEUED] == [
            RUNNING
        ]
        run.push_frame(name)
        await trio.sleep(1)
        order.append((name, "end", trio.current_time()))

    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", step, "a")
        b = registry.try_start("c", step, "b", if_active="enqueue")
        c = registry.try_start("c", step, "c", if_active=StartPolicy.ENQUEUE)
        assert (a.record.status, b.record.status, c.record.status) == (RUNNING, QUEUED, QUEUED)
        assert [r.run_id for r in registry.queued("c")] == [b.run_id, c.run_id]
        assert registry.get("c").run_id == a.run_id  # the current run started last
        assert registry.stats().queued == 2
        assert registry.stats().active == 1
        listed = {r.run_id: r.status for r in registry.list()}
        assert listed == {a.run_id: RUNNING, b.run_id: QUEUED, c.run_id: QUEUED}
        assert len(registry.list(active_only=True)) == 3
        await c.wait()
        assert order == [
            ("a", "start", 0.0),
            ("a", "end", 1.0),
            ("b", "start", 1.0),
            ("b", "end", 2.0),
            ("c", "start", 2.0),
            ("c", "end", 3.0),
        ]
        for run in (a, b, c):
            assert run.record.status is ChatRunStatus.COMPLETED
        assert registry.get("c").run_id == c.run_id
        assert registry.stats().queued == 0


async def test_a_queued_run_starts_in_the_same_step_its_predecessor_ends(autojump_clock):
    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        b = registry.try_start("c", park, if_active="enqueue")
        a.push_frame("done", status="completed")
        # Synchronously: the next run is current and running at once.
        assert b.record.status is RUNNING
        assert registry.get("c").run_id == b.run_id
        assert registry.queued("c") == []
        # The replaced run is not retained and not counted as evicted.
        stats = registry.stats()
        assert (stats.retained_terminal, stats.evicted_ttl, stats.evicted_lru) == (0, 0, 0)
        assert stats.active == 1
        b.interrupt()


async def test_enqueue_past_the_limit_raises_run_queue_full_and_changes_nothing(autojump_clock):
    config = RegistryConfig(max_queued_per_conversation=2)
    async with open_chat_run_registry(config) as registry:
        a = registry.try_start("c", park)
        registry.try_start("c", park, if_active="enqueue")
        registry.try_start("c", park, if_active="enqueue")
        before = (registry.stats(), registry.queued("c"))
        with pytest.raises(RunQueueFull) as info:
            registry.try_start("c", park, if_active="enqueue")
        assert (info.value.conversation_id, info.value.max_queued) == ("c", 2)
        assert (registry.stats(), registry.queued("c")) == before
        # Other conversations have their own queue.
        registry.try_start("d", park)
        registry.try_start("d", park, if_active="enqueue")
        a.interrupt()


async def test_max_queued_zero_refuses_every_enqueue_on_a_busy_conversation(autojump_clock):
    config = RegistryConfig(max_queued_per_conversation=0)
    async with open_chat_run_registry(config) as registry:
        a = registry.try_start("c", park, if_active="enqueue")  # idle: starts
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RunQueueFull):
            registry.try_start("c", park, if_active="enqueue")
        # interrupt leaves exactly one run waiting, whatever the cap.
        b = registry.try_start("c", park, if_active="interrupt")
        assert [r.run_id for r in registry.queued("c")] == [b.run_id]
        await a.wait()
        b.interrupt()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_max_queued_per_conversation_is_validated(bad):
    with pytest.raises((TypeError, ValueError), match="max_queued_per_conversation"):
        RegistryConfig(max_queued_per_conversation=bad)


async def test_interrupt_policy_cancels_the_queue_and_starts_after_the_interrupted_run(
    autojump_clock,
):
    started = []

    async def worker(run: ChatRun, name: str) -> None:
        started.append(name)
        try:
            run.push_frame(f"{name} working")
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()  # unwinding takes a scheduling round
                run.push_frame(f"{name} unwound")

    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", worker, "a")
        await trio.testing.wait_all_tasks_blocked()
        q1 = registry.try_start("c", worker, "q1", if_active="enqueue")
        q2 = registry.try_start("c", worker, "q2", if_active="enqueue")
        async with (
            registry.subscribe("c") as of_a,
            registry.subscribe("c", run_id=q1.run_id) as of_q1,
        ):
            new = registry.try_start("c", worker, "new", if_active="interrupt")
            # The queued runs ended cancelled at once, without running.
            for run in (q1, q2):
                assert run.record.status is ChatRunStatus.CANCELLED
                assert run.record.latest_seq == 1
            assert [e.frame async for e in of_q1] == [{"type": "interrupted"}]
            assert [r.run_id for r in registry.queued("c")] == [new.run_id]
            assert new.record.status is QUEUED
            assert a.record.status is RUNNING  # its producer is still unwinding
            await a.wait()
            assert a.record.status is ChatRunStatus.CANCELLED
            assert new.record.status is RUNNING
            await trio.testing.wait_all_tasks_blocked()
            assert started == ["a", "new"]
            frames = [e.frame async for e in of_a]
            assert frames == ["a working", "a unwound", {"type": "interrupted"}]
        new.interrupt()


async def test_interrupt_policy_when_the_active_producer_never_started_starts_at_once(
    autojump_clock,
):
    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)  # its producer has not run yet
        b = registry.try_start("c", park, if_active="interrupt")
        assert a.record.status is ChatRunStatus.CANCELLED
        assert b.record.status is RUNNING
        assert registry.get("c").run_id == b.run_id
        await trio.testing.wait_all_tasks_blocked()
        b.interrupt()


async def test_a_queued_run_interrupted_before_it_starts_never_runs_its_producer(autojump_clock):
    ran = []

    async def never(run: ChatRun) -> None:  # pragma: no cover - must not run
        ran.append(run.run_id)

    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        q = registry.try_start("c", never, if_active="enqueue")
        q2 = registry.try_start("c", park, if_active="enqueue")
        assert q.interrupt() is True
        assert q.interrupt() is False
        record = q.record
        assert record.status is ChatRunStatus.CANCELLED
        assert record.terminated_at is not None
        assert [r.run_id for r in registry.queued("c")] == [q2.run_id]
        assert registry.stats().queued == 1
        a.interrupt()
        await a.wait()
        assert q2.record.status is RUNNING
        await trio.testing.wait_all_tasks_blocked()
        q2.interrupt()
    assert ran == []


async def test_keyed_interrupt_acts_on_the_current_run_then_the_queue_goes_on(autojump_clock):
    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        b = registry.try_start("c", park, if_active="enqueue")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.interrupt("c") is True
        await a.wait()
        assert b.record.status is RUNNING
        assert registry.interrupt("c") is True
        await b.wait()
        assert registry.interrupt("c") is False


async def test_subscribe_to_a_queued_run_waits_for_its_frames_and_ends_with_it(autojump_clock):
    async def speak(run: ChatRun) -> None:
        for word in ("hello", "world"):
            run.push_frame(word)
            await trio.sleep(1)

    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        b = registry.try_start("c", speak, if_active="enqueue")
        with pytest.raises(RunNotFound):
            async with registry.subscribe("c", run_id="no-such-run"):
                pass  # pragma: no cover
        got = []
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                async with registry.subscribe("c", run_id=b.run_id) as subscription:
                    assert subscription.run_id == b.run_id
                    got.extend([e.frame async for e in subscription])

            nursery.start_soon(read)
            await trio.sleep(5)
            assert got == []  # still queued
            a.interrupt()
        assert got == ["hello", "world"]
        assert b.record.status is ChatRunStatus.COMPLETED


async def test_a_subscriber_of_a_queued_run_that_is_cancelled_gets_the_interrupted_frame(
    autojump_clock,
):
    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        b = registry.try_start("c", park, if_active="enqueue")
        async with registry.subscribe("c", run_id=b.run_id) as subscription:
            b.interrupt()
            assert [e.frame async for e in subscription] == [{"type": "interrupted"}]
        with pytest.raises(RunNotFound):  # no longer queued, never current
            async with registry.subscribe("c", run_id=b.run_id):
                pass  # pragma: no cover
        a.interrupt()


async def test_closing_ends_queued_runs_cancelled_without_running_them(autojump_clock):
    ran = []

    async def never(run: ChatRun) -> None:  # pragma: no cover - must not run
        ran.append(run.run_id)

    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        queued = [registry.try_start("c", never, if_active="enqueue") for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
    assert ran == []
    assert a.record.status is ChatRunStatus.CANCELLED
    for run in queued:
        assert run.record.status is ChatRunStatus.CANCELLED
    assert registry.stats().queued == 0
    assert registry.queued("c") == []


async def test_a_queued_run_accepts_frames_and_a_terminal_status_but_no_active_status(
    autojump_clock,
):
    async with open_chat_run_registry() as registry:
        a = registry.try_start("c", park)
        b = registry.try_start("c", park, if_active="enqueue")
        assert b.push_frame({"type": "queued", "position": 1}) == 1
        for status in ("running", ChatRunStatus.WAITING_HITL, "queued"):
            with pytest.raises(ValueError):
                b.push_frame("x", status=status)
            with pytest.raises(ValueError):
                b.update(status)
        with pytest.raises(ValueError, match="queued"):
            a.update("queued")  # never settable by hand
        assert b.record.latest_seq == 1
        assert b.record.status is QUEUED
        b.update("completed")  # ends it without running it
        assert b.record.status is ChatRunStatus.COMPLETED
        assert registry.queued("c") == []
        a.interrupt()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reject", "interrupt", "enqueue", "end", "interrupt_run", "jump"]),
            st.integers(0, 3),
        ),
        max_size=30,
    )
)
def test_any_interleaving_keeps_one_running_run_and_fifo_order(steps):
    """Concurrent starts with every policy, ends, interrupts and time on one
    conversation: at most one running run, runs start in the order they were
    queued, every start has exactly one outcome, every run's hook is called
    exactly once."""
    hooked: list[str] = []

    async def hook(record, events) -> None:
        hooked.append(record.run_id)

    async def main() -> None:
        started: list[str] = []
        queued_order: list[str] = []
        runs: list[ChatRun] = []

        async def producer(run: ChatRun) -> None:
            started.append(run.run_id)
            await trio.sleep_forever()

        config = RegistryConfig(max_queued_per_conversation=3)
        async with open_chat_run_registry(config, on_run_end=hook) as registry:

            async def starter(policy: str) -> None:
                try:
                    run = registry.try_start("c", producer, if_active=policy)
                except (RunAlreadyActive, RunQueueFull):
                    return
                runs.append(run)
                if run.record.status is QUEUED:
                    queued_order.append(run.run_id)

            async with trio.open_nursery() as nursery:
                for kind, n in steps:
                    if kind in ("reject", "interrupt", "enqueue"):
                        # Several starts in one scheduling round, as concurrent requests.
                        for _ in range(n + 1):
                            nursery.start_soon(starter, kind)
                    elif kind == "end":
                        current = registry.get("c")
                        if current is not None and current.status is RUNNING:
                            registry.push_frame("c", "done", status="completed")
                    elif kind == "interrupt_run":
                        registry.interrupt("c")
                    else:
                        await trio.sleep(n)
                    await trio.testing.wait_all_tasks_blocked()
                    running = [r for r in registry.list(active_only=True) if r.status is not QUEUED]
                    assert len(running) <= 1
                    assert registry.stats().queued == len(registry.queued("c")) <= 3
            # FIFO: queued runs that started did so in the order they were queued.
            started_queued = [rid for rid in started if rid in queued_order]
            assert started_queued == [rid for rid in queued_order if rid in started_queued]
        assert all(run.record.status.is_terminal for run in runs)
        assert sorted(hooked) == sorted(run.run_id for run in runs)
        assert len(set(hooked)) == len(hooked)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
