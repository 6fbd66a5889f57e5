"""What the Redis backend raises when Redis itself fails, and the one place
that turns coredis's connection errors into it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from coredis.exceptions import ConnectionError as RedisConnectionError

from .._exceptions import ChatRunError

__all__ = ["TRANSIENT_ERRORS", "RedisUnavailable", "unavailable_on_connection_errors"]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, TimeoutError, OSError)
"""Errors that mean "Redis cannot be reached now" (down, restarting, loading
its data, a timeout), as opposed to a bug or a refused command."""


class RedisUnavailable(ChatRunError):
    """Redis could not be reached for an operation that needs it.

    Nothing was changed by the failed operation (every change is one Lua
    script, applied whole or not at all). Retry later: the backend reconnects
    on its own. A server answers 503 with this message.

    Attributes:
        operation (str): what was being done (``"try_start"``, ``"get"``...).
        reason (str): the underlying error, ``"Type: message"``.
    """

    _args = ("operation", "reason")

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"Redis is unavailable for {operation}: {reason}")
        self.operation = operation
        self.reason = reason


def describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextmanager
def unavailable_on_connection_errors(operation: str) -> Iterator[None]:
    """Re-raise a connection error or timeout inside as :class:`RedisUnavailable`."""
    try:
        yield
    except TRANSIENT_ERRORS as exc:
        raise RedisUnavailable(operation, describe(exc)) from exc
