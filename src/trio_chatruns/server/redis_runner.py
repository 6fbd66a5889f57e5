"""Opening what ``serve --redis URL`` runs on: a coredis client, the
conversation history in Redis, and the Redis run backend, in that order (so
they close in the reverse one: the runs and their run-end hooks first, the
history after, the client last).

Imported by :mod:`.runner` only when ``ServerSettings.redis`` is set: it
needs the ``[redis]`` extra (coredis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .. import RegistryConfig
    from ..redis import RedisChatRuns
    from .conversations import ConversationHistory

__all__ = ["REDIS_EXTRA_HINT", "open_redis_parts", "redact", "require_coredis"]

REDIS_EXTRA_HINT = "--redis needs the [redis] extra (coredis): pip install 'trio-chatruns[redis]'"
"""The message when ``serve --redis`` runs without coredis installed."""

CONNECT_TIMEOUT = 5.0
"""Seconds ``serve --redis`` waits for Redis to answer at start before it exits."""


def require_coredis() -> None:
    """Raise ``ImportError`` naming the ``[redis]`` extra if coredis is missing."""
    try:
        import coredis  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{REDIS_EXTRA_HINT} ({exc})") from None


def redact(url: str) -> str:
    """``url`` without its password (for logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


@asynccontextmanager
async def open_redis_parts(
    url: str, registry_config: RegistryConfig | None, history_messages: int
) -> AsyncIterator[tuple[RedisChatRuns, ConversationHistory]]:
    """Open the Redis at ``url``: yields ``(runs, history)`` for a ``ChatServer``.

    The runs are opened with ``on_run_end=history.on_run_end``.

    Raises:
        ImportError: coredis is not installed (the message names the extra).
        trio_chatruns.redis.RedisUnavailable: Redis cannot be reached at
            opening (later outages are retried, never raised here).
    """
    require_coredis()
    import coredis

    from ..redis import RedisUnavailable

    async with coredis.Redis.from_url(url) as client:
        # Fail at start, naming the URL, rather than wait for a Redis that is
        # not there (later outages are answered 503 and retried).
        with trio.move_on_after(CONNECT_TIMEOUT) as scope:
            try:
                await client.ping()
            except (coredis.exceptions.ConnectionError, TimeoutError, OSError) as exc:
                raise RedisUnavailable("start", f"{type(exc).__name__}: {exc}") from None
        if scope.cancelled_caught:
            raise RedisUnavailable("start", f"no answer within {CONNECT_TIMEOUT:g} s")
        async with _open_parts(client, url, registry_config, history_messages) as parts:
            yield parts


@asynccontextmanager
async def _open_parts(
    client: Any, url: str, registry_config: RegistryConfig | None, history_messages: int
) -> AsyncIterator[tuple[RedisChatRuns, ConversationHistory]]:
    from ..redis import open_redis_chat_runs
    from .redis_history import open_redis_conversation_history

    async with (
        open_redis_conversation_history(
            client, history_messages=history_messages, where=redact(url)
        ) as history,
        open_redis_chat_runs(client, registry_config, on_run_end=history.on_run_end) as runs,
    ):
        yield runs, history
