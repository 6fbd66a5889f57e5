"""The JSON HTTP API: start, list, read, replay and interrupt runs.

Every error is ``{"error": "<message>"}`` with its status; see
``docs/server.md`` for the table. The handlers are thin: validation, one
call to the run backend (:mod:`.backend`; with the in-memory registry it
never checkpoints), a JSON answer. A backend that cannot reach its store
(Redis down) is answered ``503``. The streaming routes live in
:mod:`trio_chatruns.server.streams`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from typing import TYPE_CHECKING, Any

import trio
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route

from .. import ChatRunStatus, RunAlreadyActive, RunQueueFull
from .backend import BackendUnavailable
from .errors import ApiError, request_conversation_id, request_server
from .producers import ChatRequest, make_producer
from .sse import JSONResponse, event_to_json, record_to_json, to_json
from .sse_stream import RETRY_AFTER_SECONDS, SSEStream
from .streams import StreamRefusal, check_cursor, cursor_from_request
from .strict_json import loads_strict

if TYPE_CHECKING:
    from starlette.requests import Request

    from .backend import RunBackend
    from .state import ServerState

__all__ = ["RETRY_AFTER_SECONDS", "ApiError", "api_routes", "error_handlers"]

logger = logging.getLogger("trio_chatruns.server")

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


def _running_here(backend: RunBackend) -> int:
    """Runs whose producers run in this process now (queued ones wait: not counted)."""
    return sum(1 for r in backend.active_here() if r.status is not ChatRunStatus.QUEUED)


def too_many(message: str) -> ApiError:
    """A ``429`` with its ``Retry-After`` header."""
    return ApiError(429, message, {"Retry-After": str(RETRY_AFTER_SECONDS)})


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def _read_body(server: ServerState, request: Request) -> bytes:
    """The request body, read within the limits of ``server.settings``.

    Raises:
        ApiError: ``413`` over ``max_body_bytes``; ``408`` not complete within
            ``body_timeout`` seconds; ``503`` the server began shutting down
            meanwhile; ``400`` a malformed ``Content-Length``.
        _ClientGone: the client disconnected mid-body (answered quietly).
    """
    settings = server.settings
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if _CONTENT_LENGTH.fullmatch(declared) is None:
            raise ApiError(400, "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
    body = bytearray()
    with (
        trio.move_on_after(settings.body_timeout) as timeout,
        server.track_body_read() as shutdown_scope,
    ):
        try:
            # aclosing: leaving early must finalize Starlette's generator now, in
            # this task, not whenever the garbage collector gets to it.
            async with contextlib.aclosing(request.stream()) as chunks:
                async for chunk in chunks:
                    body += chunk
                    if len(body) > limit:
                        raise ApiError(413, f"request body larger than {limit} bytes")
        except ClientDisconnect:
            raise _ClientGone from None
    if shutdown_scope.cancelled_caught:
        raise ApiError(503, "server is shutting down")
    if timeout.cancelled_caught:
        raise ApiError(408, f"request body not received within {settings.body_timeout:g} seconds")
    return bytes(body)


_POLICIES = ("reject", "interrupt", "enqueue")


async def start_run(request: Request) -> Response:
    """``POST /v1/chat/runs/{conversation_id}`` with ``{"prompt": str, "if_active"?: str}`` → 202.

    ``if_active`` is the start policy when the conversation has an active
    run (``StartPolicy``): ``reject`` (the default: 409), ``interrupt``
    (stop it, then start this one) or ``enqueue`` (start this one after the
    runs before it); a run that has to wait answers ``"status": "queued"``,
    a full queue 429. With history on, the prompt is stored before the 202.
    """
    server = request_server(request)
    conversation_id = request_conversation_id(request)
    body = await _read_body(server, request)
    try:
        payload: Any = loads_strict(body)
    except ValueError as exc:
        raise ApiError(400, f'{exc}; expected {{"prompt": "..."}}') from None
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, 'body must be a JSON object with a non-empty string "prompt"')
    if len(prompt) > server.settings.max_prompt_chars:
        raise ApiError(400, f"prompt longer than {server.settings.max_prompt_chars} characters")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's \ud800 escapes can name half a surrogate pair: not text.
        raise ApiError(400, "prompt is not valid Unicode (it holds a lone surrogate)") from None
    if_active = payload.get("if_active", "reject")
    if if_active not in _POLICIES:
        raise ApiError(
            400,
            '"if_active" must be "reject", "interrupt" or "enqueue", '
            f"got {to_json(if_active)[:60]}",
        )
    history = server.history
    prepared = None
    if history is not None and not history.has_pending(conversation_id):
        # Read the history now, so a run that starts at once does not wait for the disk.
        prepared = await history.prepare(conversation_id, prompt)
    # No checkpoint from here on with the in-memory backend (its async methods
    # never checkpoint): the checks and the start are one atomic step. With
    # Redis, the start itself is atomic (one script) and the checks advisory.
    if history is not None and history.has_pending(conversation_id):
        prepared = None  # a turn came in meanwhile: read when the run starts
    if server.closing:
        raise ApiError(503, "server is shutting down")
    backend = server.backend
    current = await backend.get(conversation_id)
    busy = current is not None and current.status.is_active
    if if_active == "reject" and busy:
        raise ApiError(409, f"conversation {conversation_id!r} already has an active run")
    # A run queued behind an active one (interrupt, enqueue) never adds a running run.
    if not busy and _running_here(backend) >= server.settings.max_active_runs:
        raise too_many("too many active runs; try again later")
    if history is None:
        producer = make_producer(server.model, ChatRequest(conversation_id, prompt), server)
    else:
        position = history.reserve_position()
        producer = history.producer(
            server.model, conversation_id, prompt, position, prepared, reporter=server
        )
    try:
        run = await backend.try_start(conversation_id, producer, if_active=if_active)
    except RunAlreadyActive:
        raise ApiError(409, f"conversation {conversation_id!r} already has an active run") from None
    except RunQueueFull:
        raise too_many(f"conversation {conversation_id!r} has too many queued runs") from None
    except NotImplementedError as exc:
        # A start policy this backend does not have (yet): say so, change nothing.
        raise ApiError(501, f'"if_active": {if_active!r} is not available here: {exc}') from None
    except RuntimeError:
        raise ApiError(503, "server is shutting down") from None
    status = run.record.status.value
    if history is not None:
        try:
            await history.store_prompt(history.accept(run, prompt, position))
        except (sqlite3.Error, BackendUnavailable) as exc:
            # A turn the history does not hold would be answered and then
            # forgotten: stop the run and say so, rather than a bare 500.
            run.interrupt()
            logger.error(
                "prompt of run %s (conversation %r) not stored, run stopped: %r",
                run.run_id,
                conversation_id,
                exc,
            )
            raise ApiError(
                503, f"the conversation history could not store the prompt ({exc}); try again"
            ) from None
    return JSONResponse(
        {"run_id": run.run_id, "conversation_id": conversation_id, "status": status},
        status_code=202,
    )


async def list_runs(request: Request) -> Response:
    """``GET /v1/chat/runs?active=true|false`` → ``{"runs": [record...]}``, newest first."""
    active = request.query_params.get("active", "false").lower()
    if active not in ("true", "false", "1", "0"):
        raise ApiError(400, "active must be true, false, 1 or 0")
    records = await request_server(request).backend.list(active_only=active in ("true", "1"))
    return JSONResponse({"runs": [record_to_json(r) for r in records]})


async def get_run(request: Request) -> Response:
    """``GET /v1/chat/runs/{conversation_id}`` → the record, or 404."""
    conversation_id = request_conversation_id(request)
    record = await request_server(request).backend.get(conversation_id)
    if record is None:
        raise ApiError(404, f"no run for conversation {conversation_id!r}")
    return JSONResponse(record_to_json(record))


async def run_events(request: Request) -> Response:
    """``GET .../events?after=N&run_id=R``: the buffered events after a cursor, as JSON.

    Answers ``{"run_id", "status", "latest_seq", "events", "gap"}``.

    The cursor (``run_id`` and ``after``, or a ``Last-Event-ID`` header) gets
    the answers the stream gives it (:func:`~.streams.check_cursor`): ``404``
    no run, ``204`` a run that is over (another ``run_id``, or a resumed
    cursor at its end), ``400`` a malformed cursor or one past ``latest_seq``.
    ``gap`` is ``{"from", "to"}`` when the frames after ``after`` were trimmed
    (``events`` then starts at ``to + 1``), else ``null``.
    """
    conversation_id = request_conversation_id(request)
    try:
        cursor, resumed = cursor_from_request(request.headers, request.query_params)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    backend = request_server(request).backend
    record = await check_cursor(backend, conversation_id, cursor, resumed)
    if isinstance(record, StreamRefusal):
        if record.status == 204:
            return Response(status_code=204)
        raise ApiError(record.status, record.message)
    events = await backend.events(conversation_id, after=cursor.after)
    first = events[0].seq if events else record.latest_seq + 1
    gap = {"from": cursor.after + 1, "to": first - 1} if first > cursor.after + 1 else None
    return JSONResponse(
        {
            "run_id": record.run_id,
            "status": record.status.value,
            "latest_seq": record.latest_seq,
            "events": [event_to_json(e) for e in events],
            "gap": gap,
        }
    )


async def stream_run(request: Request) -> Response | SSEStream:
    """``GET .../stream``: Server-Sent Events; see :class:`SSEStream`."""
    try:
        cursor, resumed = cursor_from_request(request.headers, request.query_params)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return SSEStream(
        request_server(request), request.path_params["conversation_id"], cursor, resumed
    )


async def interrupt_run(request: Request) -> Response:
    """``POST .../interrupt`` → 200 ``{"interrupted": true, "run_id"}``, or 404.

    Idempotent while the run is active: a run already interrupted (by a
    client or by shutdown) whose producer is still unwinding answers 200
    again. Not refused during shutdown. 404 once the run has ended.
    """
    conversation_id = request_conversation_id(request)
    backend = request_server(request).backend
    record = await backend.get(conversation_id)
    if record is None or not await backend.interrupt(conversation_id):
        raise ApiError(404, f"no active run for conversation {conversation_id!r}")
    return JSONResponse({"interrupted": True, "run_id": record.run_id})


async def server_stats(request: Request) -> Response:
    """``GET /v1/stats`` → the registry's and the HTTP layer's counters."""
    import attrs

    server = request_server(request)
    return JSONResponse(
        {
            "registry": attrs.asdict(await server.backend.stats()),
            "server": attrs.asdict(server.stats()),
        }
    )


def api_routes() -> list[Route]:
    """The JSON and SSE routes (the WebSocket route is added by the app)."""
    prefix = "/v1/chat/runs"
    return [
        Route("/v1/stats", server_stats, methods=["GET"]),
        Route(prefix, list_runs, methods=["GET"]),
        Route(prefix + "/{conversation_id}", start_run, methods=["POST"]),
        Route(prefix + "/{conversation_id}", get_run, methods=["GET"]),
        Route(prefix + "/{conversation_id}/events", run_events, methods=["GET"]),
        Route(prefix + "/{conversation_id}/stream", stream_run, methods=["GET"]),
        Route(prefix + "/{conversation_id}/interrupt", interrupt_run, methods=["POST"]),
    ]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    # Redis down or restarting: the backend reconnects by itself; try again.
    assert isinstance(exc, BackendUnavailable)
    logger.warning("%s %s answered 503: %s", request.method, request.url.path, exc.message)
    return JSONResponse(
        {"error": exc.message},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is left to read this; hypercorn drops it. Not an application error.
    logger.debug("client disconnected before its request body was complete: %s", request.url.path)
    return Response(status_code=400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs nothing itself and re-raises after this answer, so the
    # traceback still reaches hypercorn's error log once.
    return JSONResponse({"error": "internal server error"}, status_code=500)


def error_handlers() -> dict[Any, Any]:
    """Starlette exception handlers turning every error into JSON."""
    return {
        ApiError: _api_error,
        BackendUnavailable: _unavailable,
        HTTPException: _http_error,
        _ClientGone: _client_gone,
        500: _internal_error,
    }
