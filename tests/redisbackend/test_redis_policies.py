"""Start policies, queues and the run-end hook, against both backends (the
in-memory registry and the Redis backend on a real redis-server): the rules
of ``tests/test_policies.py`` and ``tests/test_run_end.py`` that do not need
``MockClock``. Producers wait on events, never on real-time sleeps."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_chatruns import ChatRunStatus, RegistryConfig, RunAlreadyActive, RunQueueFull

RUNNING, QUEUED = ChatRunStatus.RUNNING, ChatRunStatus.QUEUED
CANCELLED, COMPLETED = ChatRunStatus.CANCELLED, ChatRunStatus.COMPLETED


async def park(run) -> None:
    await trio.sleep_forever()


def gated():
    """``producer(run, name)`` that records its start, pushes ``name``, and
    returns when ``release(name)`` is called; and ``started``, ``release``."""
    started: list[str] = []
    gates: dict[str, trio.Event] = {}

    def gate(name: str) -> trio.Event:
        return gates.setdefault(name, trio.Event())

    async def producer(run, name: str) -> None:
        started.append(name)
        run.push_frame(name)
        await gate(name).wait()

    def release(name: str) -> None:
        gate(name).set()

    return producer, started, release


async def final(backend: Any, run) -> Any:
    record = await run.wait()
    return record


async def test_enqueue_runs_in_fifo_order_one_at_a_time(open_backend) -> None:
    producer, started, release = gated()
    async with open_backend() as backend:
        a = await backend.try_start("c", producer, "a")
        b = await backend.try_start("c", producer, "b", if_active="enqueue")
        c = await backend.try_start("c", producer, "c", if_active="enqueue")
        assert (a.record.status, b.record.status, c.record.status) == (RUNNING, QUEUED, QUEUED)
        assert [r.run_id for r in await backend.queued("c")] == [b.run_id, c.run_id]
        assert [r.status for r in await backend.queued("c")] == [QUEUED, QUEUED]
        assert (await backend.get("c")).run_id == a.run_id
        stats = await backend.stats()
        assert (stats.active, stats.queued) == (1, 2)
        listed = {r.run_id: r.status for r in await backend.list()}
        assert listed == {a.run_id: RUNNING, b.run_id: QUEUED, c.run_id: QUEUED}
        assert len(await backend.list(active_only=True)) == 3
        for name, run in (("a", a), ("b", b), ("c", c)):
            release(name)
            assert (await run.wait()).status is COMPLETED
        assert started == ["a", "b", "c"]
        assert (await backend.get("c")).run_id == c.run_id
        assert (await backend.stats()).queued == 0
        assert await backend.queued("c") == []
        # The replaced runs are not retained, and not counted as evicted.
        stats = await backend.stats()
        assert (stats.retained_terminal, stats.evicted_ttl, stats.evicted_lru) == (1, 0, 0)


async def test_enqueue_past_the_limit_raises_run_queue_full_and_changes_nothing(
    open_backend,
) -> None:
    async with open_backend(RegistryConfig(max_queued_per_conversation=2)) as backend:
        a = await backend.try_start("c", park)
        await backend.try_start("c", park, if_active="enqueue")
        await backend.try_start("c", park, if_active="enqueue")
        before = [r.run_id for r in await backend.queued("c")]
        with pytest.raises(RunQueueFull) as info:
            await backend.try_start("c", park, if_active="enqueue")
        assert (info.value.conversation_id, info.value.max_queued) == ("c", 2)
        assert [r.run_id for r in await backend.queued("c")] == before
        assert (await backend.stats()).queued == 2
        # Other conversations have their own queue.
        await backend.try_start("d", park)
        await backend.try_start("d", park, if_active="enqueue")
        a.interrupt()


async def test_reject_refuses_a_busy_conversation_and_changes_nothing(open_backend) -> None:
    async with open_backend() as backend:
        a = await backend.try_start("c", park)
        with pytest.raises(RunAlreadyActive):
            await backend.try_start("c", park, if_active="reject")
        assert await backend.queued("c") == []
        assert (await backend.get("c")).run_id == a.run_id


async def test_max_queued_zero_and_interrupt_leaves_exactly_one_waiting(open_backend) -> None:
    async with open_backend(RegistryConfig(max_queued_per_conversation=0)) as backend:
        a = await backend.try_start("c", park, if_active="enqueue")  # idle: starts
        assert a.record.status is RUNNING
        with pytest.raises(RunQueueFull):
            await backend.try_start("c", park, if_active="enqueue")
        b = await backend.try_start("c", park, if_active="interrupt")
        assert (await a.wait()).status is CANCELLED
        while b.record.status is QUEUED:
            await trio.lowlevel.checkpoint()
        assert b.record.status is RUNNING
        b.interrupt()
        assert (await b.wait()).status is CANCELLED


async def test_interrupt_policy_cancels_the_queue_and_starts_after_the_interrupted_run(
    open_backend,
) -> None:
    started: list[str] = []
    working = {name: trio.Event() for name in ("a", "q1", "q2", "new")}

    async def worker(run, name: str) -> None:
        started.append(name)
        try:
            run.push_frame(f"{name} working")
            working[name].set()
            await trio.sleep_forever()
        finally:
            run.push_frame(f"{name} unwound")

    async with open_backend() as backend:
        a = await backend.try_start("c", worker, "a")
        await working["a"].wait()
        q1 = await backend.try_start("c", worker, "q1", if_active="enqueue")
        q2 = await backend.try_start("c", worker, "q2", if_active="enqueue")
        async with backend.subscribe("c", run_id=q1.run_id) as of_q1:
            new = await backend.try_start("c", worker, "new", if_active="interrupt")
            assert new.record.status is QUEUED
            # The queued runs end cancelled without running their producers.
            assert [(e.seq, e.frame) async for e in of_q1] == [(1, {"type": "interrupted"})]
        assert (await q1.wait()).status is CANCELLED
        assert (await q2.wait()).status is CANCELLED
        record = await a.wait()
        assert record.status is CANCELLED
        await working["new"].wait()
        assert started == ["a", "new"]
        async with backend.subscribe("c") as of_new:
            assert (await of_new.__anext__()).frame == "new working"
        assert [r.run_id for r in await backend.queued("c")] == []
        assert (await backend.get("c")).run_id == new.run_id
        new.interrupt()
        await new.wait()


async def test_a_queued_run_interrupted_before_it_starts_never_runs_its_producer(
    open_backend,
) -> None:
    producer, started, release = gated()
    async with open_backend() as backend:
        a = await backend.try_start("c", producer, "a")
        b = await backend.try_start("c", producer, "b", if_active="enqueue")
        c = await backend.try_start("c", producer, "c", if_active="enqueue")
        assert b.interrupt() is True
        record = await b.wait()
        assert (record.status, record.latest_seq) == (CANCELLED, 1)
        assert b.interrupt() is False
        assert [r.run_id for r in await backend.queued("c")] == [c.run_id]
        release("a")
        release("c")
        assert (await c.wait()).status is COMPLETED
        assert (await a.wait()).status is COMPLETED
        assert started == ["a", "c"]


async def test_subscribe_to_a_queued_run_waits_for_its_frames_and_ends_with_it(
    open_backend,
) -> None:
    producer, started, release = gated()
    async with open_backend() as backend:
        await backend.try_start("c", producer, "a")
        b = await backend.try_start("c", producer, "b", if_active="enqueue")
        got = []
        async with backend.subscribe("c", run_id=b.run_id) as sub:
            release("a")
            release("b")
            async for event in sub:
                got.append((event.run_id, event.seq, event.frame))
        assert got == [(b.run_id, 1, "b")]
        assert started == ["a", "b"]


async def test_closing_ends_queued_runs_cancelled_without_running_them(open_backend) -> None:
    producer, started, _ = gated()
    async with open_backend() as backend:
        a = await backend.try_start("c", producer, "a")
        b = await backend.try_start("c", producer, "b", if_active="enqueue")
        while not started:
            await trio.lowlevel.checkpoint()
    assert started == ["a"]
    assert a.record.status is CANCELLED
    assert b.record.status is CANCELLED


async def test_a_queued_run_accepts_frames_and_a_terminal_status_but_no_active_status(
    open_backend,
) -> None:
    async with open_backend() as backend:
        a = await backend.try_start("c", park)
        b = await backend.try_start("c", park, if_active="enqueue")
        with pytest.raises(ValueError, match="queued"):
            b.update("running")
        with pytest.raises(ValueError, match="queued"):
            b.push_frame("x", status="waiting_approval")
        assert b.push_frame("early") == 1
        b.push_frame("done", status="completed")
        record = await b.wait()
        assert (record.status, record.latest_seq) == (COMPLETED, 2)
        assert await backend.queued("c") == []
        assert (await backend.get("c")).run_id == a.run_id
        a.interrupt()
        await a.wait()


async def test_the_hook_is_called_once_per_run_in_end_order(open_backend) -> None:
    calls: list[tuple[str, ChatRunStatus, list[Any]]] = []

    async def hook(record, events) -> None:
        calls.append((record.run_id, record.status, [e.frame for e in events]))

    producer, started, release = gated()
    async with open_backend(on_run_end=hook) as backend:
        a = await backend.try_start("c", producer, "a")
        while not started:
            await trio.lowlevel.checkpoint()
        b = await backend.try_start("c", producer, "b", if_active="enqueue")
        c = await backend.try_start("c", producer, "c", if_active="enqueue")
        new = await backend.try_start("c", producer, "new", if_active="interrupt")
        await a.wait()
        release("new")
        await new.wait()
    assert calls == [
        (b.run_id, CANCELLED, [{"type": "interrupted"}]),
        (c.run_id, CANCELLED, [{"type": "interrupted"}]),
        (a.run_id, CANCELLED, ["a", {"type": "interrupted"}]),
        (new.run_id, COMPLETED, ["new"]),
    ]
