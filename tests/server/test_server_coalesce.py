"""Coalescing in the stream loop (``streams._coalesce``): fewer writes, the same messages.

A stream whose run's frames arrive faster than it writes (and faster than
one per ``COALESCE_MAX_DELAY``) lets a few
scheduling rounds pass before writing, so the frames go out together; a
stream whose frames come slower than it writes sends each as soon as it is
pushed. Either way every frame goes out once, in order, then ``end``; on
the wire the bytes are the documented SSE sequence; cancellation propagates
from inside the wait.
"""

from __future__ import annotations

import itertools
import re

import httpx
import trio
import trio.testing

from trio_chatruns import ChatRunRecord, ChatRunStatus, open_chat_run_registry
from trio_chatruns.server import ScriptedModel
from trio_chatruns.server.sse import Cursor
from trio_chatruns.server.state import ServerState
from trio_chatruns.server.streams import (
    COALESCE_MAX_DELAY,
    COALESCE_ROUNDS,
    StreamRefusal,
    _coalesce,
    pump,
    resolve_stream,
)
from trio_chatruns.server.wire import sse_event

from helpers import RecordingSink

FRAMES = 300


def fast_producer(go):
    async def produce(run):
        await go.wait()
        for i in range(FRAMES):
            await trio.lowlevel.checkpoint()  # one frame per scheduling round
            run.push_frame({"type": "token", "text": str(i)})
        run.push_frame({"type": "done"}, status=ChatRunStatus.COMPLETED)

    return produce


def slow_producer(go):
    async def produce(run):
        await go.wait()
        for i in range(20):
            await trio.sleep(0.05)  # slower than any write
            run.push_frame({"type": "token", "text": str(i)})
        run.push_frame({"type": "done"}, status=ChatRunStatus.COMPLETED)

    return produce


async def _stream(make_producer, sink):
    go = trio.Event()
    async with open_chat_run_registry() as registry:
        server = ServerState(registry, ScriptedModel())
        registry.try_start("c", make_producer(go))
        plan = await resolve_stream(server, "c", Cursor(run_id=None, after=0), False)
        assert not isinstance(plan, StreamRefusal)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, server, plan, sink)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
        return registry.get("c")


def _flat(batches):
    return [m for batch in batches for m in batch]


async def test_frames_faster_than_writes_go_out_together_each_once_in_order(mock_clock):
    # The mock clock stands still: only the round limit ends a gathering.
    sink = RecordingSink()
    record = await _stream(fast_producer, sink)
    messages = _flat(sink.batches)
    assert messages == [("event", seq) for seq in range(1, record.latest_seq + 1)] + [
        ("end", "completed")
    ]
    # Far fewer writes than frames, none larger than the rounds allow
    # (the frames of one round, plus those of the write's own round).
    assert len(sink.batches) < record.latest_seq / 3
    assert max(len(b) for b in sink.batches[:-1]) <= 2 * (COALESCE_ROUNDS + 2)


async def test_frames_slower_than_writes_go_out_one_by_one(autojump_clock):
    sink = RecordingSink()
    record = await _stream(slow_producer, sink)
    # One write per frame as it is pushed (no waiting for more); the last
    # token and done are pushed together and go out with end.
    last = record.latest_seq
    assert sink.batches[:-1] == [[("event", seq)] for seq in range(1, last - 1)]
    assert sink.batches[-1] == [("event", last - 1), ("event", last), ("end", "completed")]


async def test_cancellation_inside_the_wait_for_more_propagates():
    class Cancelling(RecordingSink):
        async def send(self, messages, *, final):
            await super().send(messages, final=final)
            if len(self.batches) == 2:
                scope.cancel()  # the stream is now gathering frames: cancel it there

    sink = Cancelling()
    go = trio.Event()
    async with open_chat_run_registry() as registry:
        server = ServerState(registry, ScriptedModel())
        registry.try_start("c", fast_producer(go))
        plan = await resolve_stream(server, "c", Cursor(run_id=None, after=0), False)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, server, plan, sink)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
        assert scope.cancelled_caught
        assert len(sink.batches) == 2
        registry.interrupt("c")


async def test_a_fast_run_on_the_wire_is_the_documented_sequence(start_server):
    go = trio.Event()
    running = await start_server(model=_Model(go))
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/c", json={"prompt": "p"})).raise_for_status()
        async with client.stream("GET", "/v1/chat/runs/c/stream") as stream:
            chunks = stream.aiter_bytes()
            first = await chunks.__anext__()  # attached: the status frame arrived
            go.set()
            body = first + b"".join([chunk async for chunk in chunks])
    registry = running.server.registry
    record = registry.get("c")
    assert record.latest_seq == FRAMES + 2
    async with registry.subscribe("c") as subscription:
        events = [e async for e in subscription]
    text = body.decode()
    end = text[text.index("event: end\n") :]
    # retry, then every frame exactly as /events and WebSocket encode it, then end.
    assert body == (b"retry: 1000\n" + b"".join(sse_event(e) for e in events) + end.encode())
    assert re.fullmatch(rf"event: end\nid: {record.run_id}:{FRAMES + 2}\ndata: .*\n\n", end)


class _Model:
    """A model pushing a status frame, then (after ``go``) FRAMES frames as fast as it can."""

    def __init__(self, go):
        self.go = go

    async def __call__(self, run, request):
        run.push_frame({"type": "status", "status": "running"})
        await fast_producer(self.go)(run)


async def test_the_end_message_is_encoded_once_per_record_and_reads_as_documented():
    from trio_chatruns.server.sse import encode_sse, format_cursor, record_to_json, to_json
    from trio_chatruns.server.wire import sse_end

    async with open_chat_run_registry() as registry:
        for cid in ("a", "b"):
            run = registry.try_start(cid, slow_producer(trio.Event()))
            registry.interrupt(cid)
            await run.wait()
        a, b = registry.get("a"), registry.get("b")
    for record in (a, b):
        expected = encode_sse(
            to_json({**record_to_json(record), "reason": "interrupted"}),
            event="end",
            id=format_cursor(record.run_id, record.latest_seq),
        )
        assert sse_end(record, "interrupted") == expected
        # A thousand streams of one run: the same message, encoded once.
        assert sse_end(record, "interrupted") is sse_end(record, "interrupted")
    assert sse_end(a, "completed") != sse_end(a, "interrupted")
    assert sse_end(None, "gone") == encode_sse(to_json({"reason": "gone"}), event="end")


class _Arriving:
    """A subscription whose run gains ``per_round`` frames each time it is looked at
    after the first look (that is, once per scheduling round of ``_coalesce``)."""

    def __init__(self, queued, per_round, clock=None, step=0.0):
        self.last_seq = 10
        self.latest = 10 + queued
        self.per_round = itertools.cycle(per_round if isinstance(per_round, list) else [per_round])
        self.looks = 0
        self.clock, self.step = clock, step
        self.status = ChatRunStatus.RUNNING

    @property
    def record(self):
        if self.looks:
            self.latest += next(self.per_round)
            if self.clock is not None:
                self.clock.jump(self.step)
        self.looks += 1
        return ChatRunRecord(
            conversation_id="c",
            run_id="r",
            status=self.status,
            started_at=0.0,
            updated_at=0.0,
            terminated_at=None,
            latest_seq=self.latest,
            current_tool=None,
            last_error=None,
        )


async def test_gathering_waits_only_while_frames_keep_coming(mock_clock):
    # Nothing queued: no wait at all, whatever the last gathering found.
    for eager in (True, False):
        sub = _Arriving(queued=0, per_round=1)
        with trio.testing.assert_no_checkpoints():
            assert await _coalesce(sub, eager) is eager
    # Frames keep coming: up to COALESCE_ROUNDS rounds, then write.
    sub = _Arriving(queued=1, per_round=1)
    assert await _coalesce(sub, True) is True
    assert sub.looks == 1 + COALESCE_ROUNDS
    # A producer that misses a round (tasks run in a random order) does not end it.
    sub = _Arriving(queued=1, per_round=[0, 1])
    assert await _coalesce(sub, True) is True
    assert sub.looks == 1 + COALESCE_ROUNDS
    # Two rounds that bring nothing end it, and say not to try next time...
    sub = _Arriving(queued=1, per_round=0)
    assert await _coalesce(sub, True) is False
    assert sub.looks == 3
    # ...so a single queued frame then goes out at once...
    sub = _Arriving(queued=1, per_round=1)
    with trio.testing.assert_no_checkpoints():
        assert await _coalesce(sub, False) is False
    # ...until two or more are queued: the producer outpaces the writes again.
    sub = _Arriving(queued=2, per_round=1)
    assert await _coalesce(sub, False) is True
    assert sub.looks == 1 + COALESCE_ROUNDS


async def test_gathering_holds_frames_back_for_a_bounded_time(mock_clock):
    sub = _Arriving(queued=1, per_round=1, clock=mock_clock, step=COALESCE_MAX_DELAY / 2.5)
    assert await _coalesce(sub, True) is True
    assert sub.looks == 1 + 3  # the third round is past the limit


async def test_gathering_needs_frames_faster_than_one_per_max_delay(mock_clock):
    # ``since``: how long ago the last write began, so the queued frames came
    # during it. Slower than one per COALESCE_MAX_DELAY (a stream that waited
    # its turn among a hundred writing ones): they go out at once, with no
    # round waited, whatever the last gathering found.
    for queued, eager in ((1, True), (2, True), (3, False)):
        sub = _Arriving(queued=queued, per_round=1)
        with trio.testing.assert_no_checkpoints():
            since = queued * COALESCE_MAX_DELAY * 1.01
            assert await _coalesce(sub, eager, since=since) is eager
    # One per COALESCE_MAX_DELAY or faster: it gathers.
    sub = _Arriving(queued=2, per_round=1)
    assert await _coalesce(sub, True, since=2 * COALESCE_MAX_DELAY) is True
    assert sub.looks == 1 + COALESCE_ROUNDS


async def test_the_stream_passes_how_long_ago_its_last_write_began(autojump_clock, monkeypatch):
    from trio_chatruns.server import streams

    seen = []
    real = streams._coalesce

    async def recording(subscription, eager, limit=streams.MAX_BATCH, since=0.0):
        seen.append(since)
        return await real(subscription, eager, limit, since)

    monkeypatch.setattr(streams, "_coalesce", recording)

    class SlowWrites(RecordingSink):
        async def send(self, messages, *, final):
            self.sent.append((list(messages), final))
            await trio.sleep(0.005)

    def every_2_ms(go):
        async def produce(run):
            await go.wait()
            for i in range(20):
                await trio.sleep(0.002)
                run.push_frame({"type": "token", "text": str(i)})
            run.push_frame({"type": "done"}, status=ChatRunStatus.COMPLETED)

        return produce

    autojump_clock.jump(1000.0)  # the real clock does not start at 0 either
    sink = SlowWrites()
    await _stream(every_2_ms, sink)
    # After each write: that write's 5 ms (not the time since it ended, nor
    # since the stream began).
    assert len(seen) == len(sink.batches) > 5
    assert seen[0] < 0.005
    assert all(0.0049 < since < 0.006 for since in seen[1:]), seen


async def test_gathering_stops_at_a_full_batch_or_a_finished_run(mock_clock):
    from trio_chatruns.server.streams import MAX_BATCH

    sub = _Arriving(queued=MAX_BATCH, per_round=1)
    with trio.testing.assert_no_checkpoints():
        assert await _coalesce(sub, True) is True
    sub = _Arriving(queued=MAX_BATCH - 1, per_round=1)
    assert await _coalesce(sub, True) is True
    assert sub.looks == 2
    # The limit pump passes (half the subscriber buffer), likewise.
    sub = _Arriving(queued=3, per_round=1)
    assert await _coalesce(sub, True, 4) is True
    assert sub.looks == 2
    # A finished run has no more frames to wait for.
    sub = _Arriving(queued=3, per_round=1)
    sub.status = ChatRunStatus.COMPLETED
    with trio.testing.assert_no_checkpoints():
        assert await _coalesce(sub, True) is True
