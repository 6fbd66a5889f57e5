"""The chat server: a :class:`ChatServer` over a registry, and its Starlette app.

:class:`ChatServer` holds what the HTTP layer adds to the registry: the chat
model, the limits, a count of open streams per run, and the cancel scopes of
open streams (so shutdown, or a test, can drop them). :meth:`ChatServer.app`
is the ASGI application; serve it with hypercorn's trio worker (see
:mod:`trio_chatruns.server.runner`).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING

import attrs
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from .auth import ApiKeyAuth, StreamTokens, stream_token_route
from .config import ServerSettings
from .cross_site import CrossSiteGuard
from .routes import api_routes, error_handlers
from .security_headers import SecurityHeaders
from .ws_stream import websocket_stream

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from .. import ChatRunRegistry
    from .producers import ChatModel
    from .streams import StreamPlan

__all__ = ["ChatServer", "ServerStats"]


@attrs.frozen
class ServerStats:
    """Counters of the HTTP layer (the registry's are in ``RegistryStats``)."""

    open_streams: int
    """SSE and WebSocket streams open now."""
    streams_opened: int
    """Streams accepted since the server started."""
    streams_resumed: int
    """Of those, streams opened with a cursor (a client reconnecting)."""
    streams_dropped: int
    """Streams cut by :meth:`ChatServer.disconnect_streams` (shutdown or tests)."""


@attrs.define(eq=False)
class ChatServer:
    """The HTTP layer of a chat server over an open registry.

    Create it inside ``async with open_chat_run_registry() as registry`` and
    serve :attr:`app`; see :func:`trio_chatruns.server.runner.serve` for the
    whole thing.

    Attributes:
        registry (ChatRunRegistry): where runs live; owned by the caller.
        model (ChatModel): produces every reply.
        settings (ServerSettings): limits and timings.
        app (Starlette): the ASGI application, built at construction.
    """

    registry: ChatRunRegistry
    model: ChatModel
    settings: ServerSettings = attrs.field(factory=ServerSettings)
    app: Starlette = attrs.field(init=False, repr=False)
    """The Starlette ASGI application serving the API, the streams and the page."""
    _closing: bool = attrs.field(default=False, init=False)
    # The scopes of open streams, so disconnect_streams() can cut them; a
    # stream's pump runs inside its scope, the ASGI response outside it.
    _drop_scopes: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    # The scopes of request bodies being read, so begin_shutdown() can cut them.
    _body_scopes: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    _per_run: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _opened: int = attrs.field(default=0, init=False)
    _resumed: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)
    stream_tokens: StreamTokens = attrs.field(factory=StreamTokens, init=False, repr=False)
    """Signs the short-lived tokens that open a stream without an ``Authorization`` header."""

    @property
    def closing(self) -> bool:
        """``True`` once :meth:`begin_shutdown` was called: new runs and streams get 503."""
        return self._closing

    def __attrs_post_init__(self) -> None:
        self.app = self._build_app()

    def _build_app(self) -> Starlette:
        index = _static("index.html")
        script = _static("app.js")

        async def page(request: Request) -> Response:
            return Response(index, media_type="text/html; charset=utf-8")

        async def page_script(request: Request) -> Response:
            return Response(script, media_type="text/javascript; charset=utf-8")

        async def ws(websocket: WebSocket) -> None:
            await websocket_stream(self, websocket)

        routes = [
            Route("/", page),
            Route("/app.js", page_script),
            _static_route("/auth.js", "auth.js", "text/javascript; charset=utf-8"),
            _static_route("/app.css", "app.css", "text/css; charset=utf-8"),
            *api_routes(),
            stream_token_route(),
            WebSocketRoute("/v1/chat/runs/{conversation_id}/ws", ws),
        ]
        app = Starlette(
            routes=routes,
            exception_handlers=error_handlers(),
            middleware=self._security_middleware(),
        )
        app.state.chat_server = self
        app.state.stream_tokens = self.stream_tokens
        return app

    def _security_middleware(self) -> list[Middleware]:
        """The security layers, outermost first (see docs/server.md, "Security")."""
        settings = self.settings
        layers = [
            Middleware(SecurityHeaders),
            Middleware(
                CrossSiteGuard,
                bound_host=settings.host,
                allowed_hosts=settings.allowed_hosts,
                allowed_origins=settings.allowed_origins,
            ),
        ]
        if settings.allowed_origins:
            # Origins the operator listed may also read answers (CORS); the
            # preflight is answered here, before authentication, as it must be.
            layers.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=settings.allowed_origins,
                    allow_methods=["GET", "POST", "DELETE"],
                    allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                )
            )
        layers.append(Middleware(ApiKeyAuth, api_key=settings.api_key, tokens=self.stream_tokens))
        return layers

    def subscriber_count(self, run_id: str) -> int:
        """Streams (SSE and WebSocket) open on run ``run_id`` now."""
        return self._per_run[run_id]

    def stats(self) -> ServerStats:
        """A snapshot of the HTTP layer's counters."""
        return ServerStats(
            open_streams=len(self._drop_scopes),
            streams_opened=self._opened,
            streams_resumed=self._resumed,
            streams_dropped=self._dropped,
        )

    @contextlib.contextmanager
    def track_stream(self, plan: StreamPlan) -> Iterator[trio.CancelScope]:
        """Count a stream for the duration of the ``with`` block.

        Yields a fresh cancel scope, not yet entered: the stream runs its pump
        inside it, and :meth:`disconnect_streams` cancels it.
        """
        scope = trio.CancelScope()
        self._drop_scopes.add(scope)
        self._per_run[plan.run_id] += 1
        self._opened += 1
        self._resumed += plan.resumed
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield scope
        finally:
            self._drop_scopes.discard(scope)
            self._per_run[plan.run_id] -= 1
            if not self._per_run[plan.run_id]:
                del self._per_run[plan.run_id]
            if not self._drop_scopes:
                self._idle.set()

    @contextlib.contextmanager
    def track_body_read(self) -> Iterator[trio.CancelScope]:
        """Enter a cancel scope for reading a request body; :meth:`begin_shutdown` cancels it.

        Already cancelled if the server is closing, so a slow upload never
        holds a graceful shutdown (the request is answered 503).
        """
        with trio.CancelScope() as scope:
            if self._closing:
                scope.cancel()
            self._body_scopes.add(scope)
            try:
                yield scope
            finally:
                self._body_scopes.discard(scope)

    @property
    def body_reads(self) -> int:
        """Request bodies being read now."""
        return len(self._body_scopes)

    def disconnect_streams(self) -> int:
        """Cut every open stream now, as a network drop would; return how many.

        SSE responses end (``EventSource`` reconnects with ``Last-Event-ID``);
        WebSockets close with 1013 ("resume"). Runs are not touched.
        Synchronous.
        """
        scopes = list(self._drop_scopes)
        for scope in scopes:
            scope.cancel()
        self._dropped += len(scopes)
        return len(scopes)

    def begin_shutdown(self) -> int:
        """Stop accepting runs and streams, and interrupt every active run.

        Request bodies still being received are cut (those requests get 503).
        Open streams then end by themselves: each one's run ends
        ``cancelled``, the stream sends ``end`` and closes. Returns how many
        runs were interrupted. Synchronous, idempotent.
        """
        self._closing = True
        for scope in list(self._body_scopes):
            scope.cancel()  # those requests are answered 503
        interrupted = 0
        for record in self.registry.list(active_only=True):
            interrupted += self.registry.interrupt(record.conversation_id)
        return interrupted

    async def wait_streams_closed(self) -> None:
        """Return once no stream is open (immediately if none is)."""
        if self._drop_scopes:
            await self._idle.wait()


def _static_route(path: str, name: str, media_type: str) -> Route:
    """A ``GET`` route answering the packaged file ``static/<name>``."""
    content = _static(name)

    async def endpoint(request: Request) -> Response:
        return Response(content, media_type=media_type)

    return Route(path, endpoint)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
