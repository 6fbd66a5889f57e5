"""``GET /openapi.json``: the HTTP API described in OpenAPI 3.1, written by hand.

Every route of :meth:`ChatServer.app <.app.ChatServer>` is here with every
status it answers and the shape of every body; a test checks the paths and
methods against the app's routes both ways, and a property-based test drives
each operation from this schema against a real server. The WebSocket route
is listed as a ``GET`` with ``x-websocket: true``: a plain ``GET`` without
the upgrade is ``404``.

Times are ISO 8601 UTC strings (``format: date-time``). Limits that are
settings (the prompt's length, the body's size) are described in words, not
as schema constraints, since they change with the command line.
"""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

from .config import CONVERSATION_ID_PATTERN
from .sse import MAX_SEQ_DIGITS

__all__ = ["openapi_schema"]

_ID_PATTERN = f"^{CONVERSATION_ID_PATTERN.pattern}$"
_SEQ_PATTERN = f"^[0-9]{{1,{MAX_SEQ_DIGITS}}}$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC wall-clock time"}
_NULLABLE_TIME = {**_TIME, "type": ["string", "null"]}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Status": {
        "type": "string",
        "enum": [
            "queued",
            "running",
            "waiting_approval",
            "waiting_hitl",
            "completed",
            "failed",
            "cancelled",
        ],
    },
    "Record": {
        "type": "object",
        "required": [
            "conversation_id",
            "run_id",
            "status",
            "started_at",
            "updated_at",
            "terminated_at",
            "latest_seq",
            "current_tool",
            "last_error",
        ],
        "properties": {
            "conversation_id": {"type": "string"},
            "run_id": {"type": "string"},
            "status": _ref("Status"),
            "started_at": _TIME,
            "updated_at": _TIME,
            "terminated_at": _NULLABLE_TIME,
            "latest_seq": {"type": "integer", "minimum": 0},
            "current_tool": {"type": ["string", "null"]},
            "last_error": {"type": ["string", "null"]},
        },
    },
    "Event": {
        "type": "object",
        "required": ["conversation_id", "run_id", "seq", "timestamp", "frame"],
        "properties": {
            "conversation_id": {"type": "string"},
            "run_id": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1},
            "timestamp": _TIME,
            "frame": {"description": "what the model pushed, usually an object with a type"},
        },
    },
    "Gap": {
        "type": "object",
        "required": ["from", "to"],
        "properties": {
            "from": {"type": "integer", "minimum": 1},
            "to": {"type": "integer", "minimum": 1},
        },
    },
    "Events": {
        "type": "object",
        "required": ["run_id", "status", "latest_seq", "events", "gap"],
        "properties": {
            "run_id": {"type": "string"},
            "status": _ref("Status"),
            "latest_seq": {"type": "integer", "minimum": 0},
            "events": {"type": "array", "items": _ref("Event")},
            "gap": {"oneOf": [_ref("Gap"), {"type": "null"}]},
        },
    },
    "Runs": {
        "type": "object",
        "required": ["runs"],
        "properties": {"runs": {"type": "array", "items": _ref("Record")}},
    },
    "StartRequest": {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "description": "not only whitespace; at most --max-prompt-chars characters",
            },
            "if_active": {
                "type": "string",
                "enum": ["reject", "interrupt", "enqueue"],
                "default": "reject",
                "description": "what to do when the conversation has an active run",
            },
        },
    },
    "Started": {
        "type": "object",
        "required": ["run_id", "conversation_id", "status"],
        "properties": {
            "run_id": {"type": "string"},
            "conversation_id": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "queued"]},
        },
    },
    "Conversations": {
        "type": "object",
        "required": ["conversations"],
        "properties": {
            "conversations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "title", "turns", "created_at", "updated_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "title": {"type": "string", "description": "the first prompt"},
                        "turns": {"type": "integer", "minimum": 0},
                        "created_at": _TIME,
                        "updated_at": _TIME,
                    },
                },
            }
        },
    },
    "Message": {
        "type": "object",
        "required": ["role", "content", "run_id", "status", "created_at"],
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {"type": "string"},
            "run_id": {"type": "string"},
            "status": {
                "type": "string",
                "description": "user: sent; assistant: a run status, or lost",
            },
            "created_at": _TIME,
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "error": {"type": ["string", "null"]},
            "gap": {"oneOf": [_ref("Gap"), {"type": "null"}]},
        },
    },
    "Messages": {
        "type": "object",
        "required": ["conversation_id", "messages"],
        "properties": {
            "conversation_id": {"type": "string"},
            "messages": {"type": "array", "items": _ref("Message")},
        },
    },
    "Interrupted": {
        "type": "object",
        "required": ["interrupted", "run_id"],
        "properties": {"interrupted": {"const": True}, "run_id": {"type": "string"}},
    },
    "StreamToken": {
        "type": "object",
        "required": ["token", "expires_in"],
        "properties": {"token": {"type": "string"}, "expires_in": {"type": "number"}},
    },
    "Stats": {
        "type": "object",
        "required": ["registry", "server"],
        "properties": {
            "registry": {
                "type": "object",
                "description": "RegistryStats: counts now and totals since start",
                "additionalProperties": {"type": ["integer", "null"]},
            },
            "server": {
                "type": "object",
                "description": "ServerStats: the HTTP layer's counters",
                "additionalProperties": {"type": "integer"},
            },
        },
    },
}

_CID = {
    "name": "conversation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": _ID_PATTERN},
}
_AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "the last seq the client has (0: none)",
    "schema": {"type": "string", "pattern": _SEQ_PATTERN},
}
_RUN_ID = {
    "name": "run_id",
    "in": "query",
    "required": False,
    "description": "the run the cursor belongs to",
    "schema": {"type": "string", "pattern": _ID_PATTERN},
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "<run_id>:<seq>; wins over the query",
    "schema": {"type": "string"},
}
_BAD_ID = _error("bad conversation id or cursor")
_NO_RUN = _error("no run for this conversation")
_OVER = {"description": "the run is over and every frame was delivered, or not the current run"}
_CLOSING = _error("the server is shutting down")
_BUSY = _error("too many runs or streams; see Retry-After")
_TEXT = {"schema": {"type": "string"}}

_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "The browser page",
            "responses": {"200": {"description": "HTML", "content": {"text/html": _TEXT}}},
        }
    },
    "/app.js": {
        "get": {
            "summary": "The page's script",
            "responses": {
                "200": {"description": "JavaScript", "content": {"text/javascript": _TEXT}}
            },
        }
    },
    "/v1/stats": {
        "get": {
            "summary": "Registry and server counters",
            "responses": {"200": _json(_ref("Stats"), "the counters")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format 0.0.4)",
            "responses": {"200": {"description": "metrics", "content": {"text/plain": _TEXT}}},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
        }
    },
    "/v1/chat/runs": {
        "get": {
            "summary": "List runs, newest first",
            "parameters": [
                {
                    "name": "active",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                }
            ],
            "responses": {
                "200": _json(_ref("Runs"), "the runs"),
                "400": _error("active is not true, false, 1 or 0"),
            },
        }
    },
    "/v1/chat/runs/{conversation_id}": {
        "post": {
            "summary": "Start a run",
            "parameters": [_CID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("StartRequest")}},
            },
            "responses": {
                "202": _json(_ref("Started"), "the run started, or is queued (if_active)"),
                "400": _error(
                    "bad id, not JSON, no non-empty string prompt, prompt too long, bad if_active"
                ),
                "408": _error("the body was not received within --body-timeout"),
                "409": _error("the conversation has an active run (if_active reject)"),
                "413": _error("the body is larger than --max-body-bytes"),
                "429": _BUSY,
                "503": _error(
                    "the server is shutting down, the history could not store the prompt, "
                    "or (--redis) Redis cannot be reached"
                ),
            },
        },
        "get": {
            "summary": "The conversation's current run",
            "parameters": [_CID],
            "responses": {
                "200": _json(_ref("Record"), "the record"),
                "400": _BAD_ID,
                "404": _NO_RUN,
            },
        },
    },
    "/v1/chat/runs/{conversation_id}/events": {
        "get": {
            "summary": "Buffered events after a cursor (the stream's answers, at once)",
            "parameters": [_CID, _AFTER, _RUN_ID, _LAST_EVENT_ID],
            "responses": {
                "200": _json(_ref("Events"), "the buffered events after the cursor"),
                "204": _OVER,
                "400": _BAD_ID,
                "404": _NO_RUN,
            },
        }
    },
    "/v1/chat/runs/{conversation_id}/stream": {
        "get": {
            "summary": "The run as Server-Sent Events",
            "parameters": [_CID, _AFTER, _RUN_ID, _LAST_EVENT_ID],
            "responses": {
                "200": {
                    "description": "text/event-stream: events, gap, end, lagged (docs/server.md)",
                    "content": {"text/event-stream": _TEXT},
                },
                "204": _OVER,
                "400": _BAD_ID,
                "404": _NO_RUN,
                "429": _BUSY,
                "503": _error("the server is shutting down, or (--redis) Redis cannot be reached"),
            },
        }
    },
    "/v1/chat/runs/{conversation_id}/ws": {
        "get": {
            "summary": "The run over WebSocket (JSON text messages, docs/server.md)",
            "x-websocket": True,
            "parameters": [_CID, _AFTER, _RUN_ID, _LAST_EVENT_ID],
            "responses": {
                "101": {"description": "upgraded; refusals close 4400/4404/4429/4503"},
                "404": _error("requested without a WebSocket upgrade"),
            },
        }
    },
    "/auth.js": {
        "get": {
            "summary": "The page's API-key prompt",
            "responses": {
                "200": {"description": "JavaScript", "content": {"text/javascript": _TEXT}}
            },
        }
    },
    "/app.css": {
        "get": {
            "summary": "The page's style sheet",
            "responses": {"200": {"description": "CSS", "content": {"text/css": _TEXT}}},
        }
    },
    "/v1/chat/runs/{conversation_id}/stream-token": {
        "post": {
            "summary": "A short-lived token opening this conversation's streams (?access_token=)",
            "parameters": [_CID],
            "responses": {
                "200": _json(_ref("StreamToken"), "the token and its lifetime in seconds"),
                "400": _BAD_ID,
            },
        }
    },
    "/v1/conversations": {
        "get": {
            "summary": "Conversations with history, most recently updated first",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                }
            ],
            "responses": {
                "200": _json(_ref("Conversations"), "the conversations"),
                "400": _error("bad limit"),
                "404": _error("history is not enabled on this server"),
            },
        }
    },
    "/v1/conversations/{conversation_id}/messages": {
        "get": {
            "summary": "A conversation's transcript, oldest first",
            "parameters": [_CID],
            "responses": {
                "200": _json(_ref("Messages"), "the messages ([] for none yet)"),
                "400": _BAD_ID,
                "404": _error("history is not enabled on this server"),
            },
        }
    },
    "/v1/conversations/{conversation_id}": {
        "delete": {
            "summary": "Interrupt the conversation's runs and delete its history",
            "parameters": [_CID],
            "responses": {
                "204": {"description": "deleted"},
                "400": _BAD_ID,
                "404": _error("no history and no active run"),
            },
        }
    },
    "/v1/chat/runs/{conversation_id}/interrupt": {
        "post": {
            "summary": "Interrupt the active run",
            "parameters": [_CID],
            "responses": {
                "200": _json(_ref("Interrupted"), "interrupted (idempotent while it unwinds)"),
                "400": _BAD_ID,
                "404": _error("no active run"),
            },
        }
    },
}

_UNAVAILABLE = _error(
    "with --redis: Redis cannot be reached now (see Retry-After); the worker reconnects by itself"
)
# Every route that reads or changes runs or history needs Redis with --redis.
for _path, _operations in _PATHS.items():
    if _path.startswith("/v1/") and not _path.endswith(("/ws", "/stream-token")):
        for _operation in _operations.values():
            _operation["responses"].setdefault("503", _UNAVAILABLE)
_PATHS["/v1/chat/runs/{conversation_id}"]["post"]["responses"]["501"] = _error(
    "this run backend does not have the if_active policy asked for (nothing changed)"
)


def _with_guards(paths: dict[str, Any]) -> dict[str, Any]:
    """Add the answers of the security layers (docs/server.md, "Security") to every operation.

    Before any route: a missing or malformed ``Host`` is ``400``, one the
    server does not answer for ``421``, a foreign ``Origin`` ``403``; a body
    that is not ``application/json`` is ``415``; under ``/v1`` and
    ``/metrics``, a request without the API key (when one is set) ``401``.
    """
    paths = copy.deepcopy(paths)
    for path, item in paths.items():
        for operation in item.values():
            responses = operation["responses"]
            responses.setdefault("400", _error("missing or malformed Host header"))
            responses.setdefault("403", _error("cross-origin request: a foreign Origin"))
            responses.setdefault("421", _error("a Host this server does not answer for"))
            if "requestBody" in operation:
                responses.setdefault("415", _error("a body that is not application/json"))
            if path.startswith(("/v1/", "/metrics")):
                responses.setdefault("401", _error("an API key is set and was not sent"))
            operation["responses"] = dict(sorted(responses.items()))
    return paths


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server's HTTP API (a fresh copy)."""
    try:
        version = metadata.version("trio-chatruns")
    except metadata.PackageNotFoundError:  # pragma: no cover - not installed
        version = "0"
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "trio-chatruns chat server",
                "version": version,
                "description": "Resumable chat runs over HTTP, SSE and WebSocket; "
                'see docs/server.md. Every error body is {"error": message}; '
                "unknown paths answer 404 and wrong methods 405.",
            },
            "paths": _with_guards(_PATHS),
            "components": {"schemas": _SCHEMAS},
        }
    )
