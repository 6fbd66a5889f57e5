"""Boundaries and paths the other tests reach only by chance (found by mutation
testing, see docs/testing.md): each test pins one documented rule at its edge.
Time is Trio's MockClock (``autojump_clock``)."""

from __future__ import annotations

import gc
import logging
import math

import pytest
import trio

from trio_chatruns import (
    UNSET,
    ChatRunStatus,
    RegistryConfig,
    ReplayGap,
    RunAlreadyActive,
    RunNotFound,
    RunTerminated,
    SubscriberLagged,
    open_chat_run_registry,
)

from helpers import finished_run, park

# -- the replay buffer's edge ----------------------------------------------------


async def test_replay_gap_starts_exactly_one_frame_short(autojump_clock):
    """``max_events_per_run=3`` and 5 frames keep seqs 3..5: ``after=2`` resumes
    without a gap, ``after=1`` (one frame short) is a ``ReplayGap``."""
    async with open_chat_run_registry(RegistryConfig(max_events_per_run=3)) as registry:
        run = finished_run(registry, "c", frames=5)
        async with registry.subscribe("c", after=2) as subscription:
            assert [event.seq async for event in subscription] == [3, 4, 5]
        for after in (1, 0):
            with pytest.raises(ReplayGap) as caught:
                async with registry.subscribe("c", after=after):
                    pass  # pragma: no cover
            gap = caught.value
            assert (gap.conversation_id, gap.run_id) == ("c", run.run_id)
            assert (gap.after, gap.available_from) == (after, 3)
        # events() never raises: it answers what is still buffered past the cursor.
        for after in range(6):
            got = [event.seq for event in registry.events("c", after=after)]
            assert got == [seq for seq in (3, 4, 5) if seq > after], after


async def test_replay_gap_boundary_while_the_run_is_active(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(max_events_per_run=2)) as registry:
        run = registry.try_start("c", park)
        for n in range(1, 5):
            run.push_frame({"n": n})  # seqs 3 and 4 are kept
        async with registry.subscribe("c", after=2) as subscription:
            run.push_frame({"n": 5}, status=ChatRunStatus.COMPLETED)
            assert [event.seq async for event in subscription] == [3, 4, 5]
        with pytest.raises(ReplayGap) as caught:
            async with registry.subscribe("c", after=2):
                pass  # pragma: no cover
        assert caught.value.available_from == 4


async def test_a_cursor_at_latest_seq_is_no_gap_even_with_one_frame_kept(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(max_events_per_run=1)) as registry:
        finished_run(registry, "c", frames=3)
        async with registry.subscribe("c", after=3) as subscription:
            assert [event async for event in subscription] == []
        async with registry.subscribe("c", after=2) as subscription:
            assert [event.seq async for event in subscription] == [3]


# -- exception attributes, as raised by the registry --------------------------------


async def test_run_not_found_carries_the_conversation_and_run_asked_for(autojump_clock):
    async with open_chat_run_registry() as registry:
        with pytest.raises(RunNotFound) as caught:
            registry.push_frame("nobody", {})
        assert (caught.value.conversation_id, caught.value.run_id) == ("nobody", None)
        assert "'nobody'" in str(caught.value)

        registry.try_start("c", park)
        with pytest.raises(RunNotFound) as caught:
            async with registry.subscribe("c", run_id="r-old"):
                pass  # pragma: no cover
        assert (caught.value.conversation_id, caught.value.run_id) == ("c", "r-old")
        assert "'r-old'" in str(caught.value) and "'c'" in str(caught.value)


async def test_run_already_active_carries_the_conversation_and_the_active_run(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        with pytest.raises(RunAlreadyActive) as caught:
            registry.try_start("c", park)
        assert caught.value.conversation_id == "c"
        assert caught.value.run_id == run.run_id
        assert run.run_id in str(caught.value)


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_run_terminated_carries_the_run_and_its_terminal_status(autojump_clock, status):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.update(status)
        for attempt in (
            lambda: run.push_frame({}),
            lambda: run.update("running"),
            lambda: registry.push_frame("c", {}),
            lambda: registry.update("c", "running"),
        ):
            with pytest.raises(RunTerminated) as caught:
                attempt()
            error = caught.value
            assert (error.conversation_id, error.run_id) == ("c", run.run_id)
            assert error.status is ChatRunStatus(status)
            assert f"({status})" in str(error)


async def test_subscriber_lagged_carries_the_run_and_the_resume_point(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(subscriber_buffer=2)) as registry:
        run = registry.try_start("c", park)
        run.push_frame({"n": 1})
        async with registry.subscribe("c", after=1) as subscription:
            for n in range(2, 6):
                run.push_frame({"n": n})  # the third queued frame overflows
            seqs = []
            with pytest.raises(SubscriberLagged) as caught:
                async for event in subscription:
                    seqs.append(event.seq)
        assert seqs == [2, 3]
        lag = caught.value
        assert (lag.conversation_id, lag.run_id, lag.resume_after) == ("c", run.run_id, 3)
        assert "after=3" in str(lag)
        assert registry.stats().lagged_subscribers == 1


async def test_reading_a_closed_subscription_says_so(autojump_clock):
    async with open_chat_run_registry() as registry:
        finished_run(registry, "c", frames=2)
        async with registry.subscribe("c") as subscription:
            assert (await subscription.__anext__()).seq == 1
        with pytest.raises(trio.ClosedResourceError, match=r"^this subscription was closed$"):
            await subscription.__anext__()


# -- field type checks, through every method ----------------------------------------

BAD_VALUES = [3, b"bytes", ["a"], ChatRunStatus]


def _calls(registry, run, method, field, value):
    if method == "push_frame":
        return [
            lambda: run.push_frame({"n": 1}, **{field: value}),
            lambda: registry.push_frame("c", {"n": 1}, **{field: value}),
        ]
    return [
        lambda: run.update("waiting_hitl", **{field: value}),
        lambda: registry.update("c", "waiting_hitl", **{field: value}),
    ]


@pytest.mark.parametrize("method", ["push_frame", "update"])
@pytest.mark.parametrize("field", ["current_tool", "error"])
@pytest.mark.parametrize("value", BAD_VALUES)
async def test_a_non_str_field_is_a_type_error_and_changes_nothing(
    autojump_clock, method, field, value
):
    """``current_tool`` and ``error`` are ``str | None | UNSET`` on push_frame and
    update, through the handle and through the registry alike."""
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.push_frame({"n": 0}, current_tool="search", error="e0")
        before = run.record
        for call in _calls(registry, run, method, field, value):
            message = f"^{field} must be a str, None or UNSET, not "
            with pytest.raises(TypeError, match=message) as caught:
                call()
            assert str(caught.value).endswith(repr(value))
            assert run.record == before
        assert registry.stats().frames_pushed == 1


@pytest.mark.parametrize("method", ["push_frame", "update"])
async def test_none_clears_and_unset_keeps_each_field(autojump_clock, method):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.push_frame({"n": 0}, current_tool="search", error="e0")
        for field in ("current_tool", "error"):
            for call in _calls(registry, run, method, field, UNSET):
                call()
                assert (run.record.current_tool, run.record.last_error) == ("search", "e0")
        for call in _calls(registry, run, method, "current_tool", None):
            call()
            assert (run.record.current_tool, run.record.last_error) == (None, "e0")
        for call in _calls(registry, run, method, "error", "e1"):
            call()
            assert run.record.last_error == "e1"


# -- sweeps on the mutation path ----------------------------------------------------


async def test_starting_a_run_sweeps_due_terminal_runs(autojump_clock):
    """A run started over an expired one of the same conversation first evicts it
    (counted in ``evicted_ttl``); replacing a run still retained is not an eviction."""
    config = RegistryConfig(terminal_retention=10)
    async with open_chat_run_registry(config) as registry:
        finished_run(registry, "c")
        finished_run(registry, "kept")
        await trio.sleep(10)
        registry.try_start("c", park)
        stats = registry.stats()
        assert (stats.evicted_ttl, stats.retained_terminal, stats.active) == (2, 0, 1)

        registry.interrupt("c")
        await trio.sleep(1)
        registry.try_start("c", park)  # replaces a retained run: not an eviction
        assert registry.stats().evicted_ttl == 2


async def test_starting_a_run_sweeps_other_conversations_due_at_that_instant(autojump_clock):
    config = RegistryConfig(terminal_retention=10)
    async with open_chat_run_registry(config) as registry:
        old = finished_run(registry, "old")
        await trio.sleep(10)
        run = registry.try_start("new", park)
        # No read came between: the start itself evicted "old".
        assert registry.get("old") is None
        assert registry.stats().evicted_ttl == 1
        assert old.record.status is ChatRunStatus.COMPLETED
        assert run.record.status is ChatRunStatus.RUNNING


async def test_a_run_ends_exactly_at_its_retention(autojump_clock):
    config = RegistryConfig(terminal_retention=5)
    async with open_chat_run_registry(config) as registry:
        finished_run(registry, "c")
        await trio.sleep(5 - 1e-6)
        assert registry.get("c") is not None
        await trio.sleep(1e-6)
        assert registry.get("c") is None


async def test_the_lru_cap_keeps_exactly_max_retained_terminal(autojump_clock):
    config = RegistryConfig(max_retained_terminal=2, terminal_retention=math.inf)
    async with open_chat_run_registry(config) as registry:
        for n in range(2):
            finished_run(registry, f"c{n}")
            await trio.sleep(1)
        assert registry.stats().retained_terminal == 2
        assert registry.stats().evicted_lru == 0
        finished_run(registry, "c2")
        assert [r.conversation_id for r in registry.list()] == ["c2", "c1"]
        assert registry.stats().evicted_lru == 1


async def test_zero_retained_terminal_evicts_every_run_as_it_ends(autojump_clock):
    async with open_chat_run_registry(RegistryConfig(max_retained_terminal=0)) as registry:
        run = registry.try_start("c", park)
        run.update("completed")
        assert registry.get("c") is None
        assert registry.stats().evicted_lru == 1


# -- the record of producers still finishing -------------------------------------------


def _states_of(run_id):
    gc.collect()
    return [
        obj
        for obj in gc.get_objects()
        if type(obj).__name__ == "RunState" and getattr(obj, "run_id", None) == run_id
    ]


@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_a_finished_producer_leaves_no_trace_once_its_run_is_replaced(
    autojump_clock, monkeypatch, ending
):
    """Memory stays bounded: a producer that ended its run and then exited (by
    returning or raising) is forgotten, so replacing the run frees it."""
    # A captured log record would keep the traceback, and with it the run, alive.
    monkeypatch.setattr(logging.getLogger("trio_chatruns"), "disabled", True)
    finishing = trio.Event()

    async def producer(run):
        run.update("completed")
        finishing.set()
        await trio.sleep(1)  # e.g. saving a transcript after the last frame
        if ending == "raises":
            raise RuntimeError("save failed")

    config = RegistryConfig(terminal_retention=math.inf)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", producer)
        old_id = run.run_id
        await finishing.wait()
        await trio.sleep(2)
        del run
        assert len(_states_of(old_id)) == 1  # still retained
        registry.try_start("c", park)
        assert _states_of(old_id) == []


# -- shutdown ------------------------------------------------------------------------


async def test_closing_cancels_a_finishing_producer_that_no_deadline_would_stop(
    autojump_clock,
):
    """With ``terminal_retention=inf`` the finishing producer has no deadline: only
    the registry closing (which cancels its nursery) can stop it."""
    stopped_at = []

    async def producer(run):
        run.update("completed")
        try:
            await trio.sleep_forever()
        finally:
            stopped_at.append(trio.current_time())

    config = RegistryConfig(terminal_retention=math.inf)
    start = trio.current_time()
    async with open_chat_run_registry(config) as registry:
        registry.try_start("c", producer)
        await trio.sleep(7)
    assert stopped_at == [start + 7]


# -- what a failure leaves behind ------------------------------------------------------


async def test_a_group_failure_is_described_leaf_by_leaf(autojump_clock):
    """``last_error`` of a producer that raised a group: each leaf's
    ``"Type: message"``, joined by ``"; "``."""

    async def producer(run):
        async def fails(error):
            raise error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails, ValueError("bad tool output"))
            nursery.start_soon(fails, KeyError("k"))

    async with open_chat_run_registry() as registry:
        record = await registry.try_start("c", producer).wait()
    assert record.status is ChatRunStatus.FAILED
    assert record.last_error in (
        "ValueError: bad tool output; KeyError: 'k'",
        "KeyError: 'k'; ValueError: bad tool output",
    )


async def test_a_failing_producer_is_logged_with_its_run_and_conversation(autojump_clock, caplog):
    async def producer(run):
        raise RuntimeError("model down")

    async with open_chat_run_registry() as registry:
        run = registry.try_start("conv-1", producer)
        await run.wait()
    (record,) = [r for r in caplog.records if r.name == "trio_chatruns"]
    assert record.levelname == "ERROR"
    assert record.getMessage() == f"producer of run {run.run_id} (conversation 'conv-1') raised"
    assert isinstance(record.exc_info[1], RuntimeError)


def test_run_terminated_names_a_plain_string_status_too():
    """Errors rebuilt from their attributes (pickling) may hold the status as a str."""
    assert str(RunTerminated("c", "r1", ChatRunStatus.FAILED)).endswith("(failed)")
    assert str(RunTerminated("c", "r1", "failed")).endswith("(failed)")


def test_an_unknown_status_is_refused_with_the_valid_names():
    with pytest.raises(ValueError) as caught:
        ChatRunStatus.coerce("done")
    names = ", ".join(repr(status.value) for status in ChatRunStatus)
    assert "'running', 'waiting_approval', 'waiting_hitl', 'completed'" in names
    assert str(caught.value) == f"unknown status 'done'; expected one of {names}"
