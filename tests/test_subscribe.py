"""Subscribers: replay then live, cursors, gaps, lag and resume."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_chatruns import (
    ChatRunStatus,
    RegistryConfig,
    ReplayGap,
    RunNotFound,
    SubscriberLagged,
    open_chat_run_registry,
)

from helpers import finished_run, make_ticker, park


async def collect(registry, conversation_id, *, after=0, run_id=None):
    async with registry.subscribe(conversation_id, after=after, run_id=run_id) as subscription:
        return [event async for event in subscription]


async def test_events_are_ordered_and_filtered_by_seq(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        seqs = [run.push_frame({"n": n}) for n in range(1, 6)]
        assert seqs == [1, 2, 3, 4, 5]
        assert [e.seq for e in registry.events("c")] == [1, 2, 3, 4, 5]
        assert [e.frame for e in registry.events("c", after=3)] == [{"n": 4}, {"n": 5}]
        assert registry.events("c", after=5) == []
        assert registry.events("c", after=99) == []
        assert registry.events("unknown") == []
        event = registry.events("c")[0]
        assert (event.conversation_id, event.run_id) == ("c", run.run_id)
        run.interrupt()


async def test_terminal_status_updates_status_latest_seq_and_last_error(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.push_frame({"t": "a"}, current_tool="search")
        registry.push_frame("c", {"t": "b"}, status="failed", error="model overloaded")
        record = registry.get("c")
        assert record is not None
        assert record.status is ChatRunStatus.FAILED
        assert record.latest_seq == 2
        assert record.last_error == "model overloaded"
        assert record.current_tool == "search"
        assert record.terminated_at is not None


async def test_subscriber_joining_mid_stream_gets_replay_then_live(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", make_ticker(10))
        await trio.sleep(4.5)  # frames 1..5 pushed
        events = await collect(registry, "c")
        assert [e.seq for e in events] == list(range(1, 11))
        assert [e.frame["n"] for e in events] == list(range(1, 11))
        assert (await run.wait()).status is ChatRunStatus.COMPLETED


async def test_subscriber_resuming_from_a_cursor_gets_exactly_the_rest(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", make_ticker(10))
        await trio.sleep(6.5)
        events = await collect(registry, "c", after=4, run_id=run.run_id)
        assert [e.seq for e in events] == list(range(5, 11))


async def test_fifty_subscribers_all_receive_everything(autojump_clock):
    async with open_chat_run_registry() as registry:
        results = {}
        run = registry.try_start("c", park)

        async def subscriber(name):
            results[name] = await collect(registry, "c")

        async with trio.open_nursery() as nursery:
            for name in range(50):
                nursery.start_soon(subscriber, name)
            await trio.testing.wait_all_tasks_blocked()
            assert registry.stats().subscribers == 50
            for n in range(1, 201):
                run.push_frame({"n": n}, status="completed" if n == 200 else None)
                if n % 7 == 0:
                    await trio.lowlevel.checkpoint()
        assert len(results) == 50
        for events in results.values():
            assert [e.seq for e in events] == list(range(1, 201))
        assert registry.stats().subscribers == 0


async def test_replay_of_a_full_buffer_is_not_lag(autojump_clock):
    config = RegistryConfig(max_events_per_run=1000, subscriber_buffer=1)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        for n in range(1000):
            run.push_frame(n)
        async with registry.subscribe("c") as subscription:
            replayed = [await subscription.__anext__() for _ in range(1000)]
            assert [e.seq for e in replayed] == list(range(1, 1001))
            run.push_frame("live", status="completed")
            rest = [e async for e in subscription]
        assert [e.frame for e in rest] == ["live"]
        assert registry.stats().lagged_subscribers == 0


async def test_trimmed_cursor_raises_replay_gap_with_the_oldest_buffered_seq(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(max_events_per_run=5)) as registry:
        run = registry.try_start("c", park)
        for n in range(12):
            run.push_frame(n)
        assert [e.seq for e in registry.events("c")] == [8, 9, 10, 11, 12]
        with pytest.raises(ReplayGap) as info:
            await collect(registry, "c", after=3)
        assert info.value.available_from == 8
        assert info.value.after == 3
        assert "4..7" in str(info.value)
        assert registry.stats().subscribers == 0
        # The cursor just before the oldest buffered frame is still gap-free.
        run.update("completed")
        assert [e.seq for e in await collect(registry, "c", after=7)] == [8, 9, 10, 11, 12]


async def test_cursor_past_latest_seq_is_a_value_error(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.push_frame("x")
        with pytest.raises(ValueError, match="after=2 is past latest_seq=1"):
            await collect(registry, "c", after=2)
        with pytest.raises(ValueError, match="-1"):
            await collect(registry, "c", after=-1)
        with pytest.raises(TypeError, match="'1'"):
            await collect(registry, "c", after="1")
        run.interrupt()


async def test_unknown_conversation_or_stale_run_id_is_run_not_found(autojump_clock):
    async with open_chat_run_registry() as registry:
        with pytest.raises(RunNotFound) as info:
            await collect(registry, "nobody")
        assert isinstance(info.value, LookupError)
        old = finished_run(registry, "c")
        new = registry.try_start("c", park)
        with pytest.raises(RunNotFound, match=old.run_id):
            await collect(registry, "c", run_id=old.run_id)
        new.interrupt()


async def test_a_retained_terminal_run_replays_and_ends(autojump_clock):
    async with open_chat_run_registry() as registry:
        finished_run(registry, "c", frames=4)
        await trio.sleep(100)
        assert [e.seq for e in await collect(registry, "c")] == [1, 2, 3, 4]
        assert await collect(registry, "c", after=4) == []
        assert registry.stats().subscribers == 0


async def test_a_silent_subscriber_lags_while_the_producer_and_others_go_on(autojump_clock):
    config = RegistryConfig(subscriber_buffer=4)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        keeper_seqs = []

        async def keeper():
            async with registry.subscribe("c") as subscription:
                keeper_seqs.extend([e.seq async for e in subscription])

        async with trio.open_nursery() as nursery, registry.subscribe("c") as silent:
            nursery.start_soon(keeper)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(1, 21):
                # Never blocks, whatever the silent subscriber does.
                assert run.push_frame(n) == n
                await trio.testing.wait_all_tasks_blocked()
            stats = registry.stats()
            assert (stats.lagged_subscribers, stats.subscribers) == (1, 1)
            # The silent one gets what was queued (the 4 slots), then the error.
            got = []
            with pytest.raises(SubscriberLagged) as info:
                async for event in silent:
                    got.append(event.seq)
            assert got == [1, 2, 3, 4]
            assert info.value.resume_after == 4
            run.update("completed")
        assert keeper_seqs == list(range(1, 21))

        # Resuming from resume_after yields the rest with no gap.
        rest = await collect(registry, "c", after=info.value.resume_after)
        assert [e.seq for e in rest] == list(range(5, 21))


async def test_lag_before_reading_anything_resumes_from_after(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(subscriber_buffer=1)) as registry:
        run = registry.try_start("c", park)
        run.push_frame("a")
        run.push_frame("b")
        async with registry.subscribe("c", after=2) as subscription:
            run.push_frame("c")
            run.push_frame("d")  # overflows: dropped
            events = []
            with pytest.raises(SubscriberLagged) as info:
                async for event in subscription:
                    events.append(event.seq)
            assert events == [3]
            assert info.value.resume_after == 3
        async with registry.subscribe("c", after=3) as subscription:
            assert subscription.last_seq == 3
            run.update("completed")
            assert [e.seq async for e in subscription] == [4]
        run.interrupt()


async def test_leaving_early_removes_only_that_subscriber(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        async with registry.subscribe("c") as staying:
            async with registry.subscribe("c") as leaving:
                run.push_frame(1)
                assert (await leaving.__anext__()).seq == 1
                assert registry.stats().subscribers == 2
            assert registry.stats().subscribers == 1
            run.push_frame(2, status="completed")
            assert [e.seq async for e in staying] == [1, 2]
            with pytest.raises(trio.ClosedResourceError):
                await leaving.__anext__()


async def test_a_subscription_never_follows_into_a_restarted_run(autojump_clock):
    async with open_chat_run_registry() as registry:
        first = registry.try_start("c", park)
        first.push_frame("old")
        async with registry.subscribe("c") as subscription:
            assert (await subscription.__anext__()).frame == "old"
            first.update("completed")
            second = registry.try_start("c", park)
            second.push_frame("new")
            assert [e.frame async for e in subscription] == []
            assert subscription.run_id == first.run_id
            assert subscription.record.status is ChatRunStatus.COMPLETED
        second.interrupt()


async def test_iterating_queued_events_is_a_cancel_point_but_not_a_schedule_point(
    autojump_clock,
):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        for n in range(3):
            run.push_frame(n)
        async with registry.subscribe("c") as subscription:
            run.push_frame(3)
            task = trio.lowlevel.current_task()
            before = task._schedule_points  # the counter Trio's own assert_checkpoints reads
            cancel_points = task._cancel_points
            assert [(await subscription.__anext__()).seq for _ in range(4)] == [1, 2, 3, 4]
            assert task._schedule_points == before  # no scheduling round per event
            assert task._cancel_points >= cancel_points + 4  # but each call is a cancel point
            with trio.testing.assert_checkpoints():
                with trio.move_on_after(1):
                    await subscription.__anext__()
        run.interrupt()


async def test_cancelled_waiting_subscriber_leaves_cleanly(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        with trio.move_on_after(5) as scope:
            await collect(registry, "c")
        assert scope.cancelled_caught
        assert registry.stats().subscribers == 0
        run.interrupt()


async def test_a_cancelled_drain_stops_at_once(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        async with registry.subscribe("c") as subscription:
            for n in range(3):
                run.push_frame(n)
            seen = []
            with trio.CancelScope() as scope:
                scope.cancel()
                async for event in subscription:  # pragma: no cover - cancelled first
                    seen.append(event.seq)
            assert scope.cancelled_caught
            assert seen == []  # every __anext__ is a cancel point
            assert subscription.last_seq == 0
            # Nothing was consumed: the same subscription goes on from seq 1.
            assert (await subscription.__anext__()).seq == 1
        run.interrupt()


async def test_lagging_on_the_terminal_frame_then_resuming_from_the_retained_run(
    autojump_clock,
):
    async with open_chat_run_registry(RegistryConfig(subscriber_buffer=2)) as registry:
        run = registry.try_start("c", park)
        async with registry.subscribe("c") as subscription:
            run.push_frame(1)
            run.push_frame(2)
            run.push_frame(3, status="completed")  # overflows on the last frame
            got = []
            with pytest.raises(SubscriberLagged) as info:
                async for event in subscription:
                    got.append(event.seq)
        assert got == [1, 2]
        assert info.value.resume_after == 2
        assert [e.seq for e in await collect(registry, "c", after=2)] == [3]
