"""The chat server's ASGI app: a :class:`ChatServer` is its state plus the Starlette app.

:class:`ChatServer` is :class:`~.state.ServerState` (the model, the limits,
the open streams, the counters: see :mod:`.state`) with the Starlette
application assembled over it: the routes, the two stream transports, the
page, and the middleware. :attr:`ChatServer.app` is the ASGI application;
serve it with hypercorn's trio worker (see :mod:`trio_chatruns.server.runner`).
Nothing below imports this module: it is the top of the server.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import attrs
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from .accesslog import AccessLogMiddleware
from .auth import ApiKeyAuth, StreamTokens, stream_token_route
from .backend import BackendUnavailable
from .conversation_routes import conversation_routes
from .cross_site import CrossSiteGuard
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .openapi import openapi_schema
from .routes import api_routes, error_handlers
from .security_headers import SecurityHeaders
from .sse import JSONResponse
from .state import END_REASONS, ServerState, ServerStats
from .ws_stream import websocket_stream

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

__all__ = ["END_REASONS", "ChatServer", "ServerStats"]


@attrs.define(eq=False)
class ChatServer(ServerState):
    """The HTTP layer of a chat server over an open registry.

    Create it inside ``async with open_chat_run_registry() as registry`` and
    serve :attr:`app`; see :func:`trio_chatruns.server.runner.serve` for the
    whole thing. What it holds (``registry``, ``model``, ``settings``,
    ``history``, ``on_shutdown_request``, ``metrics``) and its methods
    (``stats``, ``begin_shutdown``, ``disconnect_streams``...) are those of
    :class:`~.state.ServerState`.

    Attributes:
        app (Starlette): the ASGI application, built at construction.
        stream_tokens (StreamTokens): signs stream tokens (``?access_token=``).
    """

    app: Starlette = attrs.field(init=False, repr=False)
    """The Starlette ASGI application serving the API, the streams and the page."""
    stream_tokens: StreamTokens = attrs.field(factory=StreamTokens, init=False, repr=False)
    """Signs the short-lived tokens that open a stream without an ``Authorization`` header."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
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
            try:
                registry_stats = await self.backend.stats()
            except BackendUnavailable:
                registry_stats = None  # the run metrics are left out of this scrape
            return Response(
                self.metrics.exposition(registry_stats),
                headers={"Content-Type": METRICS_CONTENT_TYPE},
            )

        async def openapi(request: Request) -> Response:
            return JSONResponse(openapi_schema())

        routes = [
            Route("/", page),
            Route("/app.js", page_script),
            _static_route("/auth.js", "auth.js", "text/javascript; charset=utf-8"),
            _static_route("/app.css", "app.css", "text/css; charset=utf-8"),
            *api_routes(),
            *conversation_routes(),
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


def _static_route(path: str, name: str, media_type: str) -> Route:
    """A ``GET`` route answering the packaged file ``static/<name>``."""
    content = _static(name)

    async def endpoint(request: Request) -> Response:
        return Response(content, media_type=media_type)

    return Route(path, endpoint)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
