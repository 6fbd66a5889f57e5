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
import logging
from collections.abc import Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING

import attrs
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from .. import ChatRunStatus
from .accesslog import AccessLogMiddleware
from .auth import ApiKeyAuth, StreamTokens, stream_token_route
from .config import ServerSettings
from .cross_site import CrossSiteGuard
from .failures import log_failure
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .openapi import openapi_schema
from .routes import api_routes, error_handlers
from .security_headers import SecurityHeaders
from .sse import JSONResponse
from .ws_stream import websocket_stream

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from .. import ChatRunRecord, ChatRunRegistry
    from .producers import ChatModel
    from .streams import StreamPlan

__all__ = ["END_REASONS", "ChatServer", "ServerStats"]

logger = logging.getLogger("trio_chatruns.server")

END_REASONS = {
    "completed": "the run completed",
    "failed": "the run failed (its last frame is an error frame)",
    "interrupted": "a client interrupted the run",
    "shutdown": "the server is shutting down and interrupted the run",
    "unavailable": "the run is no longer held (evicted or replaced); no record",
}
"""The ``reason`` of every stream ``end`` message, with its meaning."""


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
    """Streams cut by :meth:`ChatServer.disconnect_streams` (shutdown or tests);
    streams closed for lag are not counted here but in ``streams_lagged``."""
    streams_lagged: int = 0
    """Streams closed because their client read too slowly (``lagged``)."""
    run_failures: int = 0
    """Runs that ended ``failed`` (``trio_chatruns_model_failures_total`` splits them by kind)."""


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
        on_shutdown_request (Callable[[], None] | None): called when a model
            raises ``KeyboardInterrupt``/``SystemExit``, to shut the whole
            server down gracefully (:func:`~.runner.serve` passes its own);
            ``None``: :meth:`begin_shutdown` is called instead.
        app (Starlette): the ASGI application, built at construction.
        metrics (ServerMetrics): this server's Prometheus registry and
            instruments (``GET /metrics``).
    """

    registry: ChatRunRegistry
    model: ChatModel
    settings: ServerSettings = attrs.field(factory=ServerSettings)
    on_shutdown_request: Callable[[], None] | None = attrs.field(default=None, kw_only=True)
    app: Starlette = attrs.field(init=False, repr=False)
    """The Starlette ASGI application serving the API, the streams and the page."""
    metrics: ServerMetrics = attrs.field(init=False, repr=False)
    """This server's metrics (its own ``CollectorRegistry``)."""
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
    _lagged: int = attrs.field(default=0, init=False)
    _fatal: BaseException | None = attrs.field(default=None, init=False)
    _failures: int = attrs.field(default=0, init=False)
    # Runs interrupted by begin_shutdown(): their streams end with reason "shutdown".
    _shutdown_runs: set[str] = attrs.field(factory=set, init=False)
    stream_tokens: StreamTokens = attrs.field(factory=StreamTokens, init=False, repr=False)
    """Signs the short-lived tokens that open a stream without an ``Authorization`` header."""

    @property
    def closing(self) -> bool:
        """``True`` once :meth:`begin_shutdown` was called: new runs and streams get 503."""
        return self._closing

    def __attrs_post_init__(self) -> None:
        self.metrics = ServerMetrics(self)
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

        async def metrics(request: Request) -> Response:
            return Response(
                self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
            )

        async def openapi(request: Request) -> Response:
            return JSONResponse(openapi_schema())

        routes = [
            Route("/", page),
            Route("/app.js", page_script),
            _static_route("/auth.js", "auth.js", "text/javascript; charset=utf-8"),
            _static_route("/app.css", "app.css", "text/css; charset=utf-8"),
            *api_routes(),
            stream_token_route(),
            WebSocketRoute("/v1/chat/runs/{conversation_id}/ws", ws),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]
        app = Starlette(
            routes=routes,
            exception_handlers=error_handlers(),
            middleware=self._security_middleware(),
        )
        app.state.chat_server = self
        # Added last, so outermost: it sees every answer, refusals included.
        app.add_middleware(AccessLogMiddleware, server=self)
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
            streams_lagged=self._lagged,
            run_failures=self._failures,
        )

    # -- what streams and producers report ------------------------------------

    @property
    def fatal_exception(self) -> BaseException | None:
        """The first ``KeyboardInterrupt``/``SystemExit`` a model raised, if any.

        ``trio-chatruns`` exits with its status after the graceful shutdown it
        caused (``SystemExit.code``, or 130 for ``KeyboardInterrupt``).
        """
        return self._fatal

    @property
    def shutdown_runs(self) -> frozenset[str]:
        """Run ids :meth:`begin_shutdown` interrupted."""
        return frozenset(self._shutdown_runs)

    def note_lagged(self) -> None:
        """Count a stream closed because its client read too slowly."""
        self._lagged += 1

    def end_reason(self, record: ChatRunRecord | None) -> str:
        """Why a stream of the run ``record`` ends: a key of :data:`END_REASONS`.

        ``"shutdown"`` for a run :meth:`begin_shutdown` interrupted,
        ``"interrupted"`` for any other cancelled run, else the status
        (``"completed"``, ``"failed"``); ``"unavailable"`` for ``None``.
        """
        if record is None:
            return "unavailable"
        if record.status is ChatRunStatus.CANCELLED:
            return "shutdown" if record.run_id in self._shutdown_runs else "interrupted"
        if record.status is ChatRunStatus.FAILED:
            return "failed"
        return "completed"

    @property
    def expose_errors(self) -> bool:
        """Clients get a model exception's whole text (``ServerSettings.expose_errors``)."""
        return self.settings.expose_errors

    def run_failed(self, record: ChatRunRecord, kind: str, exc: BaseException | None) -> None:
        """Log a failed run at WARNING and count it by ``kind`` (the producer wrapper calls it)."""
        self._failures += 1
        self.metrics.model_failures.labels(kind).inc()
        log_failure(record, kind, exc)

    def model_fatal(self, exc: BaseException) -> None:
        """A model raised ``KeyboardInterrupt``/``SystemExit``: shut down gracefully.

        Calls :attr:`on_shutdown_request` (or :meth:`begin_shutdown`), so every
        other run is interrupted and every stream gets its ``end``.
        """
        logger.error(
            "a chat model raised %s: shutting the server down gracefully", type(exc).__name__
        )
        if self._fatal is None:
            self._fatal = exc
        if self.on_shutdown_request is not None:
            self.on_shutdown_request()
        else:
            self.begin_shutdown()

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
        if scopes and self._closing:
            logger.info("shutdown: cut %d stream(s) still open", len(scopes))
        return len(scopes)

    def begin_shutdown(self) -> int:
        """Stop accepting runs and streams, and interrupt every active run.

        Request bodies still being received are cut (those requests get 503).
        Open streams then end by themselves: each one's run ends
        ``cancelled``, the stream sends ``end`` and closes. Returns how many
        runs were interrupted. Synchronous, idempotent.
        """
        if self._closing:
            return 0
        self._closing = True
        for scope in list(self._body_scopes):
            scope.cancel()  # those requests are answered 503
        ended: list[str] = []
        for record in self.registry.list(active_only=True):
            if self.registry.interrupt(record.conversation_id):
                self._shutdown_runs.add(record.run_id)
                ended.append(f"{record.conversation_id}/{record.run_id}")
        logger.info(
            "shutting down: interrupted %d active run(s)%s; %d stream(s) open, "
            "%d request body(ies) cut",
            len(ended),
            (": " + ", ".join(ended)) if ended else "",
            len(self._drop_scopes),
            len(self._body_scopes),
        )
        return len(ended)

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
