"""The access log and the request metrics: one ASGI middleware around the app.

For every HTTP request and WebSocket session it measures the status, the
bytes of the body sent and the duration (request to the end of the response:
a stream counts for as long as it is open), then

- logs one line at INFO to the ``trio_chatruns.access`` logger, unless
  ``ServerSettings.access_log`` is off (``--no-access-log``)::

      127.0.0.1:53012 "GET /v1/chat/runs/c1/stream" 200 5123 B 1523.4 ms

  (the path without its query string, which may carry cursors or tokens);
- counts it in ``trio_chatruns_http_requests_total`` and
  ``trio_chatruns_http_request_duration_seconds``, labelled with the route
  template (``/v1/chat/runs/{conversation_id}``, never the raw path, so the
  label set stays bounded; ``unmatched`` for a 404 on an unknown path).

The streams write their bodies past the layers inside this one: for an HTTP
request it puts :data:`BODY_SEND` in the scope, a ``send`` for
``http.response.body`` messages that counts the bytes and goes straight to
the ``send`` this middleware was given. A stream sends its
``http.response.start`` through the whole stack (security headers, CORS),
then each body chunk through :data:`BODY_SEND`, so a chunk costs one layer
instead of six (the layers inside only ever look at the start message).

A WebSocket session is logged with method ``WEBSOCKET`` and status ``101``
once accepted (the bytes are those of the messages sent), or the status of
its refusal. An exception escaping the app is logged as ``500`` and goes on;
a request left without any answer (the client went away first) as ``499``.
Durations use the Trio clock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .state import ServerState

__all__ = ["BODY_SEND", "AccessLogMiddleware", "access_logger"]

access_logger = logging.getLogger("trio_chatruns.access")
"""Where the access log goes: one INFO record per request or WebSocket session."""

BODY_SEND = "trio_chatruns.body_send"
"""Scope key of the body ``send`` of an HTTP request (see the module docstring).

Only for ``http.response.body`` messages, and only once ``http.response.start``
went through the scope's own ``send``: the middleware between this one and the
endpoint (``SecurityHeaders``, ``CrossSiteGuard``, ``CORSMiddleware``,
``ApiKeyAuth``, Starlette's exception wrappers) reads and changes the start
message only, so a body skips them and nothing they check or add is lost.
Absent when the app runs without :class:`AccessLogMiddleware`: use the
scope's ``send`` then."""


class AccessLogMiddleware:
    """ASGI middleware logging and counting every request (see the module docstring)."""

    def __init__(self, app: ASGIApp, server: ServerState) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = trio.current_time()
        status = 0
        sent = 0

        async def observe(message: Message) -> None:
            nonlocal status, sent
            message_type = message["type"]
            if message_type in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif message_type == "http.response.body":
                sent += len(message.get("body", b""))
            elif message_type == "websocket.accept":
                status = 101
            elif message_type == "websocket.send":
                text = message.get("text")
                sent += len(text.encode("utf-8")) if text is not None else len(message["bytes"])
            elif message_type == "websocket.close" and not status:
                status = 403  # closed before the handshake: the server answers 403
            await send(message)

        if kind == "http":

            def body_send(message: Message) -> Awaitable[None]:
                # A plain function: no coroutine of its own per chunk.
                nonlocal sent
                sent += len(message.get("body", b""))
                return send(message)

            scope[BODY_SEND] = body_send
        try:
            await self.app(scope, receive, observe)
        except BaseException:
            status = status or 500
            raise
        finally:
            # 499 (nginx's "client closed request"): no answer was started.
            self._done(scope, status or 499, sent, trio.current_time() - started)

    def _done(self, scope: Scope, status: int, sent: int, seconds: float) -> None:
        method = scope.get("method", "WEBSOCKET") if scope["type"] == "http" else "WEBSOCKET"
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.server.metrics.observe_request(method, template, status, seconds)
        if self.server.settings.access_log and access_logger.isEnabledFor(logging.INFO):
            client = scope.get("client")
            who = f"{client[0]}:{client[1]}" if client else "-"
            access_logger.info(
                '%s "%s %s" %d %d B %.1f ms',
                who,
                method,
                scope.get("path", ""),
                status,
                sent,
                seconds * 1000,
            )
