"""Trio's checkpoint rules in ``ChatRunSubscription.__anext__``: a cancel point
on every call, a schedule point at least every 64 items (API.md "Checkpoints")."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from trio_chatruns import RegistryConfig, open_chat_run_registry

from helpers import park

BACKLOG = 1000


@pytest.mark.parametrize("where", ["replay", "live queue"])
async def test_a_cancelled_reader_of_a_1000_event_backlog_stops_at_once(autojump_clock, where):
    config = RegistryConfig(max_events_per_run=BACKLOG, subscriber_buffer=BACKLOG)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        if where == "replay":
            for n in range(BACKLOG):
                run.push_frame(n)
        async with registry.subscribe("c") as subscription:
            if where == "live queue":
                for n in range(BACKLOG):
                    run.push_frame(n)
            seen = []
            with trio.CancelScope() as scope:
                async for event in subscription:
                    seen.append(event.seq)
                    if event.seq == 10:
                        scope.cancel()  # e.g. the client went away
            assert scope.cancelled_caught
            assert seen == list(range(1, 11))  # the very next __anext__ raised Cancelled
            assert subscription.last_seq == 10
        run.interrupt()


async def test_every_anext_is_a_cancel_point_even_with_an_item_ready(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.push_frame("ready")
        async with registry.subscribe("c") as subscription:
            with trio.CancelScope() as scope:
                scope.cancel()
                await subscription.__anext__()  # pragma: no cover - raises
            assert scope.cancelled_caught
            assert (await subscription.__anext__()).frame == "ready"  # nothing was lost
        run.interrupt()


@pytest.mark.parametrize("where", ["replay", "live queue"])
async def test_a_fast_reader_yields_to_other_tasks_at_least_every_64_items(autojump_clock, where):
    config = RegistryConfig(max_events_per_run=BACKLOG, subscriber_buffer=BACKLOG)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        if where == "replay":
            for n in range(BACKLOG):
                run.push_frame(n)
        turns_of_other_task = []

        async with registry.subscribe("c") as subscription:
            if where == "live queue":
                for n in range(BACKLOG):
                    run.push_frame(n)
            await trio.testing.wait_all_tasks_blocked()

            async def other() -> None:
                while True:
                    turns_of_other_task.append(subscription.last_seq)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                await trio.lowlevel.cancel_shielded_checkpoint()  # let it start
                count = 0
                async for _ in subscription:
                    count += 1
                    if count == BACKLOG:
                        break
                nursery.cancel_scope.cancel()
        # The reader yields every 64 items; Trio runs each ready task once per
        # scheduling batch, in either order, so the other task runs at least
        # once every 2 x 64 items of the drain.
        gaps = [b - a for a, b in itertools.pairwise(turns_of_other_task)]
        assert len(turns_of_other_task) >= BACKLOG // 128
        assert max(gaps) <= 128
        run.interrupt()


async def test_items_between_schedule_points_cost_no_scheduling_round(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        for n in range(200):
            run.push_frame(n)
        async with registry.subscribe("c") as subscription:
            task = trio.lowlevel.current_task()
            before = task._schedule_points  # the counter trio.testing.assert_checkpoints reads
            for _ in range(200):
                await subscription.__anext__()
            rounds = task._schedule_points - before
            assert 200 // 64 <= rounds <= 200 // 64 + 1
        run.interrupt()
