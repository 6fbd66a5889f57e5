"""Rules pinned at their edge after the complete mutation run of the core
(``nox -s mutate``, docs/testing.md): each test states one documented rule
that no other test checked exactly. Time is Trio's MockClock (``autojump_clock``)."""

from __future__ import annotations

import gc
import logging
import math
import re

import pytest
import trio

from trio_chatruns import ChatRunStatus, RegistryConfig, RunQueueFull, open_chat_run_registry

from helpers import park


def sized(frame: dict[str, int]) -> int:
    """A ``frame_size`` the test chooses: each frame says its own size."""
    return frame["bytes"]


async def test_a_run_evicted_by_ttl_gives_its_bytes_back_to_the_retained_budget(autojump_clock):
    """``max_retained_bytes`` counts the terminal runs held now: once a run's
    retention runs out, its bytes no longer count against the newer runs."""
    config = RegistryConfig(terminal_retention=10, max_retained_bytes=100, frame_size=sized)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("a", park)
        run.push_frame({"bytes": 60}, status=ChatRunStatus.COMPLETED)
        await trio.sleep(11)  # "a" is past its retention
        for conversation_id in ("b", "c"):  # 40 + 40 fit in 100; 60 + 40 + 40 would not
            run = registry.try_start(conversation_id, park)
            run.push_frame({"bytes": 40}, status=ChatRunStatus.COMPLETED)
        stats = registry.stats()
        assert (stats.evicted_ttl, stats.evicted_bytes) == (1, 0)
        assert stats.retained_terminal == 2
        assert stats.buffered_bytes == 80
        assert registry.get("b") is not None and registry.get("c") is not None


async def test_an_error_raised_by_the_body_keeps_its_own_context(autojump_clock):
    """An exception leaving ``open_chat_run_registry``'s body propagates as
    itself: its ``__context__`` (the error it was raised while handling, shown
    as "During handling of the above exception...") is its own, not replaced
    by the registry's exception group nor dropped."""
    with pytest.raises(KeyError) as caught:
        async with open_chat_run_registry():
            try:
                raise ValueError("first")
            except ValueError:
                raise KeyError("second")  # noqa: B904 - the implicit context is the point
    assert isinstance(caught.value.__context__, ValueError)
    assert str(caught.value.__context__) == "first"


def ended(registry, conversation_id: str, size: int) -> None:
    """A run of one frame of ``size`` bytes (as :func:`sized` measures it), completed."""
    run = registry.try_start(conversation_id, park)
    run.push_frame({"bytes": size}, status=ChatRunStatus.COMPLETED)


# -- byte budgets at their edge: "more than" the budget, never "as much as" ------


async def test_terminal_runs_totalling_exactly_the_retained_budget_are_all_kept(autojump_clock):
    """``max_retained_bytes``: runs are evicted *while they total more than* it."""
    config = RegistryConfig(max_retained_bytes=100, frame_size=sized)
    async with open_chat_run_registry(config) as registry:
        ended(registry, "a", 60)
        ended(registry, "b", 40)  # 100 bytes: at the budget, not over it
        stats = registry.stats()
        assert (stats.retained_terminal, stats.evicted_bytes, stats.buffered_bytes) == (2, 0, 100)
        ended(registry, "c", 1)  # 101: the oldest-ended run goes
        stats = registry.stats()
        assert (stats.retained_terminal, stats.evicted_bytes, stats.buffered_bytes) == (2, 1, 41)
        assert registry.get("a") is None
    # The same edge when a sweep runs for another reason (here the LRU cap).
    config = RegistryConfig(max_retained_terminal=2, max_retained_bytes=100, frame_size=sized)
    async with open_chat_run_registry(config) as registry:
        ended(registry, "a", 10)
        ended(registry, "b", 50)
        ended(registry, "c", 50)  # "a" goes by the cap, leaving exactly 100 bytes
        stats = registry.stats()
        assert (stats.evicted_lru, stats.evicted_bytes, stats.retained_terminal) == (1, 0, 2)


async def test_a_run_evicted_by_the_lru_cap_gives_its_bytes_back(autojump_clock):
    """A run evicted by ``max_retained_terminal`` no longer counts against
    ``max_retained_bytes``: the runs left are judged by their own bytes."""
    config = RegistryConfig(max_retained_terminal=2, max_retained_bytes=100, frame_size=sized)
    async with open_chat_run_registry(config) as registry:
        ended(registry, "a", 80)
        ended(registry, "b", 10)
        ended(registry, "c", 10)  # three runs: "a" goes by the cap; 20 bytes are left
        ended(registry, "b", 85)  # "b" replaced: 10 + 85 = 95 bytes, within the budget
        stats = registry.stats()
        assert (stats.evicted_lru, stats.evicted_bytes) == (1, 0)
        assert stats.retained_terminal == 2
        assert stats.buffered_bytes == 95
        assert registry.get("c") is not None


async def test_a_replaced_terminal_run_gives_its_bytes_back(autojump_clock):
    """Starting a new run for a conversation replaces its terminal run: the old
    run's bytes leave ``max_retained_bytes`` with it."""
    config = RegistryConfig(max_retained_bytes=100, frame_size=sized)
    async with open_chat_run_registry(config) as registry:
        ended(registry, "a", 70)
        ended(registry, "b", 20)
        ended(registry, "a", 50)  # "a" replaced: 20 + 50 = 70 bytes
        stats = registry.stats()
        assert (stats.evicted_bytes, stats.retained_terminal, stats.buffered_bytes) == (0, 2, 70)
        assert registry.get("b") is not None


async def test_a_run_buffer_of_exactly_max_bytes_per_run_keeps_every_frame(autojump_clock):
    """``max_bytes_per_run``: the oldest frames are dropped *while they total
    more than* the budget, so trimming stops at exactly the budget."""
    config = RegistryConfig(max_bytes_per_run=10, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        run.push_frame("aaaa")
        run.push_frame("bbbbbb")  # 4 + 6 = 10: both kept
        assert [event.seq for event in registry.events("c")] == [1, 2]
        run.push_frame("cccc")  # 14: "aaaa" goes, leaving exactly 10
        assert [event.frame for event in registry.events("c")] == ["bbbbbb", "cccc"]
        assert registry.stats().buffered_bytes == 10
        run.interrupt()


async def test_a_frame_size_may_return_an_int_subclass(autojump_clock):
    """``frame_size`` must return an int of bytes: an ``int`` subclass (an
    ``IntEnum``, a NumPy-style integer) is one, and counts as its value."""

    class Bytes(int):
        pass

    config = RegistryConfig(max_bytes_per_run=10, frame_size=lambda frame: Bytes(len(frame)))
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        run.push_frame("abc")
        run.push_frame("defgh")
        assert registry.stats().buffered_bytes == 8
        run.push_frame("ijk")  # 11 > 10: the first frame goes
        assert [event.frame for event in registry.events("c")] == ["defgh", "ijk"]
        run.interrupt()


# -- errors name what was refused ---------------------------------------------


async def test_run_queue_full_says_which_conversation_and_which_limit(autojump_clock):
    config = RegistryConfig(max_queued_per_conversation=1)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("chat-7", park)
        registry.try_start("chat-7", park, if_active="enqueue")
        with pytest.raises(RunQueueFull) as caught:
            registry.try_start("chat-7", park, if_active="enqueue")
        message = str(caught.value)
        assert "'chat-7'" in message
        assert "max_queued_per_conversation=1" in message
        run.interrupt()


async def test_an_unknown_start_policy_names_the_choices(autojump_clock):
    async with open_chat_run_registry() as registry:
        with pytest.raises(ValueError) as caught:
            registry.try_start("c", park, if_active="replace")
        assert str(caught.value) == (
            "unknown start policy if_active='replace'; "
            "expected one of 'reject', 'interrupt', 'enqueue'"
        )
        assert registry.get("c") is None


async def test_a_run_repr_names_the_run_its_conversation_status_and_latest_seq(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("chat-7", park)
        run.push_frame({"n": 1})
        text = repr(run)
        assert text.startswith(f"<ChatRun {run.run_id} ")
        assert "conversation='chat-7'" in text
        assert "status=running" in text
        assert "latest_seq=1" in text
        run.interrupt()


# -- the run-end hook's failures: logged once, naming the run and why ------------


def hook_errors(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "trio_chatruns" and record.levelno == logging.ERROR
    ]


async def test_a_raising_hook_is_logged_naming_the_run_and_conversation(autojump_clock, caplog):
    async def hook(record, events) -> None:
        raise ValueError("disk full")

    async with open_chat_run_registry(on_run_end=hook) as registry:
        run = registry.try_start("chat-7", park)
        run.update("completed")
    assert hook_errors(caplog) == [
        f"on_run_end hook for run {run.run_id} (conversation 'chat-7') raised"
    ]


async def test_a_hung_hook_is_logged_naming_the_run_conversation_and_timeout(
    autojump_clock, caplog
):
    async def hook(record, events) -> None:
        await trio.sleep_forever()

    config = RegistryConfig(run_end_timeout=7)
    async with open_chat_run_registry(config, on_run_end=hook) as registry:
        run = registry.try_start("chat-7", park)
        run.update("completed")
    assert hook_errors(caplog) == [
        f"on_run_end hook for run {run.run_id} (conversation 'chat-7') timed out after 7.0 s"
    ]


async def test_a_hook_that_fails_as_its_deadline_cancels_it_counts_as_one_failure(
    autojump_clock, caplog
):
    """``run_end_failures`` counts *calls* that raised or timed out: a call
    that does both (a task of the hook raises while the deadline cancels it)
    is one failure, logged once as raised."""

    async def hook(record, events) -> None:
        async def fails_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails_when_cancelled)
            await trio.sleep_forever()

    config = RegistryConfig(run_end_timeout=7)
    async with open_chat_run_registry(config, on_run_end=hook) as registry:
        run = registry.try_start("chat-7", park)
        run.update("completed")
        await trio.sleep(20)
        assert registry.stats().run_end_failures == 1
    assert hook_errors(caplog) == [
        f"on_run_end hook for run {run.run_id} (conversation 'chat-7') raised"
    ]


# -- the complete run (2026-11-30, second session) -------------------------------


async def test_the_interrupted_frame_is_measured_by_the_applications_frame_size(
    autojump_clock,
):
    """``frame_size`` measures every frame of a budgeted run, the
    ``{"type": "interrupted"}`` frame the registry pushes itself included
    (the default measure would count its compact JSON, 22 bytes)."""
    config = RegistryConfig(max_bytes_per_run=1000, frame_size=len)  # a dict's size: its keys
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        run.push_frame({"n": 1, "text": "hello"})
        await trio.sleep(1)  # the producer is parked
        assert run.interrupt() is True
        record = await run.wait()
        assert record.status == ChatRunStatus.CANCELLED
        assert [event.frame for event in registry.events("c")][-1] == {"type": "interrupted"}
        assert registry.stats().buffered_bytes == 2 + 1


class Bytes(int):
    """An ``int`` subclass, as a ``frame_size`` may return (an ``IntEnum``, a
    NumPy-style integer)."""


async def test_a_frame_size_of_zero_bytes_is_a_size(autojump_clock):
    """``frame_size`` returns an int of bytes ``>= 0``: zero is a size, not an
    error, for any frame (the interrupted frame included) and for an ``int``
    subclass too."""
    config = RegistryConfig(max_bytes_per_run=10, frame_size=lambda frame: Bytes(len(frame)))
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        assert run.push_frame("") == 1
        assert run.push_frame("abc") == 2
        assert registry.stats().buffered_bytes == 3
        run.update("completed")
    config = RegistryConfig(max_retained_bytes=10, frame_size=lambda frame: 0)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        run.push_frame({"n": 1})
        await trio.sleep(1)
        run.interrupt()
        assert (await run.wait()).status == ChatRunStatus.CANCELLED
        assert registry.stats().buffered_bytes == 0


async def test_a_subscription_repr_names_its_class_run_conversation_and_cursor(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("chat-7", park)
        run.push_frame({"n": 1})
        run.push_frame({"n": 2})
        async with registry.subscribe("chat-7", after=1) as subscription:
            assert repr(subscription) == (
                f"<ChatRunSubscription run={run.run_id} conversation='chat-7' last_seq=1>"
            )
            await subscription.__anext__()
            assert repr(subscription).endswith(" last_seq=2>")
        run.interrupt()


async def test_the_registry_tells_the_server_which_run_end_hook_it_was_opened_with(
    autojump_clock,
):
    """``ChatRunRegistry._run_end_hook()`` (internal, read by
    ``trio_chatruns.server`` to check that its history is wired to the
    registry): the ``on_run_end`` hook, or ``None`` without one."""

    async def hook(record, events) -> None:
        pass

    async with open_chat_run_registry(on_run_end=hook) as registry:
        assert registry._run_end_hook() is hook
    async with open_chat_run_registry() as registry:
        assert registry._run_end_hook() is None


async def test_a_run_id_is_32_hex_digits_new_for_every_run(autojump_clock):
    """``ChatRun.run_id``: "32 hex digits, new for every run" (a restarted
    conversation is told apart from its last run)."""
    async with open_chat_run_registry() as registry:
        first = registry.try_start("c", park)
        first.update("completed")
        second = registry.try_start("c", park)
        for run in (first, second):
            assert re.fullmatch("[0-9a-f]{32}", run.run_id), run.run_id
        assert first.run_id != second.run_id
        second.interrupt()


# -- what a new run and a new registry look like, and the exact refusals --------


async def test_a_new_run_record_has_no_frames_no_tool_no_error_and_no_end(autojump_clock):
    """``ChatRunRecord``: ``latest_seq`` 0, ``current_tool`` and ``last_error``
    ``None`` until set, ``terminated_at`` ``None`` while active, and
    ``started_at``/``updated_at`` the Trio time of the start."""
    await trio.sleep(7)
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        record = run.record
        assert record.status is ChatRunStatus.RUNNING
        assert (record.latest_seq, record.current_tool, record.last_error) == (0, None, None)
        assert record.terminated_at is None
        assert record.started_at == record.updated_at == trio.current_time() == 7
        run.interrupt()


async def test_registry_closed_is_the_bool_false_while_open(autojump_clock):
    """``ChatRunRegistry.closed`` is a ``bool``: ``False`` inside the block,
    ``True`` once it was left."""
    async with open_chat_run_registry() as registry:
        assert registry.closed is False
    assert registry.closed is True


def test_a_zero_run_end_timeout_is_refused_saying_so():
    with pytest.raises(ValueError) as caught:
        RegistryConfig(run_end_timeout=0)
    assert str(caught.value) == "run_end_timeout must be > 0 seconds, not 0"


async def test_an_empty_conversation_id_is_refused_saying_so(autojump_clock):
    async with open_chat_run_registry() as registry:
        with pytest.raises(ValueError) as caught:
            registry.try_start("", park)
        assert str(caught.value) == "conversation_id must be a non-empty str, not ''"


async def test_a_refused_status_move_names_the_run_and_its_conversation(autojump_clock):
    """``queued`` is set by the registry only, and a queued run takes a
    terminal status only: each refusal names the run and the conversation."""
    async with open_chat_run_registry() as registry:
        active = registry.try_start("chat-7", park)
        with pytest.raises(ValueError) as caught:
            active.update("queued")
        assert str(caught.value) == (
            f"status 'queued' is set by the registry only (run {active.run_id!r}, "
            "conversation 'chat-7')"
        )
        queued = registry.try_start("chat-7", park, if_active="enqueue")
        with pytest.raises(ValueError) as caught:
            queued.push_frame({"n": 1}, status="waiting_hitl")
        assert str(caught.value) == (
            f"run {queued.run_id!r} (conversation 'chat-7') is queued; "
            "it becomes running when the registry starts it, not 'waiting_hitl'"
        )
        active.interrupt()


# -- the complete run's last survivors (2026-11-30, third session) -----------------


def _states_of(run_id: str) -> list[object]:
    """The run states alive in memory for ``run_id`` (after a full collection)."""
    gc.collect()
    return [
        obj
        for obj in gc.get_objects()
        if type(obj).__name__ == "RunState" and getattr(obj, "run_id", None) == run_id
    ]


@pytest.mark.parametrize("ending", ["returns", "raises", "interrupted", "never started"])
async def test_a_run_ended_by_its_producers_exit_leaves_no_trace_once_replaced(
    autojump_clock, monkeypatch, ending
):
    """Memory stays bounded (API.md): a run that ended *because* its producer
    exited (it returned: ``completed``; raised: ``failed``; was interrupted:
    ``cancelled``), or that was interrupted before its producer ever ran, has
    no producer left to stop, so the registry keeps no record of one: replacing
    the run frees it. (Only a producer still running after its run ended is
    remembered, until it exits, so that evicting the run can cancel it.)"""
    # A captured log record would keep the traceback, and with it the run, alive.
    monkeypatch.setattr(logging.getLogger("trio_chatruns"), "disabled", True)

    async def producer(run):
        await trio.sleep(1)
        if ending == "raises":
            raise RuntimeError("model failed")
        if ending == "interrupted":
            await trio.sleep_forever()

    expected = {
        "returns": ChatRunStatus.COMPLETED,
        "raises": ChatRunStatus.FAILED,
        "interrupted": ChatRunStatus.CANCELLED,
        "never started": ChatRunStatus.CANCELLED,
    }[ending]
    config = RegistryConfig(terminal_retention=math.inf)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", producer)
        old_id = run.run_id
        if ending == "never started":
            assert run.interrupt() is True  # in the round that started it
        elif ending == "interrupted":
            await trio.sleep(2)
            assert run.interrupt() is True
        assert (await run.wait()).status is expected
        await trio.sleep(5)  # every task of the run has exited
        del run
        assert len(_states_of(old_id)) == 1  # still retained
        registry.try_start("c", park)
        assert _states_of(old_id) == []


@pytest.mark.parametrize("setting", ["terminal_retention", "run_end_timeout"])
def test_a_bad_number_of_seconds_is_refused_naming_the_setting(setting):
    """``RegistryConfig``: a clear error naming the setting and the bad value."""
    with pytest.raises(TypeError) as caught:
        RegistryConfig(**{setting: "5"})
    assert str(caught.value) == f"{setting} must be a number of seconds, not '5'"
    with pytest.raises(ValueError) as caught:
        RegistryConfig(**{setting: -1})
    assert str(caught.value) == f"{setting} must be >= 0 seconds, not -1"
    with pytest.raises(ValueError) as caught:
        RegistryConfig(**{setting: 10**400})
    assert str(caught.value) == (
        f"{setting}={10**400!r} is too large for a float; use math.inf for 'forever'"
    )
