"""Byte budgets: ``max_bytes_per_run``, ``max_retained_bytes``, ``frame_size``
(API.md "Byte budgets")."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_chatruns import (
    ChatRunStatus,
    RegistryConfig,
    ReplayGap,
    default_frame_size,
    open_chat_run_registry,
)

from helpers import park


def test_default_frame_size_measures_bytes_text_and_compact_json():
    assert default_frame_size(b"abc") == 3
    assert default_frame_size(bytearray(5)) == 5
    assert default_frame_size("abc") == 3
    assert default_frame_size("é€") == 5  # UTF-8: 2 + 3 bytes
    assert default_frame_size({"type": "delta", "text": "hi"}) == len(
        '{"type":"delta","text":"hi"}'
    )
    assert default_frame_size({"text": "é"}) == len('{"text":"é"}'.encode())
    assert default_frame_size([1, None, True]) == len("[1,null,true]")
    with pytest.raises(TypeError):
        default_frame_size(object())


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=10,
    )
)
def test_default_frame_size_is_the_utf8_length_of_compact_json(frame):
    if isinstance(frame, str):
        expected = len(frame.encode("utf-8", "surrogatepass"))
    else:
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        expected = len(text.encode("utf-8", "surrogatepass"))
    assert default_frame_size(frame) == expected


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_bytes_per_run", -1),
        ("max_bytes_per_run", 1.5),
        ("max_bytes_per_run", True),
        ("max_retained_bytes", -1),
        ("max_retained_bytes", "10"),
        ("frame_size", 3),
    ],
)
def test_budget_settings_are_validated(field, bad):
    with pytest.raises((TypeError, ValueError), match=field):
        RegistryConfig(**{field: bad})


async def test_nothing_is_measured_without_a_budget(autojump_clock):
    calls = []

    def size(frame) -> int:  # pragma: no cover - must not be called
        calls.append(frame)
        return 1

    async with open_chat_run_registry(RegistryConfig(frame_size=size)) as registry:
        run = registry.try_start("c", park)
        run.push_frame(object())  # not even JSON-serialisable: never measured
        assert registry.stats().buffered_bytes is None
        run.interrupt()
    assert calls == []


async def test_byte_trimming_gives_replay_gap_with_the_right_available_from(autojump_clock):
    config = RegistryConfig(max_bytes_per_run=10, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        for frame in ("aaaa", "bbbb", "cccc"):  # 12 bytes > 10: "aaaa" goes
            run.push_frame(frame)
        assert [e.frame for e in registry.events("c")] == ["bbbb", "cccc"]
        assert registry.stats().buffered_bytes == 8
        with pytest.raises(ReplayGap) as info:
            async with registry.subscribe("c", after=0):
                pass  # pragma: no cover
        assert (info.value.after, info.value.available_from) == (0, 2)
        async with registry.subscribe("c", after=1) as subscription:  # accepting the gap
            run.push_frame("d", status="completed")
            assert [e.seq async for e in subscription] == [2, 3, 4]


async def test_a_frame_larger_than_the_budget_is_kept_alone(autojump_clock):
    config = RegistryConfig(max_bytes_per_run=10, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        run.push_frame("small")
        run.push_frame("x" * 100)
        assert [e.seq for e in registry.events("c")] == [2]
        assert registry.stats().buffered_bytes == 100
        run.push_frame("tiny")  # the big one goes once a newer frame arrives
        assert [e.frame for e in registry.events("c")] == ["tiny"]
        run.interrupt()


async def test_the_count_limit_still_applies_with_a_byte_budget(autojump_clock):
    config = RegistryConfig(max_events_per_run=2, max_bytes_per_run=1000, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        for frame in ("a", "b", "c"):
            run.push_frame(frame)
        assert [e.frame for e in registry.events("c")] == ["b", "c"]
        assert registry.stats().buffered_bytes == 2
        run.interrupt()


async def test_a_bad_frame_size_refuses_the_push_and_changes_nothing(autojump_clock):
    results = iter([-1, "3", 2.0])

    def size(frame):
        if frame == {"type": "interrupted"}:
            raise RuntimeError("our own frame must end the run anyway")
        return next(results)

    config = RegistryConfig(max_bytes_per_run=100, frame_size=size)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        with pytest.raises(ValueError, match="frame_size"):
            run.push_frame("x")
        with pytest.raises(TypeError, match="frame_size"):
            run.push_frame("x")
        with pytest.raises(TypeError, match="frame_size"):
            run.push_frame("x")
        assert run.record.latest_seq == 0
        assert registry.stats().frames_pushed == 0
        assert registry.stats().buffered_bytes == 0
        run.interrupt()
        assert run.record.status is ChatRunStatus.CANCELLED
        assert registry.stats().buffered_bytes == len('{"type":"interrupted"}')

    async with open_chat_run_registry(RegistryConfig(max_bytes_per_run=100)) as registry:
        registry.try_start("c", park)
        with pytest.raises(TypeError):  # the default: a frame that is not JSON
            registry.push_frame("c", object())
        assert registry.get("c").latest_seq == 0


async def test_max_retained_bytes_evicts_the_oldest_ended_terminal_runs(autojump_clock):
    config = RegistryConfig(max_retained_bytes=10, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        for cid in ("a", "b", "c"):
            run = registry.try_start(cid, park)
            run.push_frame("xxxx", status="completed")  # 4 bytes each
        active = registry.try_start("d", park)
        active.push_frame("y" * 50)  # active runs never count and are never evicted
        stats = registry.stats()
        assert (stats.retained_terminal, stats.evicted_bytes) == (2, 1)
        assert registry.get("a") is None
        assert registry.get("b") is not None
        assert stats.buffered_bytes == 8 + 50
        big = registry.try_start("e", park)
        big.push_frame("z" * 11, status="completed")  # alone over the budget: evicted too
        stats = registry.stats()
        assert stats.evicted_bytes == 4
        assert stats.retained_terminal == 0
        assert stats.buffered_bytes == 50
        assert (stats.evicted_ttl, stats.evicted_lru) == (0, 0)
        active.interrupt()


async def test_queued_runs_are_never_evicted_by_bytes(autojump_clock):
    config = RegistryConfig(max_retained_bytes=0, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        first = registry.try_start("c", park)
        queued = registry.try_start("c", park, if_active="enqueue")
        queued.push_frame("waiting")
        first.push_frame("x", status="completed")  # replaced by the queued run, not evicted
        assert registry.get("c").run_id == queued.run_id
        stats = registry.stats()
        assert (stats.evicted_bytes, stats.buffered_bytes) == (0, 7)
        queued.interrupt()
        await queued.wait()
        assert registry.get("c") is None  # evicted when it ended: 0 bytes allowed
        assert registry.stats().evicted_bytes == 1
        assert registry.stats().buffered_bytes == 0


async def test_buffered_bytes_follows_replacement_and_eviction(autojump_clock):
    config = RegistryConfig(max_bytes_per_run=1000, terminal_retention=10, frame_size=len)
    async with open_chat_run_registry(config) as registry:
        run = registry.try_start("c", park)
        run.push_frame("abc", status="completed")
        assert registry.stats().buffered_bytes == 3
        again = registry.try_start("c", park)  # replaces the terminal run
        assert registry.stats().buffered_bytes == 0
        again.push_frame("abcd", status="completed")
        await trio.sleep(11)
        assert registry.stats().buffered_bytes == 0  # evicted by TTL


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=40),
    budget=st.integers(0, 60),
    max_events=st.integers(1, 10),
)
def test_byte_trimming_keeps_the_newest_suffix_within_budget(sizes, budget, max_events):
    """The buffer is always the longest run of newest frames that fits both
    limits (at least the newest frame), and ``buffered_bytes`` is its sum."""

    async def main() -> None:
        config = RegistryConfig(
            max_events_per_run=max_events, max_bytes_per_run=budget, frame_size=len
        )
        async with open_chat_run_registry(config) as registry:
            run = registry.try_start("c", park)
            pushed: list[str] = []
            for size in sizes:
                frame = "x" * size
                pushed.append(frame)
                run.push_frame(frame)
                kept = [e.frame for e in registry.events("c")]
                expected = [pushed[-1]]
                for older in reversed(pushed[:-1]):
                    if len(expected) == max_events:
                        break
                    if sum(map(len, expected)) + len(older) > budget:
                        break
                    expected.insert(0, older)
                assert kept == expected
                assert registry.stats().buffered_bytes == sum(map(len, kept))
            run.interrupt()

    trio.run(main)
