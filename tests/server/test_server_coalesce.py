"""Coalescing in the stream loop (``streams._coalesce``): fewer writes, the same messages.

A stream whose run's frames arrive faster than it writes lets a few
scheduling rounds pass before writing, so the frames go out together; a
stream whose frames come slower than it writes sends each as soon as it is
pushed. Either way every frame goes out once, in order, then ``end``; on
the wire the bytes are the documented SSE sequence; cancellation propagates
from inside the wait.
"""

from __future__ import annotations

import re

import httpx
import trio
import trio.testing

from trio_chatruns import ChatRunStatus, open_chat_run_registry
from trio_chatruns.server import ScriptedModel
from trio_chatruns.server.sse import Cursor
from trio_chatruns.server.state import ServerState
from trio_chatruns.server.streams import COALESCE_ROUNDS, StreamRefusal, pump, resolve_stream
from trio_chatruns.server.wire import sse_event

FRAMES = 300


class _Sink:
    """Records each batch; every write takes one scheduling round, as a socket write does."""

    coalesce = True

    def __init__(self):
        self.batches = []

    def event(self, event):
        return ("event", event.seq)

    def gap(self, first, last, run_id):
        return ("gap", first, last)

    def ping(self):
        return ("ping",)

    def end(self, record, reason):
        return ("end", reason)

    def lagged(self, resume_after, run_id):
        return ("lagged", resume_after)

    async def send(self, messages, *, final):
        self.batches.append(list(messages))
        await trio.lowlevel.checkpoint()


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


async def test_frames_faster_than_writes_go_out_together_each_once_in_order():
    sink = _Sink()
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
    sink = _Sink()
    record = await _stream(slow_producer, sink)
    # One write per frame as it is pushed (no waiting for more); the last
    # token and done are pushed together and go out with end.
    last = record.latest_seq
    assert sink.batches[:-1] == [[("event", seq)] for seq in range(1, last - 1)]
    assert sink.batches[-1] == [("event", last - 1), ("event", last), ("end", "completed")]


async def test_cancellation_inside_the_wait_for_more_propagates():
    class Cancelling(_Sink):
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
