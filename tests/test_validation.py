"""Bad input: a clear exception naming the bad value, and the registry unchanged."""

from __future__ import annotations

import functools
import json
import math

import attrs
import pytest
import trio

from trio_chatruns import (
    MAX_EVENTS_PER_RUN,
    MAX_RETAINED_TERMINAL,
    TERMINAL_RETENTION,
    UNSET,
    ChatRun,
    ChatRunError,
    ChatRunRegistry,
    ChatRunStatus,
    RegistryConfig,
    ReplayGap,
    RunAlreadyActive,
    RunNotFound,
    RunTerminated,
    SubscriberLagged,
    open_chat_run_registry,
)

from helpers import park


def test_defaults_come_from_the_original_server():
    assert (MAX_EVENTS_PER_RUN, TERMINAL_RETENTION, MAX_RETAINED_TERMINAL) == (1000, 300.0, 256)
    config = RegistryConfig()
    assert config.max_events_per_run == MAX_EVENTS_PER_RUN
    assert config.terminal_retention == TERMINAL_RETENTION
    assert config.max_retained_terminal == MAX_RETAINED_TERMINAL
    assert config.subscriber_buffer == 256
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.subscriber_buffer = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "shown"),
    [
        ({"max_events_per_run": 0}, ValueError, "0"),
        ({"max_events_per_run": -5}, ValueError, "-5"),
        ({"max_events_per_run": 2.5}, TypeError, "2.5"),
        ({"max_events_per_run": True}, TypeError, "True"),
        ({"terminal_retention": -1}, ValueError, "-1"),
        ({"terminal_retention": math.nan}, ValueError, "nan"),
        ({"terminal_retention": "300"}, TypeError, "'300'"),
        ({"max_retained_terminal": -1}, ValueError, "-1"),
        ({"max_retained_terminal": None}, TypeError, "None"),
        ({"subscriber_buffer": 0}, ValueError, "subscriber_buffer"),
    ],
)
def test_config_rejects_out_of_range_values(kwargs, error, shown):
    with pytest.raises(error, match=shown):
        RegistryConfig(**kwargs)


def test_config_accepts_the_edges():
    config = RegistryConfig(
        max_events_per_run=1, terminal_retention=0, max_retained_terminal=0, subscriber_buffer=1
    )
    assert config.terminal_retention == 0
    assert RegistryConfig(terminal_retention=math.inf).terminal_retention == math.inf


async def test_open_rejects_a_config_of_the_wrong_type(autojump_clock):
    with pytest.raises(TypeError, match="max_events_per_run"):
        async with open_chat_run_registry({"max_events_per_run": 5}):  # type: ignore[arg-type]
            pass  # pragma: no cover


def test_handles_have_no_public_constructor():
    with pytest.raises(TypeError, match="no public constructor"):
        ChatRun()
    with pytest.raises(TypeError, match="no public constructor"):
        ChatRunRegistry()


def test_exception_hierarchy():
    for cls in (RunAlreadyActive, RunNotFound, RunTerminated, ReplayGap, SubscriberLagged):
        assert issubclass(cls, ChatRunError)
    assert issubclass(ChatRunError, Exception)
    assert issubclass(RunNotFound, LookupError)


def test_status_is_a_json_friendly_str_enum():
    assert [s.value for s in ChatRunStatus] == [
        "queued",
        "running",
        "waiting_approval",
        "waiting_hitl",
        "completed",
        "failed",
        "cancelled",
    ]
    assert [s for s in ChatRunStatus if s.is_active] == [
        ChatRunStatus.QUEUED,
        ChatRunStatus.RUNNING,
        ChatRunStatus.WAITING_APPROVAL,
        ChatRunStatus.WAITING_HITL,
    ]
    assert all(s.is_terminal != s.is_active for s in ChatRunStatus)
    assert json.dumps(ChatRunStatus.FAILED) == '"failed"'
    assert repr(UNSET) == "UNSET"


async def test_records_serialise_to_json(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        run.push_frame({"type": "token", "text": "hi"}, current_tool="search")
        record = json.loads(json.dumps(attrs.asdict(registry.get("c"))))
        assert record["status"] == "running"
        assert record["current_tool"] == "search"
        assert record["terminated_at"] is None
        event = json.loads(json.dumps(attrs.asdict(registry.events("c")[0])))
        assert event["frame"] == {"type": "token", "text": "hi"}
        assert event["seq"] == 1
        assert json.loads(json.dumps(attrs.asdict(registry.stats())))["active"] == 1
        run.interrupt()


@pytest.mark.parametrize(
    ("conversation_id", "error"),
    [("", ValueError), (None, TypeError), (42, TypeError), (b"c", TypeError)],
)
async def test_bad_conversation_ids_are_refused_everywhere(autojump_clock, conversation_id, error):
    async with open_chat_run_registry() as registry:
        with pytest.raises(error, match=repr(conversation_id).replace("(", r"\(")):
            registry.try_start(conversation_id, park)
        with pytest.raises(error):
            registry.get(conversation_id)
        with pytest.raises(error):
            registry.push_frame(conversation_id, "x")
        with pytest.raises(error):
            registry.interrupt(conversation_id)
        with pytest.raises(error):
            registry.events(conversation_id)
        with pytest.raises(error):
            async with registry.subscribe(conversation_id):
                pass  # pragma: no cover
        assert registry.list() == []
        assert registry.stats().active == 0


def not_async(run):
    return None


class AsyncCallable:
    async def __call__(self, run):
        await trio.sleep_forever()


async def test_producer_must_be_an_async_function(autojump_clock):
    async with open_chat_run_registry() as registry:
        coroutine = park(None)  # a coroutine object, not a function
        try:
            for bad in (not_async, None, "park", coroutine):
                with pytest.raises(TypeError, match="async function"):
                    registry.try_start("c", bad)
        finally:
            coroutine.close()
        assert registry.get("c") is None
        # Bound async callables and partials are fine.
        registry.try_start("obj", AsyncCallable()).interrupt()
        registry.try_start("partial", functools.partial(park)).interrupt()


async def test_bad_status_or_fields_change_nothing(autojump_clock):
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", park)
        before = run.record
        with pytest.raises(ValueError, match="'done'"):
            run.push_frame("x", status="done")
        with pytest.raises(TypeError, match="42"):
            run.push_frame("x", status=42)
        with pytest.raises(TypeError, match="current_tool"):
            run.push_frame("x", current_tool=7)
        with pytest.raises(TypeError, match="error"):
            run.update("running", error=RuntimeError("x"))
        assert run.record == before
        assert registry.events("c") == []
        assert registry.stats().frames_pushed == 0
        with pytest.raises(TypeError, match="after"):
            registry.events("c", after=1.5)
        with pytest.raises(ValueError, match="-3"):
            registry.events("c", after=-3)
        with pytest.raises(TypeError, match="run_id"):
            async with registry.subscribe("c", run_id=5):
                pass  # pragma: no cover
        assert registry.stats().subscribers == 0
        run.interrupt()


def test_errors_pickle_and_copy_with_their_attributes():
    import copy
    import pickle

    errors = [
        ChatRunError("plain"),
        RunAlreadyActive("c", "r1"),
        RunNotFound("c"),
        RunNotFound("c", "r2"),
        RunTerminated("c", "r1", ChatRunStatus.FAILED),
        ReplayGap("c", "r1", 3, 8),
        SubscriberLagged("c", "r1", 17),
    ]
    for error in errors:
        for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
            assert type(clone) is type(error)
            assert str(clone) == str(error)
            assert vars(clone) == vars(error)


def test_a_retention_too_large_for_a_float_is_a_value_error():
    with pytest.raises(ValueError, match=r"math\.inf"):
        RegistryConfig(terminal_retention=10**400)
    assert RegistryConfig(terminal_retention=10).terminal_retention == 10.0


async def test_rejected_calls_do_not_even_sweep(autojump_clock):
    config = RegistryConfig(terminal_retention=5)
    async with open_chat_run_registry(config) as registry:
        registry.try_start("active", park)
        registry.try_start("done", park).update("completed")
        autojump_clock.jump(10)  # "done" is due, but no call has swept yet
        with pytest.raises(TypeError):
            registry.get(123)
        with pytest.raises(RunAlreadyActive):
            registry.try_start("active", park)
        with pytest.raises(TypeError, match="active_only"):
            registry.list(active_only="yes")
        assert registry._retention.__len__() == 1  # still held: nothing changed
        assert registry.stats().evicted_ttl == 1  # the first valid read sweeps
        registry.interrupt("active")
