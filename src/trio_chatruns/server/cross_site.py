"""Refuse what a browser sends only on another site's behalf: Host, Origin, Content-Type.

A server on a laptop is reachable by every web page the user opens. Three
checks, run by :class:`CrossSiteGuard` (ASGI middleware, outside every route)
on each HTTP request and WebSocket handshake, in this order:

1. **Host** (DNS rebinding). A page on ``evil.example`` can make its own name
   resolve to ``127.0.0.1``; the browser then treats the server as
   same-origin with the attacker's page, but still sends ``Host:
   evil.example:8000``. Only the names the server is reached by are accepted:
   the address of the socket the request arrived on (plus ``localhost``,
   ``127.0.0.1`` and ``[::1]`` when that address is loopback) and the bound
   host name, each with the port the request arrived on (a ``Host`` without
   a port means that port), and the names given with ``--allowed-host``.
   Anything else is ``421 Misdirected Request`` (RFC 9110 §15.5.20: this
   server does not answer for that authority); a missing or malformed
   ``Host`` is ``400`` (RFC 9112 §3.2).
2. **Origin** (cross-site requests, cross-site WebSocket hijacking). Browsers
   send ``Origin`` on every CORS request (``fetch``, ``EventSource``), every
   ``POST`` (forms too) and every WebSocket handshake (Fetch standard,
   "append a request Origin header"); a page can neither drop nor forge it.
   A request whose ``Origin`` is neither the server's own (``scheme://`` +
   the checked ``Host``) nor listed with ``--allow-origin`` is ``403``,
   whatever its method. ``Origin: null`` (sandboxed frames,
   ``file:`` pages) is refused too. Requests without ``Origin`` (curl, httpx,
   any non-browser client) pass.
3. **Content-Type** (simple requests). Without a CORS preflight a page can
   only send ``text/plain``, ``application/x-www-form-urlencoded`` or
   ``multipart/form-data`` bodies ("CORS-safelisted request-header"). A
   request that carries a body (a ``Content-Length`` other than ``0``, or a
   ``Transfer-Encoding``) must say ``Content-Type: application/json``
   (optionally ``; charset=utf-8``), else ``415``.

Refusals are ``{"error": message}`` (a WebSocket handshake gets the same HTTP
answer, through the ASGI ``websocket.http.response`` extension where the
server has it) and are logged at INFO on ``trio_chatruns.server.security``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .hosts import (
    LOOPBACK_NAMES,
    bare_address,
    is_loopback_host,
    is_wildcard,
    normalize_origin,
    parse_allowed_host,
    parse_host,
    show,
)
from .sse import JSONResponse

__all__ = ["CrossSiteGuard", "refuse"]

logger = logging.getLogger("trio_chatruns.server.security")

_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


async def refuse(
    scope: Any,
    receive: Any,
    send: Any,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer ``{"error": message}`` with ``status``, to an HTTP request or a WebSocket handshake.

    A WebSocket handshake gets a real HTTP answer where the server supports
    the ``websocket.http.response`` extension (hypercorn does); otherwise it
    is closed before being accepted, which servers answer with ``403``.
    """
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
        "extensions", {}
    ):
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await JSONResponse({"error": message}, status_code=status, headers=headers)(
        scope, receive, send
    )


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


class CrossSiteGuard:
    """ASGI middleware running the Host, Origin and Content-Type checks (module docstring).

    Args:
        app: the ASGI application it wraps.
        bound_host: the host the server was told to bind (``ServerSettings.host``);
            accepted in ``Host`` unless it is a wildcard (``0.0.0.0``, ``::``).
        allowed_hosts: more ``Host`` values to accept (``--allowed-host``).
        allowed_origins: more ``Origin`` values to accept (``--allow-origin``),
            in any form :func:`normalize_origin` reads.

    Raises:
        ValueError: a malformed entry in ``allowed_hosts`` or ``allowed_origins``.
    """

    def __init__(
        self,
        app: Any,
        *,
        bound_host: str,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._bound = None if is_wildcard(bound_host) else bare_address(bound_host.strip("[]"))
        self._hosts = tuple(parse_allowed_host(h) for h in allowed_hosts)
        self._origins = frozenset(normalize_origin(o) for o in allowed_origins)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        logger.info(
            "refused %s %s with %d: %s",
            scope.get("method", "WEBSOCKET"),
            scope.get("path", ""),
            status,
            message,
        )
        await refuse(scope, receive, send, status, message)

    def _check(self, scope: Any) -> tuple[int, str] | None:
        host_header = _header(scope, b"host")
        if not host_header:
            return 400, "missing Host header"
        try:
            name, port = parse_host(host_header)
        except ValueError as exc:
            return 400, str(exc)
        scheme = scope.get("scheme", "http")
        name = bare_address(name)
        server = scope.get("server")
        local = None if server is None else bare_address(str(server[0]))
        local_port = None if server is None else int(server[1])
        # Some clients leave the port out of Host (trio-websocket given a bare
        # host name, for one): it means the port the request arrived on. The
        # name, which DNS rebinding changes, is always checked.
        if port is None:
            port = local_port
        if not self._host_allowed(name, port, local, local_port):
            return 421, (
                f"this server does not answer for host {show(host_header)}; "
                "start it with --allowed-host to add a name"
            )
        origin = _header(scope, b"origin")
        if origin is not None:
            try:
                normalized = normalize_origin(origin)
            except ValueError:
                return 403, f"cross-origin request refused: Origin {show(origin)}"
            authority = f"[{name}]" if ":" in name else name
            if port is not None:
                authority += f":{port}"
            own = normalize_origin(f"{_HTTP_SCHEME.get(scheme, 'http')}://{authority}")
            if normalized != own and normalized not in self._origins:
                return 403, (
                    f"cross-origin request refused: Origin {show(origin)} is not this "
                    "server's origin nor listed with --allow-origin"
                )
        if scope["type"] == "http" and _has_body(scope):
            content_type = _header(scope, b"content-type")
            if not _is_json(content_type):
                shown = "none" if content_type is None else show(content_type)
                return 415, f"request body must be Content-Type: application/json, not {shown}"
        return None

    def _host_allowed(
        self, name: str, port: int | None, local: str | None, local_port: int | None
    ) -> bool:
        if any(pattern.matches(name, port) for pattern in self._hosts):
            return True
        if port != local_port:
            return False
        names = {local or self._bound, self._bound}  # no socket address (a Unix socket)
        if any(n is not None and is_loopback_host(n) for n in names):
            names |= LOOPBACK_NAMES
        return name in names


def _has_body(scope: Any) -> bool:
    length = _header(scope, b"content-length")
    if length is not None and length.strip() != "0":
        return True
    return _header(scope, b"transfer-encoding") is not None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True
