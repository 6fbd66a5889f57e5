"""The conversation routes: list conversations, read a transcript, delete one.

``GET /v1/conversations``, ``GET /v1/conversations/{id}/messages`` and
``DELETE /v1/conversations/{id}``; errors are ``{"error": ...}`` as on the
other routes (``docs/server.md`` has the table). The history itself lives in
:mod:`trio_chatruns.server.conversations`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.routing import Route

from .errors import ApiError, request_conversation_id, request_server
from .history import iso_utc
from .sse import JSONResponse

if TYPE_CHECKING:
    from starlette.requests import Request

    from .conversations import ConversationHistory

__all__ = ["MAX_LIST_LIMIT", "conversation_routes"]

MAX_LIST_LIMIT = 500
"""The most conversations one ``GET /v1/conversations`` lists (``?limit=``)."""


def _history(request: Request) -> ConversationHistory:
    history = request_server(request).history
    if history is None:
        raise ApiError(404, "conversation history is not enabled on this server")
    return history


async def list_conversations(request: Request) -> Response:
    """``GET /v1/conversations?limit=N`` → ``{"conversations": [...]}``, newest first."""
    history = _history(request)
    text = request.query_params.get("limit", "100")
    if not (text.isascii() and text.isdigit() and 1 <= len(text) <= 4):
        raise ApiError(400, f"limit must be a number from 1 to {MAX_LIST_LIMIT}")
    limit = int(text)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ApiError(400, f"limit must be a number from 1 to {MAX_LIST_LIMIT}")
    summaries = await history.store.conversations(limit=limit)
    return JSONResponse(
        {
            "conversations": [
                {
                    "id": s.id,
                    "title": s.title,
                    "turns": s.turns,
                    "created_at": iso_utc(s.created_at),
                    "updated_at": iso_utc(s.updated_at),
                }
                for s in summaries
            ]
        }
    )


async def conversation_messages(request: Request) -> Response:
    """``GET /v1/conversations/{id}/messages`` → ``{"conversation_id", "messages"}``, oldest first.

    A conversation with no stored turn answers an empty list: conversation
    ids are chosen by clients, and a new one has no history yet.
    """
    conversation_id = request_conversation_id(request)
    history = _history(request)
    turns = await history.store.turns(conversation_id)
    backend = request_server(request).backend
    return JSONResponse(
        {
            "conversation_id": conversation_id,
            "messages": await history.messages_json(backend, turns),
        }
    )


async def delete_conversation(request: Request) -> Response:
    """``DELETE /v1/conversations/{id}`` → 204: interrupts its runs, deletes its history.

    404 if the conversation has neither history nor an active run.
    """
    conversation_id = request_conversation_id(request)
    history = _history(request)
    interrupted = await history.forget(conversation_id, request_server(request).backend)
    deleted = await history.store.delete(conversation_id)
    if not deleted and not interrupted:
        raise ApiError(404, f"no conversation {conversation_id!r}")
    return Response(status_code=204)


def conversation_routes() -> list[Route]:
    """The conversation routes, for the app's route list."""
    prefix = "/v1/conversations"
    return [
        Route(prefix, list_conversations, methods=["GET"]),
        Route(prefix + "/{conversation_id}/messages", conversation_messages, methods=["GET"]),
        Route(prefix + "/{conversation_id}", delete_conversation, methods=["DELETE"]),
    ]
