"""The SSE transport: ``GET /v1/chat/runs/{id}/stream`` as an ASGI callable.

A plain ASGI callable, not an async generator behind ``StreamingResponse``:
one task writes to the socket (and sends a heartbeat comment when idle), one
watches for ``http.disconnect``, and :func:`~.streams.pump` feeds the writer
through an unbuffered channel, so a slow client pushes back on the pump (and
from there shows up as lag in the registry) without ever blocking the
producer. No generator is left for the garbage collector to finalize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio
from starlette.responses import Response

from .sse import (
    Cursor,
    JSONResponse,
    encode_comment,
    encode_sse,
    event_to_json,
    format_cursor,
    record_to_json,
    to_json,
)
from .streams import StreamRefusal, pump, resolve_stream

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from .. import ChatRunEvent, ChatRunRecord
    from .app import ChatServer

__all__ = ["RETRY_AFTER_SECONDS", "SSE_HEADERS", "SSEStream"]

RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` header of every ``429``, seconds."""


class _SSESink:
    def __init__(self, channel: trio.MemorySendChannel[bytes], retry_ms: int) -> None:
        self._channel = channel
        # Sent inside the first message's block: a block holding only
        # ``retry:`` is an event with empty data to some clients (httpx-sse).
        self._retry: bytes | None = b"retry: %d\n" % retry_ms

    async def _send(self, message: bytes) -> None:
        if self._retry is not None:
            message, self._retry = self._retry + message, None
        await self._channel.send(message)

    async def event(self, event: ChatRunEvent) -> None:
        await self._send(
            encode_sse(to_json(event_to_json(event)), id=format_cursor(event.run_id, event.seq))
        )

    async def gap(self, first: int, last: int, run_id: str) -> None:
        data = {"run_id": run_id, "from": first, "to": last}
        await self._send(encode_sse(to_json(data), event="gap"))

    async def end(self, record: ChatRunRecord | None, reason: str) -> None:
        data = (
            {"reason": reason} if record is None else {**record_to_json(record), "reason": reason}
        )
        event_id = None if record is None else format_cursor(record.run_id, record.latest_seq)
        await self._send(encode_sse(to_json(data), event="end", id=event_id))

    async def lagged(self, resume_after: int, run_id: str) -> None:
        # The id makes EventSource's Last-Event-ID exactly the resume point.
        data = {"run_id": run_id, "resume_after": resume_after}
        await self._send(
            encode_sse(to_json(data), event="lagged", id=format_cursor(run_id, resume_after))
        )


SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


@attrs.define
class SSEStream:
    """ASGI app answering one ``GET .../stream`` request with an SSE stream.

    Before anything is sent it resolves the cursor: errors become a JSON error
    with their status, a finished run ``204 No Content`` (which stops
    ``EventSource`` from reconnecting). Otherwise ``200`` and a
    ``text/event-stream`` body:

    - ``retry: <ms>`` in the first message's block;
    - one unnamed (``message``) event per frame, ``id: <run_id>:<seq>``, data
      the event as JSON;
    - ``event: gap`` (data ``{"run_id", "from", "to"}``) when frames were trimmed;
    - ``event: end`` (data the final record with a ``reason``, see
      :meth:`ChatServer.end_reason`) when the run is over; then EOF;
    - ``event: lagged`` (data ``{"run_id", "resume_after"}``) then EOF for a slow
      client, which reconnects by itself;
    - ``: ping`` comments after ``heartbeat_interval`` seconds of silence.
    """

    server: ChatServer
    conversation_id: str
    cursor: Cursor
    resumed: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        plan = resolve_stream(server, self.conversation_id, self.cursor, self.resumed)
        if isinstance(plan, StreamRefusal):
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if plan.status == 429 else None
            response: Response = (
                Response(status_code=204)
                if plan.status == 204
                else JSONResponse({"error": plan.message}, status_code=plan.status, headers=headers)
            )
            await response(scope, receive, send)
            return
        settings = server.settings
        disconnected = False
        with server.track_stream(plan) as drop_scope:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            send_channel, receive_channel = trio.open_memory_channel[bytes](0)
            async with trio.open_nursery() as nursery:

                async def watch_disconnect() -> None:
                    nonlocal disconnected
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    disconnected = True
                    nursery.cancel_scope.cancel()

                async def write() -> None:
                    async with receive_channel:
                        while True:
                            chunk = None
                            with trio.move_on_after(settings.heartbeat_interval):
                                try:
                                    chunk = await receive_channel.receive()
                                except trio.EndOfChannel:
                                    break
                            body = encode_comment("ping") if chunk is None else chunk
                            await send(
                                {"type": "http.response.body", "body": body, "more_body": True}
                            )
                    nursery.cancel_scope.cancel()  # done: stop watching for a disconnect

                nursery.start_soon(watch_disconnect)
                nursery.start_soon(write)
                async with send_channel:
                    with drop_scope:
                        await pump(server, plan, _SSESink(send_channel, settings.sse_retry_ms))
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
