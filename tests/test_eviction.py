"""Retention and eviction: the scenarios of the original pull request, and the
rules around them. Time is Trio's MockClock (``autojump_clock``): nothing sleeps."""

from __future__ import annotations

import math

import pytest
import trio
import trio.lowlevel

from trio_chatruns import (
    MAX_RETAINED_TERMINAL,
    TERMINAL_RETENTION,
    ChatRunStatus,
    RegistryConfig,
    RunNotFound,
    open_chat_run_registry,
)

from helpers import finished_run, park


async def test_terminal_run_is_kept_within_ttl_and_evicted_past_it(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = finished_run(registry, "c", frames=3)
        ended = run.record.terminated_at
        assert ended is not None

        await trio.sleep(TERMINAL_RETENTION - 0.001)
        record = registry.get("c")
        assert record is not None and record.status is ChatRunStatus.COMPLETED
        assert [e.seq for e in registry.events("c")] == [1, 2, 3]

        await trio.sleep(0.001)
        assert trio.current_time() == ended + TERMINAL_RETENTION
        assert registry.get("c") is None
        assert registry.events("c") == []
        assert registry.list() == []
        stats = registry.stats()
        assert (stats.evicted_ttl, stats.retained_terminal) == (1, 0)


async def test_active_run_is_never_evicted_even_with_an_absurd_clock(autojump_clock):
    config = RegistryConfig(terminal_retention=0, max_retained_terminal=0)
    async with open_chat_run_registry(config) as registry:
        registry.try_start("active", park)
        autojump_clock.jump(1e12)
        assert registry.prune() == 0
        record = registry.get("active")
        assert record is not None and record.status is ChatRunStatus.RUNNING
        assert registry.stats().active == 1
        assert registry.interrupt("active")


async def test_cancelled_run_is_evicted_after_ttl(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        await trio.sleep(1)
        assert registry.interrupt("c")
        record = await run.wait()
        assert record.status is ChatRunStatus.CANCELLED
        await trio.sleep(TERMINAL_RETENTION / 2)
        assert registry.get("c") is not None
        await trio.sleep(TERMINAL_RETENTION / 2)
        assert registry.get("c") is None
        assert registry.stats().evicted_ttl == 1


async def test_terminal_runs_are_capped_by_the_lru_backstop(autojump_clock):
    async with open_chat_run_registry() as registry:
        registry.try_start("still-active", park)
        for n in range(MAX_RETAINED_TERMINAL + 10):
            finished_run(registry, f"c{n}")
            await trio.sleep(0.01)  # distinct terminated_at values
        stats = registry.stats()
        assert stats.retained_terminal == MAX_RETAINED_TERMINAL
        assert stats.evicted_lru == 10
        assert stats.active == 1
        # The oldest-ended went first; the newest and the active run stay.
        assert all(registry.get(f"c{n}") is None for n in range(10))
        assert registry.get("c10") is not None
        assert registry.get(f"c{MAX_RETAINED_TERMINAL + 9}") is not None
        assert registry.get("still-active") is not None
        registry.interrupt("still-active")


async def test_lru_order_is_by_terminated_at_not_by_start(autojump_clock):
    config = RegistryConfig(max_retained_terminal=2)
    async with open_chat_run_registry(config) as registry:
        first = registry.try_start("first", park)
        second = registry.try_start("second", park)
        third = registry.try_start("third", park)
        await trio.sleep(1)
        second.update(ChatRunStatus.COMPLETED)
        await trio.sleep(1)
        first.update(ChatRunStatus.COMPLETED)
        await trio.sleep(1)
        third.update(ChatRunStatus.COMPLETED)
        assert registry.get("second") is None
        assert registry.get("first") is not None
        assert registry.get("third") is not None


async def test_restarting_an_evicted_conversation_succeeds(autojump_clock):
    async with open_chat_run_registry() as registry:
        old = finished_run(registry, "c", frames=2)
        await trio.sleep(TERMINAL_RETENTION + 1)
        assert registry.get("c") is None
        new = registry.try_start("c", park)
        assert new.run_id != old.run_id
        record = registry.get("c")
        assert record is not None
        assert (record.run_id, record.status, record.latest_seq) == (
            new.run_id,
            ChatRunStatus.RUNNING,
            0,
        )
        new.interrupt()


async def test_replacing_a_retained_terminal_run_is_not_an_eviction(autojump_clock):
    async with open_chat_run_registry() as registry:
        old = finished_run(registry, "c")
        new = registry.try_start("c", park)
        stats = registry.stats()
        assert (stats.evicted_ttl, stats.evicted_lru, stats.retained_terminal) == (0, 0, 0)
        assert stats.active == 1
        # The replaced run's handle is still readable, and can no longer push.
        assert old.record.status is ChatRunStatus.COMPLETED
        new.interrupt()


async def test_zero_retention_evicts_as_soon_as_a_run_ends(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(terminal_retention=0)) as registry:
        run = finished_run(registry, "c")
        assert registry.get("c") is None
        assert registry.stats().evicted_ttl == 1
        # The handle still answers for its own run.
        assert run.record.status is ChatRunStatus.COMPLETED
        assert (await run.wait()).terminated_at == run.record.terminated_at
        with pytest.raises(RunNotFound):
            registry.push_frame("c", {})


async def test_infinite_retention_keeps_runs_until_the_cap(autojump_clock):
    config = RegistryConfig(terminal_retention=math.inf, max_retained_terminal=3)
    async with open_chat_run_registry(config) as registry:
        for n in range(5):
            finished_run(registry, f"c{n}")
            autojump_clock.jump(1e9)
        stats = registry.stats()
        assert (stats.retained_terminal, stats.evicted_lru, stats.evicted_ttl) == (3, 2, 0)


async def test_reads_never_show_a_run_past_retention_even_without_a_sweep_between(
    autojump_clock,
):
    async with open_chat_run_registry(RegistryConfig(terminal_retention=10)) as registry:
        finished_run(registry, "c", frames=4)
        autojump_clock.jump(10)
        # Each read must sweep (or check) first: the first read below evicts.
        assert registry.events("c", after=0) == []
        assert registry.get("c") is None
        assert registry.interrupt("c") is False
        with pytest.raises(RunNotFound):
            async with registry.subscribe("c"):
                pass  # pragma: no cover


async def test_prune_reports_how_many_were_evicted(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(terminal_retention=5)) as registry:
        for n in range(4):
            finished_run(registry, f"c{n}")
        assert registry.prune() == 0
        autojump_clock.jump(5)
        assert registry.prune() == 4
        assert registry.prune() == 0


async def test_terminated_at_is_stamped_once_on_the_trio_clock(autojump_clock):
    async with open_chat_run_registry() as registry:
        await trio.sleep(42)
        run = registry.try_start("c", park)
        assert run.record.started_at == 42
        await trio.sleep(3)
        run.push_frame({"last": True}, status=ChatRunStatus.FAILED, error="boom")
        record = run.record
        assert record.terminated_at == 45 == record.updated_at
        await trio.sleep(5)
        assert registry.interrupt("c") is False
        await trio.lowlevel.checkpoint()  # the producer task starts and finds the run over
        assert run.record.terminated_at == 45
        assert run.record.status is ChatRunStatus.FAILED
