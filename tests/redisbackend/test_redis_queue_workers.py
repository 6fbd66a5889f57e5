"""Start policies across workers: two backends (workers A and B) on one
real redis-server, each with its own coredis client, and "ghost" workers
that start or queue a run straight through the scripts and then never renew
its lease (a worker that died). Nothing is mocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio
import trio.testing

from trio_chatruns import ChatRunStatus, RegistryConfig, RunAlreadyActive, RunQueueFull
from trio_chatruns.redis import RedisChatRuns, open_redis_chat_runs
from trio_chatruns.redis._keys import KeyLayout
from trio_chatruns.redis._store import RedisStore

RUNNING, QUEUED = ChatRunStatus.RUNNING, ChatRunStatus.QUEUED
CANCELLED, COMPLETED, FAILED = (
    ChatRunStatus.CANCELLED,
    ChatRunStatus.COMPLETED,
    ChatRunStatus.FAILED,
)


@asynccontextmanager
async def two_workers(
    url: str, prefix: str, config: RegistryConfig | None = None, **options: Any
) -> AsyncIterator[tuple[RedisChatRuns, RedisChatRuns]]:
    async with (
        coredis.Redis.from_url(url) as client_a,
        coredis.Redis.from_url(url) as client_b,
        open_redis_chat_runs(client_a, config, key_prefix=prefix, worker_id="A", **options) as a,
        open_redis_chat_runs(client_b, config, key_prefix=prefix, worker_id="B", **options) as b,
    ):
        yield a, b


class Cluster:
    """Producers that record where and in which order they ran, and check
    that no two of them run at once in one conversation."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.running: dict[str, str] = {}
        self.overlaps: list[tuple[str, str]] = []
        self.gates: dict[str, trio.Event] = {}
        self.all_open = False

    def gate(self, name: str) -> trio.Event:
        gate = self.gates.setdefault(name, trio.Event())
        if self.all_open:
            gate.set()
        return gate

    def open_all(self) -> None:
        self.all_open = True
        for gate in self.gates.values():
            gate.set()

    async def producer(self, run: Any, worker: str, name: str) -> None:
        cid = run.conversation_id
        if cid in self.running:
            self.overlaps.append((self.running[cid], name))
        self.running[cid] = name
        self.started.append((worker, name))
        try:
            run.push_frame(name)
            await self.gate(name).wait()
        finally:
            del self.running[cid]


async def wait_until(predicate: Any) -> None:
    """Poll ``predicate`` (an async callable) until it is true: waiting for an
    event of the cluster (a reap, a promotion), not for a time."""
    while True:
        if await predicate():
            return
        await trio.sleep(0.02)


async def test_a_run_queued_on_b_starts_on_b_when_the_run_on_a_ends(
    redis_server, key_prefix
) -> None:
    cluster = Cluster()
    async with two_workers(redis_server.url, key_prefix) as (a, b):
        first = await a.try_start("c", cluster.producer, "A", "first")
        second = await b.try_start("c", cluster.producer, "B", "second", if_active="enqueue")
        third = await a.try_start("c", cluster.producer, "A", "third", if_active="enqueue")
        assert [r.run_id for r in await a.queued("c")] == [second.run_id, third.run_id]
        assert [r.run_id for r in await b.queued("c")] == [second.run_id, third.run_id]
        assert ((await a.stats()).queued, (await b.stats()).queued) == (1, 1)
        async with a.subscribe("c", run_id=second.run_id) as of_second:
            cluster.gate("first").set()
            assert (await first.wait()).status is COMPLETED
            # Followed from A, produced on B once A's run ended.
            assert [(e.seq, e.frame) for e in [await of_second.__anext__()]] == [(1, "second")]
            assert (await a.get("c")).run_id == second.run_id
            cluster.gate("second").set()
            assert [e async for e in of_second] == []
        assert (await second.wait()).status is COMPLETED
        cluster.gate("third").set()
        assert (await third.wait()).status is COMPLETED
        assert cluster.started == [("A", "first"), ("B", "second"), ("A", "third")]
        assert (await b.get("c")).run_id == third.run_id


async def test_interrupt_policy_on_b_stops_the_run_on_a_and_cancels_a_queue(
    redis_server, key_prefix
) -> None:
    cluster = Cluster()
    async with two_workers(redis_server.url, key_prefix) as (a, b):
        running = await a.try_start("c", cluster.producer, "A", "running")
        waiting_a = await a.try_start("c", cluster.producer, "A", "waiting", if_active="enqueue")
        waiting_b = await b.try_start("c", cluster.producer, "B", "waiting2", if_active="enqueue")
        with trio.fail_after(5):
            while cluster.started != [("A", "running")]:
                await trio.lowlevel.checkpoint()
        new = await b.try_start("c", cluster.producer, "B", "new", if_active="interrupt")
        assert new.record.status is QUEUED
        with trio.fail_after(5):  # the interrupt reaches A's producer at once
            record = await running.wait()
        assert record.status is CANCELLED
        assert (await waiting_a.wait()).status is CANCELLED
        assert (await waiting_b.wait()).status is CANCELLED
        cluster.gate("new").set()
        assert (await new.wait()).status is COMPLETED
        assert cluster.started == [("A", "running"), ("B", "new")]
        frames = [e.frame for e in await a.events("c")]
        assert frames == ["new"]


@pytest.mark.parametrize(
    "policies",
    [
        ("reject", "reject"),
        ("enqueue", "enqueue"),
        ("interrupt", "interrupt"),
        ("reject", "enqueue"),
        ("enqueue", "interrupt"),
        ("interrupt", "reject"),
    ],
)
async def test_concurrent_starts_on_two_workers_each_get_one_outcome(
    redis_server, key_prefix, policies
) -> None:
    cluster = Cluster()
    async with two_workers(
        redis_server.url, key_prefix, RegistryConfig(max_queued_per_conversation=1)
    ) as (a, b):
        for round_ in range(10):
            cid = f"c{round_}"
            if round_ % 2:  # a busy conversation half of the time
                await a.try_start(cid, cluster.producer, "A", f"{cid}-busy")
            outcomes: dict[str, Any] = {}

            async def start(
                worker: RedisChatRuns, name: str, policy: str, cid: str, outcomes: dict[str, Any]
            ) -> None:
                try:
                    run = await worker.try_start(
                        cid, cluster.producer, name, f"{cid}-{name}", if_active=policy
                    )
                except (RunAlreadyActive, RunQueueFull) as exc:
                    outcomes[name] = type(exc).__name__
                else:
                    outcomes[name] = run.record.status

            async with trio.open_nursery() as nursery:
                nursery.start_soon(start, a, "A", policies[0], cid, outcomes)
                nursery.start_soon(start, b, "B", policies[1], cid, outcomes)
            assert set(outcomes) == {"A", "B"}
            statuses = [o for o in outcomes.values() if isinstance(o, ChatRunStatus)]
            # At most one started at once; the others queued or were refused.
            assert sum(1 for s in statuses if s is RUNNING) <= 1
            if not round_ % 2:
                assert RUNNING in statuses
            queued = await a.queued(cid)
            assert len(queued) <= 2
            current = await b.get(cid)
            assert current is not None and current.status.is_active
        # Let every run end, queued ones included, one after the other.
        cluster.open_all()
        for cid in [f"c{i}" for i in range(10)]:
            with trio.fail_after(10):
                await wait_until(lambda cid=cid: _quiet(a, cid))
    # No two producers of one conversation ever ran at once, on any worker.
    assert cluster.overlaps == []


async def test_a_queued_run_of_a_dead_worker_ends_failed_and_the_next_one_starts(
    redis_server, key_prefix
) -> None:
    calls: list[tuple[str, ChatRunStatus, str | None]] = []

    async def hook(record, events) -> None:
        calls.append((record.run_id, record.status, record.last_error))

    cluster = Cluster()
    async with (
        two_workers(redis_server.url, key_prefix, on_run_end=hook) as (a, b),
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        first = await a.try_start("c", cluster.producer, "A", "first")
        # A worker that queues a run, then dies: it never renews the lease.
        ghost = RedisStore(client, KeyLayout(key_prefix), RegistryConfig(), lease=0.05)
        dead_id = "d" * 32
        assert (await ghost.start("c", dead_id, "ghost", "enqueue", 8)).outcome == "queued"
        after = await b.try_start("c", cluster.producer, "B", "after", if_active="enqueue")
        assert [r.run_id for r in await a.queued("c")][-1] == after.run_id
        # The dead worker's run ends failed once its lease lapsed (here, when
        # a read reaps it), never staying queued; the run behind it goes on.
        await wait_until(lambda: _queued_ids(a, "c", [after.run_id]))
        cluster.gate("first").set()
        await first.wait()
        cluster.gate("after").set()
        assert (await after.wait()).status is COMPLETED
        assert cluster.started == [("A", "first"), ("B", "after")]
    dead = [call for call in calls if call[0] == dead_id]
    assert len(dead) == 1
    assert dead[0][1] is FAILED
    assert "owner worker ghost stopped renewing its lease" in dead[0][2]
    assert "queued" in dead[0][2]
    assert sorted(call[0] for call in calls) == sorted([first.run_id, dead_id, after.run_id])


async def _quiet(worker: RedisChatRuns, cid: str) -> bool:
    record = await worker.get(cid)
    return record is not None and record.status.is_terminal and not await worker.queued(cid)


async def _queued_ids(worker: RedisChatRuns, cid: str, expected: list[str]) -> bool:
    return [r.run_id for r in await worker.queued(cid)] == expected


async def test_a_dead_owners_run_is_reaped_and_the_queued_run_starts_on_its_worker(
    redis_server, key_prefix
) -> None:
    cluster = Cluster()
    async with (
        two_workers(redis_server.url, key_prefix) as (a, b),
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        ghost = RedisStore(client, KeyLayout(key_prefix), RegistryConfig(), lease=0.2)
        dead_id = "e" * 32
        assert (await ghost.start("c", dead_id, "ghost", "reject", 8)).outcome == "started"
        queued = await b.try_start("c", cluster.producer, "B", "next", if_active="enqueue")
        assert queued.record.status is QUEUED
        # A follower on A (idle: no frames come) reaps the lapsed run; the
        # queued run then starts on B, told over pub/sub.
        async with a.subscribe("c") as of_dead:
            assert [e async for e in of_dead] == []
        record = await wait_for_record(a, "c", queued.run_id)
        assert record.status is RUNNING
        with trio.fail_after(5):
            while cluster.started != [("B", "next")]:
                await trio.lowlevel.checkpoint()
        cluster.gate("next").set()
        assert (await queued.wait()).status is COMPLETED


async def wait_for_record(worker: RedisChatRuns, cid: str, run_id: str) -> Any:
    while True:
        record = await worker.get(cid)
        if record is not None and record.run_id == run_id:
            return record
        await trio.sleep(0.02)


async def test_the_hook_is_called_once_per_run_across_workers(redis_server, key_prefix) -> None:
    calls: list[tuple[str, str, ChatRunStatus]] = []

    def hook_of(worker: str) -> Any:
        async def hook(record, events) -> None:
            calls.append((worker, record.run_id, record.status))

        return hook

    cluster = Cluster()
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(
            client_a, key_prefix=key_prefix, worker_id="A", on_run_end=hook_of("A")
        ) as a,
        open_redis_chat_runs(
            client_b, key_prefix=key_prefix, worker_id="B", on_run_end=hook_of("B")
        ) as b,
    ):
        one = await a.try_start("c", cluster.producer, "A", "one")
        two = await b.try_start("c", cluster.producer, "B", "two", if_active="enqueue")
        three = await a.try_start("c", cluster.producer, "A", "three", if_active="enqueue")
        four = await b.try_start("c", cluster.producer, "B", "four", if_active="interrupt")
        for run in (one, two, three):
            assert (await run.wait()).status is CANCELLED
        cluster.gate("four").set()
        assert (await four.wait()).status is COMPLETED
    by_run = {run_id: (worker, status) for worker, run_id, status in calls}
    assert len(calls) == len(by_run) == 4
    # The end's duties fall to the worker that wrote the end: B's START ended
    # the queued runs, A's producer ended its own run, B's the last.
    assert by_run == {
        two.run_id: ("B", CANCELLED),
        three.run_id: ("B", CANCELLED),
        one.run_id: ("A", CANCELLED),
        four.run_id: ("B", COMPLETED),
    }


async def test_hooks_of_one_conversation_run_in_end_order_across_workers(
    redis_server, key_prefix
) -> None:
    """Run 1 ends on A, whose hook is slow; run 2 (queued on B) then ends on
    B at once: B's hook call waits until A's call is over."""
    order: list[tuple[str, str]] = []
    slow = trio.Event()

    async def hook_a(record, events) -> None:
        order.append(("A starts", record.run_id))
        await slow.wait()
        order.append(("A ends", record.run_id))

    async def hook_b(record, events) -> None:
        order.append(("B starts", record.run_id))
        order.append(("B ends", record.run_id))

    async def quick(run) -> None:
        run.push_frame("done")

    cluster = Cluster()
    async with (
        coredis.Redis.from_url(redis_server.url) as client_a,
        coredis.Redis.from_url(redis_server.url) as client_b,
        open_redis_chat_runs(
            client_a, key_prefix=key_prefix, worker_id="A", on_run_end=hook_a
        ) as a,
        open_redis_chat_runs(
            client_b, key_prefix=key_prefix, worker_id="B", on_run_end=hook_b
        ) as b,
    ):
        first = await a.try_start("c", cluster.producer, "A", "first")
        second = await b.try_start("c", quick, if_active="enqueue")
        cluster.gate("first").set()
        await first.wait()
        await second.wait()  # ended on B, its hook scheduled there
        while not order:
            await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert order == [("A starts", first.run_id)]  # B waits for its turn
        slow.set()
    assert order == [
        ("A starts", first.run_id),
        ("A ends", first.run_id),
        ("B starts", second.run_id),
        ("B ends", second.run_id),
    ]
