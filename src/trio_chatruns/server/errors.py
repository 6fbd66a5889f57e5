"""What the route modules share: the API error and the request helpers.

:class:`ApiError` is raised by a handler (or the auth middleware) and answered
as ``{"error": message}`` by ``routes.error_handlers``; :func:`request_server`
and :func:`request_conversation_id` read a request's server and its checked
``{conversation_id}``. A module of its own, below ``routes``,
``conversation_routes`` and ``auth``, so none of them imports another for
these (no import cycle, STYLE.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import valid_conversation_id

if TYPE_CHECKING:
    from starlette.requests import Request

    from .state import ServerState

__all__ = ["ApiError", "request_conversation_id", "request_server"]


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def request_server(request: Request) -> ServerState:
    """The server (a :class:`~.app.ChatServer`) whose app answers ``request``."""
    return request.app.state.chat_server  # type: ignore[no-any-return]


def request_conversation_id(request: Request) -> str:
    """The request's ``{conversation_id}`` path parameter.

    Raises:
        ApiError: ``400`` when it is not 1-128 characters of ``[A-Za-z0-9._:-]``.
    """
    conversation_id: str = request.path_params["conversation_id"]
    if not valid_conversation_id(conversation_id):
        raise ApiError(400, "invalid conversation id: 1-128 characters of [A-Za-z0-9._:-]")
    return conversation_id
