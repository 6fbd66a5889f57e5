"""API-key authentication: ``Authorization: Bearer <key>``, and stream tokens for browsers.

With ``ServerSettings.api_key`` set (``--api-key``, ``TRIO_CHATRUNS_API_KEY``),
:class:`ApiKeyAuth` (ASGI middleware) answers ``401`` to every request under
``/v1/`` (the API and both streams) and ``/metrics`` that does not carry
``Authorization: Bearer <key>`` (RFC 6750 §2.1), compared in constant time.
The page and its static files stay public: they hold no data, and the page
must load to ask for the key.

A browser's ``EventSource`` and ``WebSocket`` cannot set headers, so the two
stream routes also accept ``?access_token=<token>`` (RFC 6750 §2.3), where the
token comes from ``POST /v1/chat/runs/{conversation_id}/stream-token`` (which
needs the key): an HMAC-SHA256 over the conversation id and an expiry, signed
with a secret made at start-up (with ``--redis``, one derived from the key, so
that every worker accepts the tokens of every other: :meth:`StreamTokens.shared`),
valid :data:`STREAM_TOKEN_TTL` seconds and for that conversation's streams only.
It is checked when a stream opens; an open stream outlives it. Why not a
cookie: a cookie would be sent by the browser on its own (ambient authority,
the very thing the cross-site checks fight), would be shared by every tab
rather than kept per tab, and cookies ignore ports
(RFC 6265 §8.5), so any other server on ``localhost`` would receive it.

:func:`generate_api_key` makes the key the server uses, as Jupyter does, when
it is bound to a non-loopback address without one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import attrs
import trio
from starlette.routing import Route

from .config import ServerSettings, valid_conversation_id
from .cross_site import refuse
from .errors import ApiError
from .hosts import is_loopback_host, is_wildcard
from .sse import JSONResponse

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "STREAM_TOKEN_TTL",
    "ApiKeyAuth",
    "StreamTokens",
    "bearer_token",
    "ensure_api_key",
    "generate_api_key",
    "is_protected",
    "log_exposure",
    "stream_token_route",
]

logger = logging.getLogger("trio_chatruns.server")

STREAM_TOKEN_TTL = 60.0
"""Seconds a stream token is accepted for opening a stream."""

_STREAM_PATH = re.compile(r"/v1/chat/runs/([^/]+)/(?:stream|ws)")
_TOKEN = re.compile(r"(-?[0-9]{1,20})\.([A-Za-z0-9_-]{43})")
_REALM = 'Bearer realm="trio-chatruns"'


def generate_api_key() -> str:
    """A fresh random API key: 32 bytes from :mod:`secrets`, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def ensure_api_key(settings: ServerSettings) -> tuple[ServerSettings, bool]:
    """``settings`` with an API key if it binds a non-loopback address without one.

    What Jupyter does: a server reachable from other machines is never open
    by accident. Returns ``(settings, generated)``; ``generated`` is ``True``
    when the key was made here (:func:`log_exposure` then prints the URL
    carrying it).
    """
    if settings.api_key is not None or is_loopback_host(settings.host):
        return settings, False
    return attrs.evolve(settings, api_key=generate_api_key()), True


def log_exposure(settings: ServerSettings, urls: list[str], generated: bool) -> None:
    """Log how the server is exposed, once it is bound to ``urls``.

    A WARNING for a wildcard bind (``0.0.0.0``, ``::``: every machine that
    can reach this one can connect), and, if the key was generated, a
    WARNING with the page URL carrying it as ``#token=<key>`` (the page takes
    it from there and keeps it for the tab; a fragment never reaches a server
    log or a ``Referer``).
    """
    if is_wildcard(settings.host):
        logger.warning(
            "listening on every interface (%s): any machine that can reach this one can "
            "connect, with the API key; to reach it by a host name, add --allowed-host NAME",
            settings.host or "*",
        )
    if not generated:
        return
    pages = [_local_url(url) for url in urls]
    logger.warning(
        "bound to the non-loopback address %s without --api-key: generated one. "
        "Open the page with it: %s",
        settings.host,
        " or ".join(f"{page}/#token={settings.api_key}" for page in pages),
    )


def _local_url(url: str) -> str:
    # A wildcard address is not something to open: show loopback instead.
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


def is_protected(path: str) -> bool:
    """``True`` for the paths that need the key: ``/v1`` and below, ``/metrics`` and below."""
    return any(path == p or path.startswith(p + "/") for p in ("/v1", "/metrics"))


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` value, else ``None``.

    The scheme is case-insensitive (RFC 9110 §11.1).
    """
    if authorization is None:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


class StreamTokens:
    """Issues and checks short-lived stream tokens bound to one conversation.

    A token is ``<expiry>.<signature>``: the expiry in milliseconds of
    ``clock`` (:func:`trio.current_time` by default), and URL-safe base64 of
    HMAC-SHA256(secret, ``conversation_id + "\\n" + expiry``). Tokens die
    with the process (the secret is not kept): after a restart the page
    simply asks for a new one. Several workers behind a load balancer use
    :meth:`shared` instead, so a token issued by one opens a stream on any.

    Args:
        ttl: seconds a token stays valid.
        secret: the signing key; random (32 bytes) by default.
        clock: the time in seconds that expiries are counted on.
    """

    def __init__(
        self,
        ttl: float = STREAM_TOKEN_TTL,
        secret: bytes | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.ttl = ttl
        self._secret = secrets.token_bytes(32) if secret is None else secret
        self._clock = clock

    @classmethod
    def shared(
        cls, api_key: str, ttl: float = STREAM_TOKEN_TTL, clock: Callable[[], float] = time.time
    ) -> StreamTokens:
        """Tokens that every worker given the same ``api_key`` issues and accepts
        alike (``serve --redis``: the page may get its token from one worker
        and open the stream on another).

        The secret is HMAC-SHA256(``api_key``, ``"trio-chatruns stream
        tokens"``), so knowing it takes the key, and the expiry is Unix time
        (:func:`time.time`), the clock that processes and machines share
        (Trio's clock is per process); clock skew between machines shifts a
        token's 60 s by as much.
        """
        secret = hmac.new(api_key.encode(), b"trio-chatruns stream tokens", hashlib.sha256)
        return cls(ttl, secret.digest(), clock)

    def rotate(self) -> None:
        """Invalidate every token issued so far (a new secret). Synchronous.

        Open streams are not affected; a browser's next reconnect gets 401
        and the page fetches a new token, as after a restart.
        """
        self._secret = secrets.token_bytes(32)

    def _sign(self, conversation_id: str, expiry: str) -> str:
        digest = hmac.new(
            self._secret, f"{conversation_id}\n{expiry}".encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def issue(self, conversation_id: str) -> str:
        """A token for ``conversation_id``'s streams, valid :attr:`ttl` seconds from now."""
        expiry = str(int((self._clock() + self.ttl) * 1000))
        return f"{expiry}.{self._sign(conversation_id, expiry)}"

    def verify(self, token: str, conversation_id: str) -> bool:
        """Is ``token`` one of ours, for ``conversation_id``, and not expired?

        The signature is compared in constant time.
        """
        match = _TOKEN.fullmatch(token)
        if match is None:
            return False
        expiry, signature = match.groups()
        expected = self._sign(conversation_id, expiry)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return False
        return int(expiry) / 1000 > self._clock()


def route_path(scope: Any) -> str:
    """The request path below the app's mount point.

    In an ASGI scope, ``path`` includes ``root_path`` (the prefix a parent
    app mounted this one at: ASGI HTTP spec, and Starlette's ``Mount``), so
    the routes this app protects are matched on ``path`` without it: mounted
    at ``/chat``, ``/chat/v1/chat/runs`` is the protected ``/v1/chat/runs``.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


class ApiKeyAuth:
    """ASGI middleware requiring the API key on :func:`is_protected` paths.

    Args:
        app: the ASGI application it wraps.
        api_key: the key; ``None`` lets every request through.
        tokens: checks ``?access_token=`` on the stream routes.

    A request without credentials, or with wrong ones, gets ``401
    {"error": ...}`` with ``WWW-Authenticate: Bearer realm="trio-chatruns"``
    (plus ``error="invalid_token"`` when it sent something; RFC 6750 §3).
    """

    def __init__(self, app: Any, *, api_key: str | None, tokens: StreamTokens) -> None:
        self.app = app
        self._key = None if api_key is None else api_key.encode("utf-8")
        self._tokens = tokens

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self._key is None
            or scope["type"] not in ("http", "websocket")
            or not is_protected(route_path(scope))
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        sent = _header(scope, b"authorization") is not None or b"access_token=" in scope.get(
            "query_string", b""
        )
        challenge = _REALM + (', error="invalid_token"' if sent else "")
        message = (
            "invalid API key or stream token"
            if sent
            else "this server needs an API key: send Authorization: Bearer <key>"
        )
        await refuse(scope, receive, send, 401, message, {"WWW-Authenticate": challenge})

    def _authorized(self, scope: Any) -> bool:
        assert self._key is not None
        presented = bearer_token(_header(scope, b"authorization"))
        if presented is not None:
            return hmac.compare_digest(presented.encode("utf-8"), self._key)
        stream = _STREAM_PATH.fullmatch(route_path(scope))
        if stream is None:
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        tokens = query.get("access_token", [])
        return len(tokens) == 1 and self._tokens.verify(tokens[0], stream.group(1))


async def _stream_token(request: Request) -> Response:
    conversation_id: str = request.path_params["conversation_id"]
    if not valid_conversation_id(conversation_id):
        raise ApiError(400, "invalid conversation id: 1-128 characters of [A-Za-z0-9._:-]")
    tokens: StreamTokens = request.app.state.stream_tokens
    return JSONResponse(
        {"token": tokens.issue(conversation_id), "expires_in": tokens.ttl},
        headers={"Cache-Control": "no-store"},
    )


def stream_token_route() -> Route:
    """``POST /v1/chat/runs/{conversation_id}/stream-token`` → ``{"token", "expires_in"}``.

    The token opens ``GET .../stream?access_token=`` and ``WS
    .../ws?access_token=`` of that conversation for ``expires_in`` seconds.
    Needs the API key like every ``/v1`` route; it reads
    ``app.state.stream_tokens``.
    """
    return Route("/v1/chat/runs/{conversation_id}/stream-token", _stream_token, methods=["POST"])
