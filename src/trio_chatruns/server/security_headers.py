"""Security headers on every HTTP answer: CSP, nosniff, no referrer, no framing.

:class:`SecurityHeaders` is ASGI middleware that adds, to each response (the
page, its scripts, the JSON API, the SSE streams, errors and refusals), any
of these headers the route did not set itself:

- ``Content-Security-Policy`` (:data:`CONTENT_SECURITY_POLICY`): scripts,
  styles, images and connections from this origin only, nothing inline,
  nothing from other origins, no ``<base>``, forms post here only, and no
  page may frame this one (``frame-ancestors 'none'``; W3C CSP Level 3).
- ``X-Frame-Options: DENY``: the same for browsers without CSP 2.
- ``X-Content-Type-Options: nosniff``: a JSON answer is never run as a script
  or a stylesheet (Fetch standard, "X-Content-Type-Options").
- ``Referrer-Policy: no-referrer``: URLs (which may carry a stream token) are
  never sent to another site.
- ``Cross-Origin-Resource-Policy: same-origin``: other sites cannot embed an
  answer as an image, script or media (they may still read it through CORS
  when their origin is listed with ``--allow-origin``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "SecurityHeaders"]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
"""The policy: same-origin scripts, styles, images and connections; nothing else, no framing."""

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
"""The headers added to every answer, as ASGI ``(name, value)`` byte pairs."""

_STARTS = ("http.response.start", "websocket.http.response.start")


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP answer.

    A header the application already set is left as it is. WebSocket
    handshakes that are refused get them too; accepted WebSockets carry no
    HTTP answer to add them to.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] in _STARTS:
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
