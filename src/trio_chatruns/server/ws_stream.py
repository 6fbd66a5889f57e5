"""The WebSocket transport: ``WS /v1/chat/runs/{id}/ws?after=N&run_id=...``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from starlette.websockets import WebSocket, WebSocketState

from .sse import event_to_json, record_to_json, to_json
from .streams import StreamPlan, StreamRefusal, cursor_from_request, pump, resolve_stream

if TYPE_CHECKING:
    from .. import ChatRunEvent, ChatRunRecord
    from .app import ChatServer

__all__ = ["WS_CLOSE_DONE", "WS_CLOSE_GOING_AWAY", "WS_CLOSE_RESUME", "websocket_stream"]

WS_CLOSE_DONE = 1000
"""WebSocket close code: the run ended and every frame was sent; do not reconnect."""
WS_CLOSE_GOING_AWAY = 1001
"""WebSocket close code ("going away", RFC 6455 section 7.4.1): the server is shutting down."""
WS_CLOSE_RESUME = 1013
"""WebSocket close code ("try again later"): reconnect with ``after=<last seq>``."""


class _WSSink:
    """Sends stream messages; ``send`` also serves the heartbeat task, so a lock
    keeps one message from interleaving with another, and the heartbeat only
    speaks after ``interval`` seconds without a message."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._lock = trio.Lock()
        self.last_sent = trio.current_time()

    async def send(
        self, message: dict[str, Any], *, then_close: int | None = None, reason: str | None = None
    ) -> None:
        async with self._lock:
            await self._ws.send_text(to_json(message))
            self.last_sent = trio.current_time()
            if then_close is not None:
                # Under the same lock: no heartbeat can slip in before the close.
                await self._ws.close(then_close, reason)

    async def heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep_until(self.last_sent + interval)
            if trio.current_time() >= self.last_sent + interval:
                await self.send({"type": "ping"})

    async def event(self, event: ChatRunEvent) -> None:
        await self.send({"type": "event", **event_to_json(event)})

    async def gap(self, first: int, last: int, run_id: str) -> None:
        await self.send({"type": "gap", "run_id": run_id, "from": first, "to": last})

    async def end(self, record: ChatRunRecord | None, reason: str) -> None:
        data = None if record is None else record_to_json(record)
        going_away = reason == "shutdown"
        await self.send(
            {"type": "end", "reason": reason, "record": data},
            then_close=WS_CLOSE_GOING_AWAY if going_away else WS_CLOSE_DONE,
            reason="server shutting down" if going_away else None,
        )

    async def lagged(self, resume_after: int, run_id: str) -> None:
        await self.send(
            {"type": "lagged", "run_id": run_id, "resume_after": resume_after},
            then_close=WS_CLOSE_RESUME,
            reason=f"lagged; resume after {resume_after}",
        )


async def websocket_stream(server: ChatServer, websocket: WebSocket) -> None:
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
        plan = resolve_stream(server, conversation_id, cursor, resumed)
    if isinstance(plan, StreamRefusal):
        if plan.status == 204:
            await _WSSink(websocket).end(plan.record, server.end_reason(plan.record))
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

            sink = _WSSink(websocket)
            nursery.start_soon(watch_disconnect)
            nursery.start_soon(sink.heartbeat, server.settings.heartbeat_interval)
            with drop_scope:
                await pump(server, plan, sink)
            if (
                drop_scope.cancelled_caught
                and websocket.application_state != WebSocketState.DISCONNECTED
            ):
                if server.closing:
                    await websocket.close(WS_CLOSE_GOING_AWAY, "server shutting down")
                else:
                    await websocket.close(WS_CLOSE_RESUME, "stream dropped by the server; resume")
            nursery.cancel_scope.cancel()
