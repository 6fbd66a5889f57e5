"""The WebSocket transport: ``WS /v1/chat/runs/{id}/ws?after=N&run_id=...``.

As for SSE, the connection's own task writes the stream (:func:`~.streams.pump`,
one message per event, encoded once per event by :mod:`.wire`) and one more
task reads (and ignores) what the client sends, to notice it leaving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from starlette.websockets import WebSocket, WebSocketState

from .sse import record_to_json, to_json
from .streams import StreamPlan, StreamRefusal, cursor_from_request, pump, resolve_stream
from .wire import ws_event

if TYPE_CHECKING:
    from .. import ChatRunEvent, ChatRunRecord
    from .state import ServerState

__all__ = ["WS_CLOSE_DONE", "WS_CLOSE_GOING_AWAY", "WS_CLOSE_RESUME", "websocket_stream"]

WS_CLOSE_DONE = 1000
"""WebSocket close code: the run ended and every frame was sent; do not reconnect."""
WS_CLOSE_GOING_AWAY = 1001
"""WebSocket close code ("going away", RFC 6455 section 7.4.1): the server is shutting down."""
WS_CLOSE_RESUME = 1013
"""WebSocket close code ("try again later"): reconnect with ``after=<last seq>``."""


class _WSSink:
    """Stream messages as JSON text; :meth:`send` writes them one WebSocket
    message each and, after the final batch, closes with the code the last
    message called for."""

    coalesce = False  # one message per frame whatever the batch

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._close: tuple[int, str | None] = (WS_CLOSE_DONE, None)

    def event(self, event: ChatRunEvent) -> str:
        return ws_event(event)

    def gap(self, first: int, last: int, run_id: str) -> str:
        return to_json({"type": "gap", "run_id": run_id, "from": first, "to": last})

    def ping(self) -> str:
        return _PING

    def end(self, record: ChatRunRecord | None, reason: str) -> str:
        data = None if record is None else record_to_json(record)
        if reason == "shutdown":
            self._close = (WS_CLOSE_GOING_AWAY, "server shutting down")
        else:
            self._close = (WS_CLOSE_DONE, None)
        return to_json({"type": "end", "reason": reason, "record": data})

    def lagged(self, resume_after: int, run_id: str) -> str:
        self._close = (WS_CLOSE_RESUME, f"lagged; resume after {resume_after}")
        return to_json({"type": "lagged", "run_id": run_id, "resume_after": resume_after})

    async def send(self, messages: list[str], *, final: bool) -> None:
        for text in messages:
            await self._ws.send_text(text)
        if final:
            await self._ws.close(*self._close)


_PING = to_json({"type": "ping"})


async def websocket_stream(server: ServerState, websocket: WebSocket) -> None:
    """Serve ``WS .../ws?after=N&run_id=...``: the stream as JSON text messages.

    Messages: ``{"type": "event", ...event}``, ``{"type": "gap", "run_id",
    "from", "to"}``, ``{"type": "ping"}`` after ``heartbeat_interval`` seconds
    of silence, then ``{"type": "end", "reason", "record"}`` and close ``1000``
    (``1001``, going away, when the reason is ``"shutdown"``); or
    ``{"type": "lagged", "run_id", "resume_after"}`` and close ``1013`` (resume
    by reconnecting with ``after=resume_after``). A stream the server drops
    (:meth:`ChatServer.disconnect_streams`) closes ``1013`` too, or ``1001``
    while the server shuts down. Refusals are
    ``{"type": "error", "status", "error"}`` and close ``4000 + status``
    (``4400``, ``4404``, ``4429``, ``4503``); a run already over and fully
    delivered gets its ``end`` message and ``1000``. The cursor is read as for
    SSE: a ``Last-Event-ID`` header first, else the query.
    """
    conversation_id = websocket.path_params["conversation_id"]
    await websocket.accept()
    try:
        cursor, resumed = cursor_from_request(websocket.headers, websocket.query_params)
    except ValueError as exc:
        plan: StreamPlan | StreamRefusal = StreamRefusal(400, str(exc))
    else:
        plan = await resolve_stream(server, conversation_id, cursor, resumed)
    if isinstance(plan, StreamRefusal):
        if plan.status == 204:
            sink = _WSSink(websocket)
            await sink.send([sink.end(plan.record, server.end_reason(plan.record))], final=True)
        else:
            await websocket.send_text(
                to_json({"type": "error", "status": plan.status, "error": plan.message})
            )
            # A close reason is at most 123 bytes of UTF-8.
            reason = plan.message.encode("utf-8")[:123].decode("utf-8", "ignore")
            await websocket.close(4000 + plan.status, reason)
        return
    with server.track_stream(plan) as drop_scope:
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass  # client messages are ignored
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            with drop_scope:
                # This task writes the stream; the heartbeat is pump's wait deadline.
                await pump(server, plan, _WSSink(websocket))
            if (
                drop_scope.cancelled_caught
                and websocket.application_state != WebSocketState.DISCONNECTED
            ):
                if server.closing:
                    await websocket.close(WS_CLOSE_GOING_AWAY, "server shutting down")
                else:
                    await websocket.close(WS_CLOSE_RESUME, "stream dropped by the server; resume")
            nursery.cancel_scope.cancel()
