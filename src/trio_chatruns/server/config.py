"""Server settings and request limits.

:class:`ServerSettings` is one frozen attrs record holding everything the
server needs besides the registry: where to bind, the request limits, the
stream timings and which producer to run. Every field has a default, so
``ServerSettings()`` is the embedded configuration ``trio-chatruns serve`` uses.
Values out of range raise ``ValueError``/``TypeError`` at construction.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from attrs import validators as v

from .hosts import normalize_origin, parse_allowed_host

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ServerSettings",
    "valid_conversation_id",
]

DEFAULT_HOST = "127.0.0.1"
"""Loopback only: exposing the server is a deliberate choice (``--host 0.0.0.0``)."""
DEFAULT_PORT = 8000

CONVERSATION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""What a conversation id in a URL may be: 1 to 128 of ``[A-Za-z0-9._:-]``."""


def valid_conversation_id(value: str) -> bool:
    """Return ``True`` if ``value`` is an acceptable conversation id."""
    return CONVERSATION_ID_PATTERN.fullmatch(value) is not None


_API_KEY = re.compile(r"[\x21-\x7e]{1,512}")


def _check_api_key(instance: Any, attribute: Any, value: str | None) -> None:
    # It travels in an Authorization header: visible ASCII, no spaces.
    if value is not None and (not isinstance(value, str) or _API_KEY.fullmatch(value) is None):
        raise ValueError("api_key must be 1-512 visible ASCII characters (no spaces)")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"expected a sequence of strings, not {value!r}")
    return tuple(value)


def _hosts(value: Any) -> tuple[str, ...]:
    hosts = _strings(value)
    for host in hosts:
        parse_allowed_host(host)  # raises ValueError naming it
    return hosts


def _origins(value: Any) -> tuple[str, ...]:
    return tuple(normalize_origin(o) for o in _strings(value))  # raises ValueError naming it


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _check_redis_url(instance: Any, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str)
        or not value.startswith(_REDIS_SCHEMES)
        or value in _REDIS_SCHEMES
    ):
        shown = value
        if isinstance(value, str) and "@" in value:  # never echo a password
            shown = "***@" + value.rpartition("@")[2]
        raise ValueError(
            f"redis must be a URL such as redis://127.0.0.1:6379/0 "
            f"(redis://, rediss:// or unix://), not {shown!r}"
        )


_pos_int: Any = [v.instance_of(int), v.ge(1)]
_pos_float: Any = [v.instance_of((int, float)), v.gt(0)]


@attrs.frozen(kw_only=True)
class ServerSettings:
    """Configuration of the HTTP layer (the registry has its own ``RegistryConfig``).

    Attributes:
        host (str): interface to bind; default ``127.0.0.1``.
        port (int): TCP port; ``0`` picks a free one (tests).
        max_body_bytes (int): largest request body accepted, bytes (413 past it).
        max_prompt_chars (int): longest prompt accepted, characters (400 past it).
        max_active_runs (int): active runs across all conversations (429 past it).
        max_subscribers_per_run (int): open SSE/WebSocket streams per run
            (429 past it).
        heartbeat_interval (float): seconds of silence after which a stream
            sends a heartbeat so proxies keep it open: a ``: ping`` comment on
            SSE, a ``{"type": "ping"}`` message on WebSocket.
        body_timeout (float): seconds a client has to send a whole request
            body (408 past it), so a body that never ends cannot hold a
            connection (or a graceful shutdown) forever.
        sse_retry_ms (int): the ``retry:`` reconnection delay sent to
            EventSource clients, milliseconds.
        websocket_ping_interval (float | None): seconds between WebSocket
            protocol pings sent by hypercorn (``None``, the default: none). Off
            by default because hypercorn 0.18's ping task outlives a closed
            connection by up to one interval, which holds a graceful shutdown
            until its timeout; WebSocket streams send ``{"type": "ping"}``
            messages every ``heartbeat_interval`` of silence instead.
        graceful_timeout (float): seconds hypercorn waits for open connections
            to finish after shutdown starts, before cancelling them.
        db (str): the SQLite file holding conversation history, or
            ``":memory:"`` (the default here, so embedding writes no file;
            ``trio-chatruns serve`` defaults to ``trio-chatruns.db`` in the
            current directory).
        history_messages (int): the most earlier messages of the
            conversation handed to the model with a prompt (oldest dropped
            first); ``0`` sends each prompt alone.
        send_timeout (float): seconds one write to a client's socket may take;
            a client that reads nothing for that long (its receive window
            full) has its connection closed, which releases its stream, its
            subscription and its stream slot.
        backlog (int): the listen backlog: connections the kernel queues
            before the server accepts them, so thousands of ``EventSource``
            clients reconnecting at once after a restart are not reset.
        access_log (bool): log every request at INFO to the
            ``trio_chatruns.access`` logger (``--no-access-log`` turns it off).
        expose_errors (bool): send clients the whole text of a model's
            exception (``--expose-errors``); off by default: clients get the
            type and a generic message, the log gets the rest.
        api_key (str | None): when set, every ``/v1`` and ``/metrics`` request
            needs ``Authorization: Bearer <api_key>`` (401 otherwise; see
            :mod:`trio_chatruns.server.auth`). Not shown in ``repr``.
        allowed_hosts (tuple[str, ...]): more ``Host`` values to accept besides
            the bound address (and the loopback names when it is loopback):
            ``name``, ``name:port``, ``[v6]:port``, or ``*`` for any; see
            :mod:`trio_chatruns.server.cross_site`.
        allowed_origins (tuple[str, ...]): more ``Origin`` values to accept
            besides the server's own (``http(s)://host[:port]``), stored
            normalized; cross-origin reads from them are allowed through CORS.
        redis (str | None): ``redis://HOST:PORT/DB`` (or ``rediss://``,
            ``unix://``): keep runs and the conversation history in this
            Redis, shared by every worker started with the same URL (``db``
            is then unused). ``None`` (the default): the in-memory registry
            and the SQLite history. Needs the ``[redis]`` extra. Not shown in
            ``repr`` (a URL may hold a password).
        redis_lease (float): with ``redis``, seconds a worker holds the runs
            it owns without renewing (renewed every third of it): once a
            dead worker's lease lapses, its runs end ``failed`` for every
            other worker. Default 10 (``trio_chatruns.redis.open_redis_chat_runs``'s
            ``lease``); give every worker the same.
        tune_gc (bool): while serving, freeze the objects alive at startup
            and raise the garbage collector's young threshold (see
            :mod:`trio_chatruns.server.gc_tuning`; process-wide, undone when
            :func:`serve` returns). Off by default here, so embedding leaves
            the collector alone; ``trio-chatruns serve`` turns it on unless
            given ``--gc-defaults``.
    """

    host: str = attrs.field(default=DEFAULT_HOST, validator=v.instance_of(str))
    port: int = attrs.field(
        default=DEFAULT_PORT, validator=[v.instance_of(int), v.ge(0), v.le(65535)]
    )
    max_body_bytes: int = attrs.field(default=64 * 1024, validator=_pos_int)
    max_prompt_chars: int = attrs.field(default=32 * 1024, validator=_pos_int)
    max_active_runs: int = attrs.field(default=64, validator=_pos_int)
    max_subscribers_per_run: int = attrs.field(default=32, validator=_pos_int)
    heartbeat_interval: float = attrs.field(default=15.0, validator=_pos_float)
    body_timeout: float = attrs.field(default=10.0, validator=_pos_float)
    sse_retry_ms: int = attrs.field(default=1000, validator=_pos_int)
    websocket_ping_interval: float | None = attrs.field(
        default=None, validator=v.optional(_pos_float)
    )
    graceful_timeout: float = attrs.field(default=5.0, validator=_pos_float)
    db: str = attrs.field(default=":memory:", validator=[v.instance_of(str), v.min_len(1)])
    history_messages: int = attrs.field(default=20, validator=[v.instance_of(int), v.ge(0)])
    send_timeout: float = attrs.field(default=30.0, validator=_pos_float)
    backlog: int = attrs.field(default=2048, validator=_pos_int)
    access_log: bool = attrs.field(default=True, validator=v.instance_of(bool))
    expose_errors: bool = attrs.field(default=False, validator=v.instance_of(bool))
    api_key: str | None = attrs.field(default=None, validator=_check_api_key, repr=False)
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_hosts)
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=_origins)
    redis: str | None = attrs.field(default=None, validator=_check_redis_url, repr=False)
    redis_lease: float = attrs.field(default=10.0, validator=_pos_float)
    tune_gc: bool = attrs.field(default=False, validator=v.instance_of(bool))
