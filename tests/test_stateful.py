"""Stateful property test of the registry against a plain Python model.

A ``hypothesis.stateful.RuleBasedStateMachine`` drives random steps (start
with a start policy, push, status change, complete, fail, interrupt,
subscribe, read, park a reader, disconnect, advance the clock) and checks,
after every step, that the registry agrees with a model that knows exactly
which runs are held and queued, which frames each run buffers (by count and
by bytes), what each subscriber will read next, which run-end hook calls were
made (and which failed or timed out), and every counter of ``stats()``.

How Trio is driven from a synchronous state machine: each example owns one
Trio run, hosted in a background thread with a ``MockClock`` (rate 0, no
autojump: time moves only when a rule jumps it). The thread opens the
registry, then parks; every rule is an async function sent to it with
``trio.from_thread.run``, which acts, then lets the scheduler settle
(``wait_all_tasks_blocked``) so producers run deterministically. Producers
are driven by the test: each one executes commands from its own memory
channel (push, update, return, raise). ``teardown`` closes the registry,
checks what closing promises, closes every subscription, and joins the
thread: every example gets a fresh registry.

The model is applied in the Trio thread too (the calling thread just waits),
so model and registry never race. Invariants are checked in the same round
trip as the step (``ChatRunMachine.step``), not with ``@invariant``.

Why runs end the way they do: keyed status changes, bursts of pushes and the
conversation a keyed call targets are weighted (``statuses``, ``bursts``,
``targets``) so runs live long enough for trimming (``ReplayGap``) and lag to
happen; ``--hypothesis-show-statistics`` lists what the examples exercised.

No rule has a precondition: a rule with nothing to act on falls back to
another action (a start, a keyed call that must raise ``RunNotFound``), so
Hypothesis discards (almost) no generated example; with preconditions it
threw away a fifth of them.
Hypothesis' own ``hypothesis-trio`` integration is not used (it is broken
with current Hypothesis).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
)

from trio_chatruns import (
    UNSET,
    ChatRun,
    ChatRunEvent,
    ChatRunRecord,
    ChatRunRegistry,
    ChatRunStatus,
    RegistryConfig,
    RegistryStats,
    ReplayGap,
    RunAlreadyActive,
    RunNotFound,
    RunQueueFull,
    RunTerminated,
    SubscriberLagged,
    open_chat_run_registry,
)

CIDS = ("c0", "c1", "c2", "c3")
INTERRUPTED = {"type": "interrupted"}
UNWIND = {"type": "unwind"}
ACTIVE = (ChatRunStatus.RUNNING, ChatRunStatus.WAITING_APPROVAL, ChatRunStatus.WAITING_HITL)
QUEUED = ChatRunStatus.QUEUED
TERMINAL = (ChatRunStatus.COMPLETED, ChatRunStatus.FAILED, ChatRunStatus.CANCELLED)

cids = st.sampled_from(CIDS)
# Which conversation a keyed call or a subscription targets: mostly one with an
# active run, or any held run (retained terminal ones too), else any id at all
# (unknown or evicted). Uniform picks among four ids would mostly miss.
targets = st.tuples(st.sampled_from(["active", "active", "held", "any"]), st.integers(0, 15), cids)
# Mostly no status change; some active ones (also in str form); the terminal
# ones end the run.
statuses = st.sampled_from([None] * 12 + [*ACTIVE, ChatRunStatus.WAITING_HITL.value, *TERMINAL])
# Frames pushed in one step: bursts are what trim the buffer and make
# subscribers lag.
bursts = st.integers(1, 6)
update_statuses = st.sampled_from([*ACTIVE, *ACTIVE, *TERMINAL])
optional_strs = st.sampled_from([UNSET, None, "search"])
indexes = st.integers(0, 15)


# -- the model -------------------------------------------------------------------


class MRun:
    """What one run must look like, plus what its producer actually did."""

    def __init__(self, cid: str, now: float, unwind: bool, status: ChatRunStatus) -> None:
        self.cid = cid
        self.handle: ChatRun | None = None
        self.run_id = ""
        self.status = status
        self.started_at = now
        self.updated_at = now
        self.terminated_at: float | None = None
        self.frames: list[Any] = []
        # Size of every frame (compact JSON bytes); the oldest buffered seq and
        # the bytes buffered, after trimming by count and by bytes.
        self.sizes: list[int] = []
        self.first_kept = 1
        self.bytes = 0
        self.current_tool: str | None = None
        self.last_error: str | None = None
        # The producer pushes UNWIND while unwinding from an interrupt.
        self.unwind = unwind
        self.cmd_send, self.cmd_receive = trio.open_memory_channel[tuple[Any, ...]](math.inf)
        # Model expectations about the producer task.
        self.producer_started = False
        self.producer_alive = False
        # The run ended while its producer was still running: the producer may
        # go on until the run is evicted or its retention runs out.
        self.finishing = False
        self.expected_results: list[Any] = []
        # What the producer task actually did.
        self.ran = False
        self.exited = False
        self.got_own_handle: bool | None = None
        self.results: list[Any] = []
        # Subscribers with an open live channel on this run (the fan-out).
        self.live_subs: list[MSub] = []
        # Whether the run was active when the registry was closed.
        self.active_at_close = False
        self.queued_at_close = False

    @property
    def latest_seq(self) -> int:
        return len(self.frames)

    @property
    def is_active(self) -> bool:
        return self.terminated_at is None

    def record(self) -> ChatRunRecord:
        return ChatRunRecord(
            conversation_id=self.cid,
            run_id=self.run_id,
            status=self.status,
            started_at=self.started_at,
            updated_at=self.updated_at,
            terminated_at=self.terminated_at,
            latest_seq=self.latest_seq,
            current_tool=self.current_tool,
            last_error=self.last_error,
        )

    def buffered_from(self) -> int:
        """The oldest buffered seq (``latest_seq + 1`` when nothing is buffered)."""
        return self.first_kept if self.frames else 1

    def buffered_frames(self) -> list[Any]:
        return self.frames[self.first_kept - 1 :]


class MSub:
    """One open subscription: the real one and what it must yield next."""

    def __init__(self, run: MRun, cm: Any, sub: Any, after: int, live: bool) -> None:
        self.run = run
        self.cm = cm
        self.sub = sub
        self.after = after
        self.last = after
        self.received: list[int] = []
        self.replay = deque(range(after + 1, run.latest_seq + 1))
        self.live = live
        self.queue: deque[int] = deque()
        self.channel_closed = not live
        self.lagged = False
        # A parked reader task blocked in __anext__.
        self.waiting = False
        self.waiter_scope: trio.CancelScope | None = None
        self.waiter_outcome: tuple[Any, ...] | None = None
        self.waiter_expected: tuple[Any, ...] | None = None
        self.ended: str | None = None

    def next_outcome(self) -> tuple[Any, ...]:
        if self.replay:
            return ("event", self.replay[0])
        if not self.live:
            return ("stop",)
        if self.queue:
            return ("event", self.queue[0])
        if self.channel_closed:
            return ("lagged", self.last) if self.lagged else ("stop",)
        return ("block",)

    def consume(self) -> None:
        if self.replay:
            self.replay.popleft()
        else:
            self.queue.popleft()


class Model:
    def __init__(self, config: RegistryConfig, seen: list[str]) -> None:
        self.config = config
        self.seen = seen  # names of what happened, reported as hypothesis events
        self.now = 0.0
        self.held: dict[str, MRun] = {}
        # Terminal runs held, in the order they ended (= terminated_at order).
        self.retention: OrderedDict[str, MRun] = OrderedDict()
        self.all_runs: list[MRun] = []
        self.run_ids: set[str] = set()
        self.run_ids_by_cid: dict[str, list[str]] = {cid: [] for cid in CIDS}
        self.subs: list[MSub] = []
        self.frame_counter = 0
        self.subscribers = 0
        self.evicted_ttl = 0
        self.evicted_lru = 0
        self.lagged = 0
        self.frames_pushed = 0
        self.evicted_bytes = 0
        # Runs waiting behind each conversation's active current run.
        self.queues: dict[str, deque[MRun]] = {}
        self.closing = False
        # The run-end hook: what each call must have seen, per conversation in
        # the order the runs ended; which ones raise or hang (decided when the
        # run ends, looked up by the real hook).
        self.hook_plan: dict[str, str] = {}
        self.hook_mode = "ok"
        self.ends = 0
        self.hook_pending: dict[str, deque[tuple[MRun, ChatRunRecord, list[Any]]]] = {}
        self.hook_busy_until: dict[str, float] = {}
        self.expected_hook_calls: dict[str, list[tuple[ChatRunRecord, list[Any]]]] = {}
        self.run_end_failures = 0

    @property
    def queued_count(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def buffered_bytes(self) -> int:
        held = sum(run.bytes for run in self.held.values())
        return held + sum(run.bytes for queue in self.queues.values() for run in queue)

    def retained_bytes(self) -> int:
        return sum(run.bytes for run in self.retention.values())

    def next_frame(self) -> dict[str, int]:
        self.frame_counter += 1
        return {"n": self.frame_counter}

    def expired(self, run: MRun) -> bool:
        return (
            run.terminated_at is not None
            and run.terminated_at + self.config.terminal_retention <= self.now
        )

    def sweep(self) -> int:
        evicted = 0
        while self.retention:
            oldest = next(iter(self.retention.values()))
            if not self.expired(oldest):
                break
            self.retention.popitem(last=False)
            self.forget(oldest)
            self.evicted_ttl += 1
            self.seen.append("evicted by TTL")
            evicted += 1
        while len(self.retention) > self.config.max_retained_terminal:
            _, oldest = self.retention.popitem(last=False)
            self.forget(oldest)
            self.evicted_lru += 1
            self.seen.append("evicted by LRU")
            evicted += 1
        budget = self.config.max_retained_bytes
        while budget is not None and self.retention and self.retained_bytes() > budget:
            _, oldest = self.retention.popitem(last=False)
            self.forget(oldest)
            self.evicted_bytes += 1
            self.seen.append("evicted by bytes")
            evicted += 1
        self.reap_finishing()
        return evicted

    def forget(self, run: MRun) -> None:
        """An evicted run; a producer still finishing it is cancelled."""
        del self.held[run.cid]
        if run.finishing and run.producer_alive:
            run.producer_alive = False
            self.seen.append("finishing producer cancelled by eviction")

    def reap_finishing(self) -> None:
        """A producer still finishing a run is cancelled once the run's retention
        is over (its cancel scope's deadline), even if the run was replaced."""
        for run in self.all_runs:
            if run.finishing and run.producer_alive and self.expired(run):
                run.producer_alive = False
                self.seen.append("finishing producer cancelled at its deadline")

    def lookup(self, cid: str) -> MRun | None:
        run = self.held.get(cid)
        if run is not None and self.expired(run):
            self.sweep()
            return None
        return run

    def publish(self, run: MRun, seq: int) -> None:
        for msub in list(run.live_subs):
            if msub.waiting:  # a blocked receiver gets it handed over directly
                msub.waiting = False
                msub.waiter_expected = ("event", seq)
                self.seen.append("frame handed to a parked reader")
            elif len(msub.queue) < self.config.subscriber_buffer:
                msub.queue.append(seq)
            else:
                msub.lagged = True
                msub.channel_closed = True
                run.live_subs.remove(msub)
                self.subscribers -= 1
                self.lagged += 1
                self.seen.append("subscriber lagged")

    def push(
        self,
        run: MRun,
        frame: Any,
        status: ChatRunStatus | str | None = None,
        current_tool: Any = UNSET,
        error: Any = UNSET,
    ) -> int:
        assert run.is_active
        run.frames.append(frame)
        self.measure(run, frame)
        seq = run.latest_seq
        run.updated_at = self.now
        if current_tool is not UNSET:
            run.current_tool = current_tool
        if error is not UNSET:
            run.last_error = error
        self.frames_pushed += 1
        self.publish(run, seq)
        if status is not None:
            self.set_status(run, ChatRunStatus(status))
        return seq

    def measure(self, run: MRun, frame: Any) -> None:
        """Trim by count and, with a budget, by bytes: the longest run of
        newest frames that fits both limits, at least the newest one."""
        config = self.config
        measured = config.max_bytes_per_run is not None or config.max_retained_bytes is not None
        run.sizes.append(len(json.dumps(frame, separators=(",", ":"))) if measured else 0)
        run.bytes += run.sizes[-1]
        budget = config.max_bytes_per_run
        while run.latest_seq - run.first_kept + 1 > config.max_events_per_run or (
            budget is not None and run.bytes > budget and run.first_kept < run.latest_seq
        ):
            if budget is not None and run.bytes > budget:
                self.seen.append("trimmed by bytes")
            run.bytes -= run.sizes[run.first_kept - 1]
            run.first_kept += 1

    def update(
        self, run: MRun, status: ChatRunStatus | str, current_tool: Any = UNSET, error: Any = UNSET
    ) -> None:
        assert run.is_active
        run.updated_at = self.now
        if current_tool is not UNSET:
            run.current_tool = current_tool
        if error is not UNSET:
            run.last_error = error
        self.set_status(run, ChatRunStatus(status))

    def set_status(self, run: MRun, status: ChatRunStatus) -> None:
        if status.is_terminal:
            self.terminal(run, status)
        else:
            run.status = status

    def terminal(self, run: MRun, status: ChatRunStatus) -> None:
        assert run.is_active
        run.finishing = run.producer_alive
        run.status = status
        run.terminated_at = self.now
        run.updated_at = self.now
        if run.live_subs:
            self.seen.append("run ended with live subscribers")
        for msub in run.live_subs:
            msub.channel_closed = True
            if msub.waiting:
                msub.waiting = False
                msub.waiter_expected = ("stop",)
        self.subscribers -= len(run.live_subs)
        run.live_subs.clear()
        self.schedule_hook(run)
        if self.held.get(run.cid) is run:
            queue = self.queues.get(run.cid)
            if queue and not self.closing:
                self.start_queued(queue)
            else:
                self.retention[run.cid] = run
            self.sweep()
        else:
            queue = self.queues[run.cid]
            queue.remove(run)
            if not queue:
                del self.queues[run.cid]
            self.seen.append("queued run ended before it started")

    def start_queued(self, queue: deque[MRun]) -> None:
        """The oldest queued run replaces the current one (not an eviction)."""
        run = queue.popleft()
        if not queue:
            del self.queues[run.cid]
        run.status = ChatRunStatus.RUNNING
        run.updated_at = self.now
        self.held[run.cid] = run
        run.producer_started = True
        run.producer_alive = True
        self.seen.append("queued run started")

    def enqueue(self, run: MRun) -> None:
        self.queues.setdefault(run.cid, deque()).append(run)

    # -- the run-end hook --

    def schedule_hook(self, run: MRun) -> None:
        self.ends += 1
        plan = "ok"
        if self.hook_mode != "ok" and self.ends % 3 == 0:
            plan = self.hook_mode
        self.hook_plan[run.run_id] = plan
        buffered = run.buffered_frames()
        # The call starts when the scheduler next runs: the step's settle,
        # before its checks (``ChatRunMachine._check`` calls ``run_hooks``).
        self.hook_pending.setdefault(run.cid, deque()).append((run, run.record(), buffered))

    def run_hooks(self) -> None:
        """Start (and, unless they hang, finish) the hook calls that are due,
        one at a time per conversation; a hanging call ends at its timeout."""
        for cid, queue in self.hook_pending.items():
            while queue:
                busy_until = self.hook_busy_until.get(cid)
                if busy_until is not None:
                    if self.now < busy_until:
                        break
                    del self.hook_busy_until[cid]
                    queue.popleft()
                    self.run_end_failures += 1
                    self.seen.append("hook timed out")
                    continue
                run, record, buffered = queue[0]
                self.expected_hook_calls.setdefault(cid, []).append((record, buffered))
                plan = self.hook_plan[run.run_id]
                if plan == "hang":
                    self.hook_busy_until[cid] = self.now + self.config.run_end_timeout
                    continue
                if plan == "raise":
                    self.run_end_failures += 1
                    self.seen.append("hook raised")
                queue.popleft()

    def interrupt(self, run: MRun) -> None:
        """An interrupt of an active run, as it looks once the scheduler settled."""
        assert run.is_active
        if run.status is QUEUED:
            self.seen.append("interrupted a queued run")
        else:
            self.seen.append(
                "interrupted a running producer"
                if run.producer_started
                else "interrupted before start"
            )
        if run.producer_started:
            run.producer_alive = False
            if run.unwind:
                self.push(run, UNWIND)
        self.push(run, INTERRUPTED, status=ChatRunStatus.CANCELLED)


# -- helpers run in the Trio thread ----------------------------------------------


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def read_once(sub: Any) -> tuple[Any, ...]:
    """One ``__anext__`` that never hangs: ``("block",)`` if it would wait."""
    result: tuple[Any, ...] = ("block",)

    async def reader() -> None:
        nonlocal result
        try:
            result = ("event", await sub.__anext__())
        except StopAsyncIteration:
            result = ("stop",)
        except SubscriberLagged as exc:
            result = ("lagged", exc.resume_after, exc)
        nursery.cancel_scope.cancel()

    async def watchdog() -> None:
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(watchdog)
    return result


def check_event(msub: MSub, event: Any, seq: int) -> None:
    run = msub.run
    assert isinstance(event, ChatRunEvent)
    assert (event.conversation_id, event.run_id, event.seq) == (run.cid, run.run_id, seq)
    assert event.frame == run.frames[seq - 1]
    # No gap, no duplicate: exactly one past the last seq yielded.
    assert seq == msub.last + 1
    msub.last = seq
    msub.received.append(seq)
    assert msub.received == list(range(msub.after + 1, msub.after + 1 + len(msub.received)))


def check_end(msub: MSub, actual: tuple[Any, ...]) -> None:
    run = msub.run
    if actual[0] == "stop":
        # The iterator stops only after the run's terminal frame.
        assert not run.is_active
        assert msub.last == run.latest_seq
    else:
        assert actual[0] == "lagged"
        assert actual[1] == msub.last
        exc = actual[2]
        assert (exc.conversation_id, exc.run_id) == (run.cid, run.run_id)
    msub.ended = actual[0]


# -- the state machine -------------------------------------------------------------


class ChatRunMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.thread: threading.Thread | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.host_error: BaseException | None = None
        self.failed = False
        self.seen: list[str] = []
        self.ready = threading.Event()

    # -- the Trio host thread ----------------------------------------------------

    def step(self, afn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run one rule in the Trio thread: act, let every task settle, then
        check the invariants (in the same round trip: it halves the thread
        hand-offs, which are most of this test's run time)."""

        async def act_settle_check() -> None:
            await afn(*args)
            await settle()
            self._check()

        try:
            trio.from_thread.run(act_settle_check, trio_token=self.token)
        except BaseException:
            self.failed = True
            raise
        finally:
            # What this step exercised, for --hypothesis-show-statistics.
            if currently_in_test_context():
                for name in sorted(set(self.seen)):
                    event(name)
            self.seen.clear()

    def _host_main(self) -> None:
        try:
            trio.run(self._host, clock=self.clock)
        except BaseException as exc:  # handed to the test thread in teardown
            self.host_error = exc
        finally:
            self.ready.set()

    async def _host(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stop = trio.Event()
        try:
            async with open_chat_run_registry(self.config, on_run_end=self._hook) as registry:
                self.registry: ChatRunRegistry = registry
                async with trio.open_nursery() as nursery:
                    self.test_nursery = nursery
                    self.ready.set()
                    await self.stop.wait()
                    nursery.cancel_scope.cancel()
                for run in self.model.all_runs:
                    run.active_at_close = run.is_active
                    run.queued_at_close = run.status is QUEUED
                # Hanging hooks must reach their timeout for closing to finish.
                self.clock.autojump_threshold = 0
            if not self.failed:
                await self._check_after_close()
        finally:
            for msub in self.model.subs:
                await msub.cm.__aexit__(None, None, None)

    async def _hook(self, record: ChatRunRecord, events: Any) -> None:
        """The registry's ``on_run_end``: records the call, then raises or
        hangs if the model planned so for this run."""
        frames = [event.frame for event in events]
        assert [event.seq for event in events] == list(
            range(record.latest_seq - len(events) + 1, record.latest_seq + 1)
        )
        assert all(event.run_id == record.run_id for event in events)
        self.hook_calls.setdefault(record.conversation_id, []).append((record, frames))
        plan = self.model.hook_plan.get(record.run_id, "ok")
        if plan == "raise":
            raise RuntimeError(f"hook failed for {record.run_id}")
        if plan == "hang":
            await trio.sleep_forever()

    @initialize(
        max_events=st.integers(2, 8),
        subscriber_buffer=st.integers(1, 4),
        max_retained=st.sampled_from([2, 3, 1, 0]),
        retention=st.sampled_from([5.0, 30.0, 0.0, math.inf]),
        max_queued=st.sampled_from([2, 1, 0]),
        max_bytes=st.sampled_from([None, None, 40, 20]),
        retained_bytes=st.sampled_from([None, None, 60, 0]),
        hook_mode=st.sampled_from(["ok", "ok", "raise", "hang"]),
        run_end_timeout=st.sampled_from([5.0, 30.0]),
    )
    def open_registry(
        self,
        max_events: int,
        subscriber_buffer: int,
        max_retained: int,
        retention: float,
        max_queued: int,
        max_bytes: int | None,
        retained_bytes: int | None,
        hook_mode: str,
        run_end_timeout: float,
    ) -> None:
        self.config = RegistryConfig(
            max_events_per_run=max_events,
            terminal_retention=retention,
            max_retained_terminal=max_retained,
            subscriber_buffer=subscriber_buffer,
            max_queued_per_conversation=max_queued,
            max_bytes_per_run=max_bytes,
            max_retained_bytes=retained_bytes,
            run_end_timeout=run_end_timeout,
        )
        self.model = Model(self.config, self.seen)
        self.model.hook_mode = hook_mode
        self.hook_calls: dict[str, list[tuple[ChatRunRecord, list[Any]]]] = {}
        self.clock = trio.testing.MockClock()
        self.thread = threading.Thread(target=self._host_main, name="trio host", daemon=True)
        self.thread.start()
        self.ready.wait()
        if self.host_error is not None:
            raise self.host_error
        trio.from_thread.run_sync(self._check, trio_token=self.token)

    def teardown(self) -> None:
        if self.thread is None:
            return
        try:
            if self.thread.is_alive():
                trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        finally:
            self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the registry did not close"
        if self.host_error is not None and not self.failed:
            raise self.host_error

    # -- producers -----------------------------------------------------------------

    def _make_producer(self, mrun: MRun) -> Callable[[ChatRun], Awaitable[None]]:
        async def producer(run: ChatRun) -> None:
            mrun.ran = True
            mrun.got_own_handle = run is mrun.handle
            try:
                async for cmd in mrun.cmd_receive:
                    kind = cmd[0]
                    if kind == "push":
                        try:
                            mrun.results.append(run.push_frame(cmd[1], status=cmd[2]))
                        except RunTerminated:
                            mrun.results.append("terminated")
                    elif kind == "update":
                        try:
                            run.update(cmd[1])
                            mrun.results.append("updated")
                        except RunTerminated:
                            mrun.results.append("terminated")
                    elif kind == "return":
                        return
                    else:
                        raise RuntimeError(cmd[1])
            except trio.Cancelled:
                if mrun.unwind and run.record.terminated_at is None:
                    run.push_frame(UNWIND)  # kept: frames pushed while unwinding
                raise
            finally:
                mrun.exited = True

        return producer

    def resolve(self, target: tuple[str, int, str]) -> str:
        """The conversation a ``targets`` draw names (see ``targets``)."""
        mode, i, cid = target
        held = self.model.held
        if mode == "active":
            choice = sorted(c for c, run in held.items() if run.is_active)
        elif mode == "terminal":
            choice = sorted(c for c, run in held.items() if not run.is_active)
        elif mode == "held":
            choice = sorted(held)
        else:
            choice = []
        return choice[i % len(choice)] if choice else cid

    def alive_producers(self) -> list[MRun]:
        return [run for run in self.model.all_runs if run.producer_alive]

    def pick_producer(self, i: int) -> MRun:
        """A live producer: mostly one whose run is active, sometimes one whose
        run already ended (it parks on; its pushes must raise RunTerminated)."""
        alive = self.alive_producers()
        active = [run for run in alive if run.is_active]
        pool = active if active and i % 4 else alive
        return pool[i % len(pool)]

    # -- rules: runs ---------------------------------------------------------------

    @rule(
        cid=cids,
        unwind=st.booleans(),
        pre_frames=st.integers(0, 2),
        interrupt_first=st.sampled_from([False, False, False, True]),
        policy=st.sampled_from(["reject", "reject", "enqueue", "enqueue", "interrupt"]),
    )
    def start(
        self, cid: str, unwind: bool, pre_frames: int, interrupt_first: bool, policy: str
    ) -> None:
        self.step(self._start, cid, unwind, pre_frames, interrupt_first, policy)

    async def _start(
        self, cid: str, unwind: bool, pre_frames: int, interrupt_first: bool, policy: str
    ) -> None:
        m, registry = self.model, self.registry
        current = m.held.get(cid)
        busy = current is not None and current.is_active
        queue = m.queues.get(cid, ())
        if busy and (
            policy == "reject"
            or (policy == "enqueue" and len(queue) >= self.config.max_queued_per_conversation)
        ):
            assert current is not None
            before = registry.stats(), registry.queued(cid)

            async def never(run: ChatRun) -> None:  # pragma: no cover - must not run
                raise AssertionError("a refused start ran its producer")

            expected = RunAlreadyActive if policy == "reject" else RunQueueFull
            with pytest.raises(expected) as info:
                registry.try_start(cid, never, if_active=policy)
            if policy == "reject":
                assert info.value.run_id == current.run_id
            assert (registry.stats(), registry.queued(cid)) == before
            self.seen.append(f"start refused: {expected.__name__}")
            return
        m.sweep()  # try_start sweeps first
        mrun = MRun(cid, m.now, unwind, QUEUED if busy else ChatRunStatus.RUNNING)
        handle = registry.try_start(cid, self._make_producer(mrun), if_active=policy)
        mrun.handle = handle
        mrun.run_id = handle.run_id
        assert isinstance(handle.run_id, str)
        assert handle.run_id not in m.run_ids, "run_id reused"
        m.run_ids.add(handle.run_id)
        m.run_ids_by_cid[cid].append(handle.run_id)
        m.all_runs.append(mrun)
        if busy:
            assert current is not None
            self.seen.append(f"start queued: {policy}")
            if policy == "interrupt":
                # The queue is cancelled first, then the active run interrupted;
                # the new run starts once that run is terminal.
                for waiting in list(queue):
                    m.interrupt(waiting)
                m.enqueue(mrun)
                m.interrupt(current)
            else:
                assert handle.record == mrun.record()
                m.enqueue(mrun)
        else:
            if m.retention.pop(cid, None) is not None:  # replaced, not an eviction
                self.seen.append("restart replaced a retained terminal run")
            m.held[cid] = mrun
            assert handle.record == mrun.record()
        for _ in range(pre_frames):
            frame = m.next_frame()
            assert handle.push_frame(frame) == m.push(mrun, frame)
        if busy and policy == "interrupt":
            return  # started (in the model) or about to: no interrupt before start
        if interrupt_first:
            # Before the producer got to run (or while queued): it never will.
            assert handle.interrupt() is True
            m.interrupt(mrun)
            assert handle.record.status is ChatRunStatus.CANCELLED
        elif not busy:
            mrun.producer_started = True
            mrun.producer_alive = True

    @rule(i=indexes, count=bursts, status=statuses)
    def producer_push(self, i: int, count: int, status: Any) -> None:
        """The producer pushes ``count`` frames through its handle, the last
        one with ``status`` (with no live producer: keyed pushes)."""
        self.step(self._producer_push, i, count, status)

    async def _producer_push(self, i: int, count: int, status: Any) -> None:
        m = self.model
        if not self.alive_producers():
            await self._keyed_push(("active", i, CIDS[i % len(CIDS)]), count, status, UNSET, UNSET)
            return
        mrun = self.pick_producer(i)
        for n in range(1, count + 1):
            frame = m.next_frame()
            frame_status = status if n == count else None
            mrun.cmd_send.send_nowait(("push", frame, frame_status))
            if mrun.is_active:
                mrun.expected_results.append(m.push(mrun, frame, frame_status))
            else:
                mrun.expected_results.append("terminated")
                self.seen.append("push through a stale handle refused")

    @rule(i=indexes, status=update_statuses)
    def producer_update(self, i: int, status: ChatRunStatus) -> None:
        self.step(self._producer_update, i, status)

    async def _producer_update(self, i: int, status: ChatRunStatus) -> None:
        m = self.model
        if not self.alive_producers():
            await self._keyed_update(("active", i, CIDS[i % len(CIDS)]), status, UNSET, UNSET)
            return
        mrun = self.pick_producer(i)
        mrun.cmd_send.send_nowait(("update", status))
        if mrun.is_active:
            m.update(mrun, status)
            mrun.expected_results.append("updated")
        else:
            mrun.expected_results.append("terminated")
            self.seen.append("push through a stale handle refused")

    @rule(
        how=st.sampled_from(["interrupt", "interrupt via handle", "return", "raise"]),
        conv=targets,
        i=indexes,
    )
    def end_run(self, how: str, conv: Any, i: int) -> None:
        """Interrupt (keyed, or through the newest handle of the conversation),
        or have a live producer return or raise. One rule for every way a run
        ends (besides terminal statuses), so runs live long enough to lag
        their subscribers; with no live producer, "return"/"raise" interrupt."""
        self.step(self._end_run, how, conv, i)

    async def _end_run(self, how: str, conv: Any, i: int) -> None:
        alive = self.alive_producers()
        if how.startswith("interrupt") or not alive:
            self._interrupt_now(self.resolve(conv), via_handle=how == "interrupt via handle")
            return
        m = self.model
        mrun = self.pick_producer(i)
        error = f"boom-{i}" if how == "raise" else None
        mrun.producer_alive = False
        if error is None:
            mrun.cmd_send.send_nowait(("return",))
            if mrun.is_active:
                m.terminal(mrun, ChatRunStatus.COMPLETED)
        else:
            mrun.cmd_send.send_nowait(("raise", error))
            if mrun.is_active:
                m.update(mrun, ChatRunStatus.FAILED, error=f"RuntimeError: {error}")
                self.seen.append("producer raised")

    @rule(
        conv=targets,
        count=bursts,
        status=statuses,
        current_tool=optional_strs,
        error=optional_strs,
    )
    def keyed_push(self, conv: Any, count: int, status: Any, current_tool: Any, error: Any) -> None:
        """``registry.push_frame`` ``count`` times, the last one with ``status``."""
        self.step(self._keyed_push, conv, count, status, current_tool, error)

    async def _keyed_push(
        self, conv: Any, count: int, status: Any, current_tool: Any, error: Any
    ) -> None:
        cid = self.resolve(conv)
        for n in range(1, count + 1):
            self._keyed_push_now(cid, status if n == count else None, current_tool, error)

    def _keyed_push_now(self, cid: str, status: Any, current_tool: Any, error: Any) -> None:
        m, registry = self.model, self.registry
        mrun = m.lookup(cid)
        frame = m.next_frame()
        if mrun is None:
            with pytest.raises(RunNotFound):
                registry.push_frame(cid, frame, status=status)
        elif not mrun.is_active:
            with pytest.raises(RunTerminated):
                registry.push_frame(cid, frame, status=status)
        else:
            seq = registry.push_frame(
                cid, frame, status=status, current_tool=current_tool, error=error
            )
            assert seq == m.push(mrun, frame, status, current_tool, error)

    @rule(conv=targets, status=update_statuses, current_tool=optional_strs, error=optional_strs)
    def keyed_update(self, conv: Any, status: ChatRunStatus, current_tool: Any, error: Any) -> None:
        self.step(self._keyed_update, conv, status, current_tool, error)

    async def _keyed_update(
        self, conv: Any, status: ChatRunStatus, current_tool: Any, error: Any
    ) -> None:
        m, registry = self.model, self.registry
        cid = self.resolve(conv)
        mrun = m.lookup(cid)
        if mrun is None:
            with pytest.raises(RunNotFound):
                registry.update(cid, status)
        elif not mrun.is_active:
            with pytest.raises(RunTerminated):
                registry.update(cid, status)
        else:
            registry.update(cid, status.value, current_tool=current_tool, error=error)
            m.update(mrun, status, current_tool, error)

    def _interrupt_now(self, cid: str, via_handle: bool) -> None:
        m = self.model
        if via_handle:
            # The conversation's newest handle, even if its run was evicted.
            mine = [run for run in m.all_runs if run.cid == cid]
            if mine:
                mrun: MRun | None = mine[-1]
                assert mrun is not None and mrun.handle is not None
                expected = mrun.is_active
                assert mrun.handle.interrupt() is expected
            else:
                via_handle = False
        if not via_handle:
            mrun = m.lookup(cid)
            expected = mrun is not None and mrun.is_active
            assert self.registry.interrupt(cid) is expected
        if expected:
            assert mrun is not None
            m.interrupt(mrun)

    # -- rules: subscribers ------------------------------------------------------------

    @rule(
        conv=targets,
        cursor=st.sampled_from(["zero", "latest", "mid", "trimmed", "past"]),
        run_id=st.sampled_from(["none", "none", "current", "stale", "queued"]),
        pick=st.integers(0, 20),
    )
    def subscribe(self, conv: Any, cursor: str, run_id: str, pick: int) -> None:
        """Subscribe from a cursor: 0, the latest seq, one in the buffered range,
        one already trimmed (``ReplayGap``) or one past the end (``ValueError``)."""
        self.step(lambda: self._subscribe(self.resolve(conv), cursor, run_id, pick))

    async def _subscribe(self, cid: str, cursor: str, run_id_mode: str, pick: int) -> None:
        m = self.model
        mrun = m.lookup(cid)
        queued = list(m.queues.get(cid, ()))
        if run_id_mode == "queued":
            if queued:  # a queued run, named by its run_id
                mrun = queued[pick % len(queued)]
                self.seen.append("subscribe to a queued run")
            else:
                run_id_mode = "none"
        latest = 0 if mrun is None else mrun.latest_seq
        available_from = 1 if mrun is None else mrun.buffered_from()
        after = {
            "zero": 0,
            "latest": latest,
            "mid": available_from - 1 + pick % (latest - available_from + 2),
            "trimmed": pick % max(1, available_from - 1),
            "past": latest + 1 + pick % 3,
        }[cursor]
        run_id: str | None = None
        if run_id_mode in ("current", "queued"):
            run_id = mrun.run_id if mrun is not None else "no-such-run"
        elif run_id_mode == "stale":
            live_ids = {run.run_id for run in queued}
            if mrun is not None:
                live_ids.add(mrun.run_id)
            older = [r for r in m.run_ids_by_cid[cid] if r not in live_ids]
            run_id = older[pick % len(older)] if older else "no-such-run"

        if mrun is None or (run_id is not None and run_id != mrun.run_id):
            expected: type[BaseException] | None = RunNotFound
        elif after > latest:
            expected = ValueError
        elif after + 1 < available_from:
            expected = ReplayGap
        else:
            expected = None

        cm = self.registry.subscribe(cid, after=after, run_id=run_id)
        self.seen.append(f"subscribe: {'ok' if expected is None else expected.__name__}")
        if expected is not None:
            with pytest.raises(expected) as info:
                await cm.__aenter__()
            if expected is ReplayGap:
                assert info.value.available_from == available_from
                assert info.value.after == after
            return
        assert mrun is not None
        sub = await cm.__aenter__()
        assert (sub.conversation_id, sub.run_id, sub.after, sub.last_seq) == (
            cid,
            mrun.run_id,
            after,
            after,
        )
        msub = MSub(mrun, cm, sub, after, live=mrun.is_active)
        if not msub.live:
            self.seen.append("subscribe: replay-only (terminal run)")
        m.subs.append(msub)
        if msub.live:
            mrun.live_subs.append(msub)
            m.subscribers += 1

    def readable_subs(self) -> list[MSub]:
        return [msub for msub in self.model.subs if not msub.waiting]

    @rule(i=indexes, n=st.integers(1, 6), park=st.booleans())
    def read_some(self, i: int, n: int, park: bool) -> None:
        """Read up to ``n`` events without waiting (each is checked against the
        model: event, end, lag, or "would block"). If it would block and
        ``park``, leave a reader task blocked in ``__anext__``: the next frame
        is handed to it directly, or the end wakes it. With no reader that
        can read: subscribe instead."""
        self.step(self._read_some, i, n, park)

    async def _read_some(self, i: int, n: int, park: bool) -> None:
        subs = self.readable_subs()
        if not subs:
            await self._subscribe(self.resolve(("held", i, CIDS[i % 4])), "zero", "none", i)
            return
        msub = subs[i % len(subs)]
        for _ in range(n):
            expected = msub.next_outcome()
            actual = await read_once(msub.sub)
            assert actual[0] == expected[0], (actual, expected)
            self.seen.append(f"read: {actual[0]}")
            if actual[0] == "event":
                msub.consume()
                check_event(msub, actual[1], expected[1])
            elif actual[0] == "block":
                # Nothing was consumed; the subscription is still usable.
                assert msub.sub.last_seq == msub.last
                if park:
                    await self._park_reader(msub)
                break
            else:
                assert actual[:2] == expected
                check_end(msub, actual)
                break
            assert msub.sub.last_seq == msub.last

    async def _park_reader(self, msub: MSub) -> None:
        async def waiter(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                msub.waiter_scope = scope
                task_status.started()
                try:
                    outcome: tuple[Any, ...] = ("event", await msub.sub.__anext__())
                except StopAsyncIteration:
                    outcome = ("stop",)
                except SubscriberLagged as exc:
                    outcome = ("lagged", exc.resume_after, exc)
                msub.waiter_outcome = outcome

        await self.test_nursery.start(waiter)
        msub.waiting = True

    @rule(i=indexes)
    def disconnect(self, i: int) -> None:
        self.step(self._disconnect, i)

    async def _disconnect(self, i: int) -> None:
        m = self.model
        if not m.subs:
            await self._subscribe(self.resolve(("active", i, CIDS[i % 4])), "latest", "queued", i)
            return
        msub = m.subs[i % len(m.subs)]
        if msub.waiting:
            assert msub.waiter_scope is not None
            msub.waiter_scope.cancel()
            await settle()
            assert msub.waiter_outcome is None
            msub.waiting = False
        m.subs.remove(msub)
        await msub.cm.__aexit__(None, None, None)
        if msub in msub.run.live_subs:
            msub.run.live_subs.remove(msub)
            m.subscribers -= 1
        with pytest.raises(trio.ClosedResourceError):
            await msub.sub.__anext__()

    # -- rules: time -----------------------------------------------------------------

    @rule(
        jump=st.sampled_from([1.0, 4.0, 0.5, 5.0, 25.0, 30.0, 1000.0]),
        first_read=st.sampled_from(
            ["stats", "get", "list", "events", "prune", "push", "interrupt", "subscribe"]
        ),
        conv=st.tuples(st.sampled_from(["terminal", "terminal", "held", "any"]), indexes, cids),
    )
    def advance(self, jump: float, first_read: str, conv: Any) -> None:
        """Jump the MockClock (small steps and big ones, landing exactly on
        retention boundaries too), then read first through one path, mostly
        about a terminal run that may just have expired: every path must
        evict what became due before answering. Then the invariants."""
        self.step(self._advance, jump, first_read, conv)

    async def _advance(self, jump: float, first_read: str, conv: Any) -> None:
        m, registry = self.model, self.registry
        cid = self.resolve(conv)  # chosen before the jump: it may expire now
        self.clock.jump(jump)
        m.now += jump
        assert trio.current_time() == m.now
        if any(m.expired(run) for run in m.retention.values()):
            self.seen.append(f"jump expired a run, then {first_read}")
        if first_read == "stats":
            m.sweep()
            self._check_stats(registry.stats())
        elif first_read == "get":
            m.sweep()
            for each in (cid, *CIDS):
                expected = m.held.get(each)
                assert registry.get(each) == (None if expected is None else expected.record())
        elif first_read == "list":
            m.sweep()
            self._check_list(registry.list())
        elif first_read == "prune":
            pruned = m.sweep()
            assert registry.prune() == pruned
            if pruned:
                self.seen.append("prune evicted")
        elif first_read == "events":
            self._check_events(cid, registry.events(cid), m.lookup(cid))
        elif first_read == "push":
            self._keyed_push_now(cid, None, UNSET, UNSET)
        elif first_read == "interrupt":
            self._interrupt_now(cid, via_handle=False)
        else:
            await self._subscribe(cid, "latest", "none", 0)

    # -- invariants ----------------------------------------------------------------------

    def _check(self) -> None:
        m, registry = self.model, self.registry
        assert trio.current_time() == m.now
        self._collect_waiters()
        m.sweep()
        m.run_hooks()
        self._check_stats(registry.stats())
        self._check_list(registry.list())
        active = registry.list(active_only=True)
        assert {r.run_id: r for r in active} == {
            run.run_id: run.record() for run in m.all_runs if run.is_active
        }
        assert len(active) == len([r for r in m.all_runs if r.is_active])  # never evicted
        for cid in CIDS:
            # One running run per conversation at most; the rest wait, in order.
            running = [r for r in active if r.conversation_id == cid and r.status is not QUEUED]
            assert len(running) <= 1
            assert registry.queued(cid) == [run.record() for run in m.queues.get(cid, ())]
        # Every hook call so far, per conversation in the order the runs ended,
        # with the final record and what was still buffered.
        assert self.hook_calls == m.expected_hook_calls
        for cid in CIDS:
            expected = m.held.get(cid)
            assert registry.get(cid) == (None if expected is None else expected.record())
            self._check_events(cid, registry.events(cid), expected)
            if expected is not None and expected.latest_seq:
                after = expected.latest_seq // 2
                self._check_events(cid, registry.events(cid, after=after), expected, after)
        for run in m.all_runs:
            # Handles keep reading their own run, evicted or not; terminated_at
            # is set once and never changes (the model sets it once).
            assert run.handle is not None
            assert run.handle.record == run.record()
            assert run.ran == run.producer_started
            assert run.exited == (run.producer_started and not run.producer_alive)
            if run.ran:
                assert run.got_own_handle
            assert run.results == run.expected_results
        for msub in m.subs:
            assert msub.sub.last_seq == msub.last
            if msub.waiting:
                assert msub.waiter_outcome is None

    def _collect_waiters(self) -> None:
        for msub in self.model.subs:
            expected = msub.waiter_expected
            if expected is None:
                continue
            actual = msub.waiter_outcome
            assert actual is not None, f"parked reader not woken, expected {expected}"
            assert actual[0] == expected[0]
            self.seen.append(f"parked reader woken: {actual[0]}")
            if actual[0] == "event":
                check_event(msub, actual[1], expected[1])
            else:
                check_end(msub, actual)
            msub.waiter_expected = msub.waiter_outcome = None

    def _check_stats(self, stats: RegistryStats) -> None:
        m = self.model
        held_active = sum(run.is_active for run in m.held.values())
        assert stats == RegistryStats(
            active=held_active,
            retained_terminal=len(m.retention),
            subscribers=m.subscribers,
            evicted_ttl=m.evicted_ttl,
            evicted_lru=m.evicted_lru,
            lagged_subscribers=m.lagged,
            frames_pushed=m.frames_pushed,
            queued=m.queued_count,
            evicted_bytes=m.evicted_bytes,
            run_end_failures=m.run_end_failures,
            buffered_bytes=m.buffered_bytes() if self.config.measures_bytes else None,
        )
        assert stats.retained_terminal <= self.config.max_retained_terminal
        assert stats.subscribers == sum(len(run.live_subs) for run in m.all_runs)

    def _check_list(self, records: list[ChatRunRecord]) -> None:
        m = self.model
        now = trio.current_time()
        retention = self.config.terminal_retention
        for record in records:
            # Nothing past its retention is ever shown.
            assert record.terminated_at is None or record.terminated_at + retention > now
        assert all(a.updated_at >= b.updated_at for a, b in itertools.pairwise(records))
        held = [*m.held.values(), *(run for queue in m.queues.values() for run in queue)]
        assert len(records) == len(held)
        assert {r.run_id: r for r in records} == {run.run_id: run.record() for run in held}

    def _check_events(
        self, cid: str, events: list[ChatRunEvent], run: MRun | None, after: int = 0
    ) -> None:
        if run is None:
            assert events == []
            return
        start = max(after + 1, run.buffered_from())
        assert [e.seq for e in events] == list(range(start, run.latest_seq + 1))
        for ev in events:
            assert (ev.conversation_id, ev.run_id) == (cid, run.run_id)
            assert ev.frame == run.frames[ev.seq - 1]
            assert isinstance(ev.timestamp, float)

    # -- closing -------------------------------------------------------------------------

    async def _check_after_close(self) -> None:
        m, registry = self.model, self.registry
        assert registry.closed
        stats = registry.stats()
        assert stats.active == 0
        assert stats.queued == 0
        assert stats.subscribers == 0
        # Every run's hook was called exactly once before the registry closed,
        # the runs the closing ended included.
        hooked = [record.run_id for calls in self.hook_calls.values() for record, _ in calls]
        assert len(hooked) == len(set(hooked))
        assert set(hooked) == {run.run_id for run in m.all_runs}
        for run in m.all_runs:
            assert run.handle is not None
            record = run.handle.record
            # Every producer task exited before the registry block returned.
            assert run.exited == run.ran
            assert record.terminated_at is not None
            if run.queued_at_close:
                # Ended without running its producer.
                assert not run.ran
                assert record.status is ChatRunStatus.CANCELLED
                assert record.terminated_at == m.now
                assert record.latest_seq == run.latest_seq + 1
            elif run.active_at_close:
                assert record.status is ChatRunStatus.CANCELLED
                assert record.terminated_at == m.now
                extra = 2 if run.unwind and run.producer_started else 1
                assert record.latest_seq == run.latest_seq + extra
            else:
                assert record == run.record()

        async def refused(run: ChatRun) -> None:  # pragma: no cover - never runs
            pass

        with pytest.raises(RuntimeError):
            registry.try_start("c0", refused)
        for run in m.all_runs:
            if run.active_at_close:
                # The frames pushed while closing, for the subscribers' checks below.
                assert run.handle is not None
                extra = run.handle.record.latest_seq - run.latest_seq
                run.frames.extend([UNWIND] * (extra - 1) + [INTERRUPTED])
                run.status = ChatRunStatus.CANCELLED
                run.terminated_at = m.now
        # Every open subscription drains what was queued, then ends.
        for msub in m.subs:
            while msub.ended is None:
                actual = await read_once(msub.sub)
                assert actual[0] != "block", "a subscriber was left open by closing"
                if actual[0] == "event":
                    check_event(msub, actual[1], actual[1].seq)
                else:
                    check_end(msub, actual)
            if msub.ended == "stop" and msub.run.active_at_close and msub.received:
                assert msub.run.frames[msub.last - 1] == INTERRUPTED


TestChatRunStateMachine = ChatRunMachine.TestCase
# The loaded profile (tests/conftest.py: max_examples, stateful_step_count,
# deadline); hypothesis' own default for state machines would silence every
# health check.
TestChatRunStateMachine.settings = settings()
