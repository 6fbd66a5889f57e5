"""Resumable streams of a run: what SSE and WebSocket have in common.

Both transports (:mod:`.sse_stream`, :mod:`.ws_stream`) resolve the client's
cursor with :func:`resolve_stream` and then run one loop, :func:`pump`, over
``registry.subscribe``, in the task that writes the response (events are
encoded by :mod:`.wire`, once per event):

- replay from the client's cursor, then live events, each sent with its
  ``<run_id>:<seq>`` cursor;
- a cursor whose frames were trimmed gets a *gap* message naming the missing
  range, then continues from the oldest buffered frame;
- when the run is terminal and every frame was sent, an *end* message with the
  final record, then the stream closes;
- a client that reads too slowly is dropped (``SubscriberLagged``): it is told
  where to resume, and the stream closes so it reconnects; the same when the
  run backend cannot reach Redis to subscribe (``BackendUnavailable``).

Every stream ends on its own when its run ends, including when the registry
closes or the server shuts down: there is no asyncio-only drain watcher to
rely on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from .. import ChatRunEvent, ChatRunRecord, ReplayGap, RunNotFound, SubscriberLagged
from .backend import BackendUnavailable
from .config import valid_conversation_id
from .sse import Cursor, parse_cursor, parse_run_id, parse_seq

if TYPE_CHECKING:
    from .backend import RunBackend, StreamSubscription
    from .state import ServerState

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "StreamPlan",
    "StreamRefusal",
    "StreamSink",
    "check_cursor",
    "cursor_from_request",
    "pump",
    "resolve_stream",
]


@attrs.frozen
class StreamPlan:
    """A stream the server agreed to open.

    Attributes:
        conversation_id (str); run_id (str): the run followed (pinned: the
            stream never follows into a restarted run).
        after (int): the cursor to replay from.
        record (ChatRunRecord): the run as it was when the stream was accepted.
        resumed (bool): the client sent a cursor (a reconnect).
    """

    conversation_id: str
    run_id: str
    after: int
    record: ChatRunRecord
    resumed: bool


@attrs.frozen
class StreamRefusal:
    """Why a stream is not opened: an HTTP status and a message.

    ``status == 204`` means "that run is over and you have all of it" (or it is
    no longer held); ``record`` is then its final record when still known.
    """

    status: int
    message: str
    record: ChatRunRecord | None = None


def cursor_from_request(headers: Any, query: Any) -> tuple[Cursor, bool]:
    """Read the client's cursor: ``Last-Event-ID`` first, else ``?after=&run_id=``.

    Both transports read both (a WebSocket client that can set headers may
    send ``Last-Event-ID`` too). Returns ``(cursor, resumed)``; ``resumed`` is
    ``True`` when the client sent any cursor at all.

    Raises:
        ValueError: a malformed header, ``after`` not 1 to 18 ASCII digits, or
            ``run_id`` not 1-128 characters of ``[A-Za-z0-9._:-]``; the message
            is fit for a client.
    """
    last_event_id = headers.get("last-event-id")
    if last_event_id:
        return parse_cursor(last_event_id), True
    after_text = query.get("after")
    run_id_text = query.get("run_id")
    run_id = parse_run_id(run_id_text) if run_id_text else None
    after = parse_seq(after_text) if after_text else 0
    return Cursor(run_id=run_id, after=after), bool(after or run_id)


async def check_cursor(
    backend: RunBackend, conversation_id: str, cursor: Cursor, resumed: bool
) -> ChatRunRecord | StreamRefusal:
    """The answer to ``cursor`` on ``conversation_id``: the run's record, or a refusal.

    The rules shared by the streams and ``GET .../events`` (``docs/server.md``,
    "What the server answers to a cursor"): ``404`` no run and no run id;
    ``204`` a run id that is not the current run (it is over), or a resumed
    cursor at the end of a terminal run (its record attached); ``400`` a seq
    past the run's ``latest_seq``. No checkpoint with the in-memory backend.

    Raises:
        BackendUnavailable: the backend's store cannot be reached (503).
    """
    record = await backend.get(conversation_id)
    if record is None:
        if cursor.run_id is not None:
            return StreamRefusal(204, "run is over and no longer retained")
        return StreamRefusal(404, f"no run for conversation {conversation_id!r}")
    if cursor.run_id is not None and cursor.run_id != record.run_id:
        for queued in await backend.queued(conversation_id):
            if queued.run_id == cursor.run_id:
                # A queued run (if_active=enqueue/interrupt): the stream waits for it.
                record = queued
    if cursor.run_id is not None and cursor.run_id != record.run_id:
        # Only a terminal run is ever replaced, so the run the client followed is over.
        return StreamRefusal(204, "run is over; the conversation has a newer run")
    if cursor.after > record.latest_seq:
        return StreamRefusal(
            400, f"cursor {cursor.after} is past the run's latest seq {record.latest_seq}"
        )
    if record.status.is_terminal and resumed and cursor.after >= record.latest_seq:
        return StreamRefusal(204, "run is over and every frame was delivered", record)
    return record


async def resolve_stream(
    server: ServerState, conversation_id: str, cursor: Cursor, resumed: bool
) -> StreamPlan | StreamRefusal:
    """Decide whether (and from where) to stream ``conversation_id`` to a client.

    No checkpoint with the in-memory backend; a backend that cannot reach its
    store gives a ``503`` refusal. The transports send response headers before
    they subscribe, so the run may change in between; that is safe because the
    plan pins ``run_id`` and :func:`pump` handles ``RunNotFound`` and
    ``ReplayGap`` when it subscribes.
    """
    if not valid_conversation_id(conversation_id):
        return StreamRefusal(400, "invalid conversation id")
    if server.closing:
        return StreamRefusal(503, "server is shutting down")
    try:
        record = await check_cursor(server.backend, conversation_id, cursor, resumed)
    except BackendUnavailable as exc:
        return StreamRefusal(503, exc.message)
    if isinstance(record, StreamRefusal):
        return record
    if server.subscriber_count(record.run_id) >= server.settings.max_subscribers_per_run:
        return StreamRefusal(429, "too many streams open for this run")
    return StreamPlan(conversation_id, record.run_id, cursor.after, record, resumed)


M = TypeVar("M", bytes, str)

MAX_BATCH = 512
"""Most messages a stream sends in one write."""
MAX_BATCH_BYTES = 256 * 1024
"""A write stops taking more messages past this size (large frames)."""
COALESCE_ROUNDS = 8
"""Most scheduling rounds a stream lets pass, while its run's frames keep
arriving, before it writes them (see :func:`_coalesce`)."""
COALESCE_MAX_DELAY = 0.001
"""Seconds (Trio clock) after which a stream stops gathering frames: it holds
them back at most this long plus one scheduling round. Frames that came
more slowly than one per this long are not gathered at all."""


class StreamSink(Protocol[M]):
    """Where :func:`pump` delivers a stream; one implementation per transport.

    The message methods only encode (synchronous, no checkpoint); :meth:`send`
    writes what :func:`pump` collected, as few writes as the transport allows
    (SSE: one body; WebSocket: one message each). ``coalesce`` says whether
    a batch of several messages costs less than as many single ones (true
    for SSE, where a batch is one write): then :func:`pump` waits a few
    scheduling rounds for more when frames arrive faster than it writes
    (and faster than one per :data:`COALESCE_MAX_DELAY`).
    """

    coalesce: bool

    def event(self, event: ChatRunEvent) -> M: ...
    def gap(self, first: int, last: int, run_id: str) -> M: ...
    def ping(self) -> M: ...
    def end(self, record: ChatRunRecord | None, reason: str) -> M: ...
    def lagged(self, resume_after: int, run_id: str) -> M: ...
    async def send(self, messages: list[M], *, final: bool) -> None: ...


async def pump(server: ServerState, plan: StreamPlan, sink: StreamSink[M]) -> None:
    """Deliver ``plan``'s run to ``sink`` until it ends, lags, or is cancelled.

    One task does all of it: it takes whatever events are ready (when they
    come faster than it writes, and faster than one per millisecond, it
    first lets a few scheduling rounds pass
    to gather more: :func:`_coalesce`), sends them in one
    :meth:`StreamSink.send`, and waits only when nothing is; the
    heartbeat is the deadline of that one wait (``heartbeat_interval``
    seconds after the last send), not a timer per event. The last send is
    ``final``: the run's ``end`` (after its last frame, with the reason of
    :meth:`ChatServer.end_reason`) or ``lagged`` (the registry dropped this
    subscriber), with whatever preceded it. Cancellation (client gone,
    :meth:`ChatServer.disconnect_streams`) propagates.

    A cursor whose next frames were trimmed gets exactly one ``sink.gap``,
    however fast the run trims: the gap is sent once the subscription is
    entered (after which the frames are the subscriber's), never before it.
    """
    after = plan.after
    gap_from: int | None = None
    out: list[M] = []
    heartbeat = server.settings.heartbeat_interval
    # Gathering stops well before the subscriber's queue could fill (lag).
    gather = min(MAX_BATCH, max(2, server.backend.config.subscriber_buffer // 2))
    while True:
        try:
            async with server.backend.subscribe(
                plan.conversation_id, after=after, run_id=plan.run_id
            ) as subscription:
                if gap_from is not None:
                    out.append(sink.gap(gap_from, after, plan.run_id))
                await _deliver(subscription, sink, out, heartbeat, gather)
                record: ChatRunRecord | None = subscription.record
        except ReplayGap as gap:
            # Raised on entering, which does not checkpoint: the retry below
            # sees the same buffer and cannot raise again.
            if gap_from is None:
                gap_from = after + 1
            after = gap.available_from - 1
            continue
        except SubscriberLagged as lag:
            server.note_lagged()
            out.append(sink.lagged(lag.resume_after, plan.run_id))
            await sink.send(out, final=True)
            return
        except RunNotFound:
            # Evicted or replaced between accepting the stream and subscribing.
            record = None
        except BackendUnavailable:
            # Redis unreachable on subscribing (nothing of the run was sent):
            # the client resumes from its own cursor, as after a lag.
            out.append(sink.lagged(plan.after, plan.run_id))
            await sink.send(out, final=True)
            return
        out.append(sink.end(record, server.end_reason(record)))
        await sink.send(out, final=True)
        return


async def _deliver(
    subscription: StreamSubscription,
    sink: StreamSink[M],
    out: list[M],
    heartbeat: float,
    gather: int = MAX_BATCH,
) -> None:
    """Send ``subscription``'s events until it ends; ``out`` holds what is not sent yet
    (on return: the last batch, which ``pump`` sends with the ``end`` message).
    ``gather``: most frames queued while gathering (:func:`_coalesce`)."""
    deadline = trio.current_time() + heartbeat
    coalesce = sink.coalesce
    eager = True  # gathering paid off last time (or was not tried yet)
    wrote_at = trio.current_time()
    try:
        while True:
            if not out:
                if coalesce:
                    since = trio.current_time() - wrote_at  # the frames queued came since
                    eager = await _coalesce(subscription, eager, gather, since)
                with trio.CancelScope(deadline=deadline) as wait:
                    out.append(sink.event(await subscription.__anext__()))
                if wait.cancelled_caught:
                    out.append(sink.ping())
            # Every event counted here is queued on the subscription already,
            # so taking them never waits.
            record = subscription.record
            ready = record.latest_seq - subscription.last_seq
            size = 0
            for _ in range(min(ready, MAX_BATCH - len(out))):
                message = sink.event(await subscription.__anext__())
                out.append(message)
                size += len(message)
                if size >= MAX_BATCH_BYTES:
                    break
            if record.status.is_terminal and subscription.last_seq == record.latest_seq:
                # The run's last frame is in ``out``: the subscription has no
                # more, so ``pump`` sends it with ``end``, in one final write.
                return
            wrote_at = trio.current_time()
            await sink.send(out, final=False)
            out.clear()
            deadline = trio.current_time() + heartbeat
    except StopAsyncIteration:
        return


async def _coalesce(
    subscription: StreamSubscription, eager: bool, limit: int = MAX_BATCH, since: float = 0.0
) -> bool:
    """Let frames that arrive faster than this stream writes gather for one write.

    Called before a stream takes its next batch. Frames already queued then
    arrived while the previous batch was being written: the producer may
    outpace the writes, so the stream lets scheduling rounds pass for as long
    as each brings more frames (at most :data:`COALESCE_ROUNDS` rounds and
    :data:`COALESCE_MAX_DELAY` seconds), then writes them all at once: one
    SSE write per batch instead of one per frame (the write path, not the
    frame, is what costs); two rounds in a row without a frame end it.

    It returns at once, without a checkpoint, when nothing is queued (a
    producer slower than the writes: tokens at a human pace), the run is
    terminal, ``limit`` frames are queued (``pump`` passes half the
    subscriber buffer, so gathering stops well before the stream could lag),
    or the last gathering found nothing more (``eager`` false: a frame that
    happened to arrive during a slow write) unless two or more frames are
    queued. Nor does it wait when the queued frames came more slowly than one
    per :data:`COALESCE_MAX_DELAY` during the last write (``since``: seconds
    since that write began, on the Trio clock; about 0 before the first
    write, so a replayed backlog is gathered). That is a stream that waited
    its turn among many others writing (a hundred streams on one run): every
    round it waited would run all of them again and hold its frames back by
    as long, for a frame or two more (at 100 streams and 100 frames/s this
    rule took p99 push-to-receipt from 1.62 to 1.16 times the h11 peer's;
    ``docs/performance.md``, "Fourth round"). Returns whether to gather next time: whether
    this gathering brought a frame (or ``eager`` as given, when it did not
    try). Each round is a checkpoint (cancellation propagates).
    """
    record = subscription.record
    latest = record.latest_seq
    queued = latest - subscription.last_seq
    if queued == 0 or record.status.is_terminal or queued >= limit:
        return eager
    if not eager and queued < 2:
        return False
    if queued * COALESCE_MAX_DELAY < since:
        return eager  # slower than one frame per COALESCE_MAX_DELAY
    until = trio.current_time() + COALESCE_MAX_DELAY
    gained = False
    idle = 0
    for _ in range(COALESCE_ROUNDS):
        await trio.lowlevel.checkpoint()
        record = subscription.record
        if record.latest_seq == latest:
            # Tasks run in a random order within a round (Trio's scheduler),
            # so a producer pushing every round can miss one: two in a row
            # without a frame end the gathering.
            idle += 1
            if idle == 2:
                break
        else:
            gained, idle, latest = True, 0, record.latest_seq
            if record.status.is_terminal or latest - subscription.last_seq >= limit:
                break
        if trio.current_time() >= until:
            break
    return gained
