"""The SSE transport: ``GET /v1/chat/runs/{id}/stream`` as an ASGI callable.

A plain ASGI callable, not an async generator behind ``StreamingResponse``:
the request's own task writes the response (:func:`~.streams.pump` sends
whatever events are ready as one body chunk, and a heartbeat comment when
idle), and one more task watches for ``http.disconnect``. A slow client
pushes back on that task (and from there shows up as lag in the registry)
without ever blocking the producer. No generator is left for the garbage
collector to finalize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio
from starlette.responses import Response

from .accesslog import BODY_SEND
from .sse import (
    Cursor,
    JSONResponse,
    encode_comment,
    encode_sse,
    format_cursor,
    to_json,
)
from .streams import StreamRefusal, pump, resolve_stream
from .wire import sse_end, sse_event

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import Receive, Scope, Send

    from .. import ChatRunEvent, ChatRunRecord
    from .state import ServerState

__all__ = ["RETRY_AFTER_SECONDS", "SSE_HEADERS", "SSEStream"]

RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` header of every ``429``, seconds."""


class _SSESink:
    """SSE messages as bytes; :meth:`send` writes a batch as one body chunk,
    the final batch as the body's last one."""

    coalesce = True  # a batch is one body chunk: one write

    def __init__(self, send: Send, retry_ms: int, before_final: Callable[[], None]) -> None:
        self._send = send
        self._before_final = before_final
        self.ended = False
        """The final batch was sent: the body is complete."""
        # Sent inside the first message's block: a block holding only
        # ``retry:`` is an event with empty data to some clients (httpx-sse).
        self._retry: bytes | None = b"retry: %d\n" % retry_ms

    def event(self, event: ChatRunEvent) -> bytes:
        return sse_event(event)

    def gap(self, first: int, last: int, run_id: str) -> bytes:
        return encode_sse(to_json({"run_id": run_id, "from": first, "to": last}), event="gap")

    def ping(self) -> bytes:
        return _PING

    def end(self, record: ChatRunRecord | None, reason: str) -> bytes:
        return sse_end(record, reason)

    def lagged(self, resume_after: int, run_id: str) -> bytes:
        # The id makes EventSource's Last-Event-ID exactly the resume point.
        data = {"run_id": run_id, "resume_after": resume_after}
        return encode_sse(to_json(data), event="lagged", id=format_cursor(run_id, resume_after))

    async def send(self, messages: list[bytes], *, final: bool) -> None:
        body = b"".join(messages)
        if self._retry is not None and messages[0] is not _PING:
            body, self._retry = self._retry + body, None
        if final:
            # The final batch ends the body, which makes hypercorn report a
            # disconnect: the watcher stops first, so it cannot cancel this
            # task inside hypercorn.
            self._before_final()
        await self._send({"type": "http.response.body", "body": body, "more_body": not final})
        if final:
            self.ended = True


_PING = encode_comment("ping")


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

    server: ServerState
    conversation_id: str
    cursor: Cursor
    resumed: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        plan = await resolve_stream(server, self.conversation_id, self.cursor, self.resumed)
        if isinstance(plan, StreamRefusal):
            headers = (
                {"Retry-After": str(RETRY_AFTER_SECONDS)} if plan.status in (429, 503) else None
            )
            response: Response = (
                Response(status_code=204)
                if plan.status == 204
                else JSONResponse({"error": plan.message}, status_code=plan.status, headers=headers)
            )
            await response(scope, receive, send)
            return
        # Headers go through every middleware; body chunks skip the layers
        # that only touch headers (accesslog.BODY_SEND).
        body_send: Send = scope.get(BODY_SEND, send)
        watching = trio.CancelScope()
        sink = _SSESink(body_send, server.settings.sse_retry_ms, watching.cancel)
        disconnected = False
        with server.track_stream(plan) as drop_scope:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            async with trio.open_nursery() as nursery:

                async def watch_disconnect() -> None:
                    nonlocal disconnected
                    with watching:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        disconnected = True
                        if not watching.cancel_called:
                            nursery.cancel_scope.cancel()

                nursery.start_soon(watch_disconnect)
                with drop_scope:
                    # This task writes the response: pump sends each batch itself.
                    await pump(server, plan, sink)
                watching.cancel()  # done (or dropped): stop watching for a disconnect
        if not (disconnected or sink.ended):
            # Dropped (disconnect_streams): end the body as it stands.
            await body_send({"type": "http.response.body", "body": b"", "more_body": False})
