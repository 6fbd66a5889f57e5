"""How a run's failure is told: a short message for clients, the whole story for the log.

A chat model fails by raising. What clients see (the last ``error`` frame and
the record's ``last_error``) is the exception's type and a message written
for them; the exception's own text may hold anything (a file path, a query,
a key) and goes to the server log only, unless the operator passes
``--expose-errors`` (``ServerSettings.expose_errors``).

- :class:`ModelFailure` is the exception a model raises to choose what
  clients read: its message is shown as is, and its ``kind`` labels the
  ``trio_chatruns_model_failures_total`` metric. The OpenAI producer's
  ``EndpointError`` is one (status, endpoint host, short reason).
- Any other ``Exception`` is shown as its type and a generic message.
- ``KeyboardInterrupt`` and ``SystemExit`` from a model end its run ``failed``
  and shut the server down gracefully (kind ``fatal``).

:class:`FailureReporter` is what the producer wrapper
(:func:`~.producers.base.make_producer`) reports to; the :class:`~.app.ChatServer`
implements it (log at WARNING, count by kind, begin a shutdown).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from .. import ChatRunRecord

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "FAILURE_KINDS",
    "ClientError",
    "FailureReporter",
    "LogOnlyReporter",
    "ModelFailure",
    "client_error",
    "describe_error",
    "log_failure",
]

logger = logging.getLogger("trio_chatruns.server")

FAILURE_KINDS: dict[str, str] = {
    "exception": "the model raised an exception other than ModelFailure",
    "reported": "the model ended its own run failed (e.g. the scripted /fail prompt)",
    "fatal": "the model raised KeyboardInterrupt or SystemExit (the server shuts down)",
    "model": "the model raised ModelFailure without a more specific kind",
    "endpoint_status": "the endpoint answered a non-2xx HTTP status",
    "endpoint_timeout": "the endpoint did not connect or answer within --timeout",
    "endpoint_unreachable": "the endpoint could not be connected to",
    "endpoint_transport": "the connection to the endpoint failed mid-request",
    "endpoint_error": "the endpoint sent an error object in its stream",
    "endpoint_malformed": "the endpoint sent a chunk that is not valid JSON of the right shape",
    "endpoint_incomplete": "the endpoint closed its stream before [DONE]",
}
"""Every ``kind`` of run failure, with its meaning (the metric's label values)."""


class ModelFailure(Exception):
    """Raised by a chat model to fail its run with a message written for clients.

    Args:
        message (str): what clients read (the ``error`` frame's ``message``);
            keep secrets out of it.
        kind (str): a key of :data:`FAILURE_KINDS` (``ValueError`` otherwise).
    """

    def __init__(self, message: str, *, kind: str = "model") -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; one of {sorted(FAILURE_KINDS)}")
        super().__init__(message)
        self.message = message
        self.kind = kind


def describe_error(exc: BaseException) -> str:
    """``"Type: message"`` (``"Type"`` alone if no message); a group's leaves joined by ``"; "``.

    The whole text of an exception: what the log gets, and clients too with
    ``--expose-errors``.
    """
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_error(child) for child in exc.exceptions)
    try:
        message = str(exc)
    except Exception:
        message = ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@attrs.frozen
class ClientError:
    """A run failure as clients see it.

    Attributes:
        error_type (str): the exception's type name, e.g. ``"EndpointError"``.
        message (str): the message written for clients.
        kind (str): a key of :data:`FAILURE_KINDS`.
    """

    error_type: str
    message: str
    kind: str

    @property
    def last_error(self) -> str:
        """The record's ``last_error``: ``"<error_type>: <message>"``."""
        return f"{self.error_type}: {self.message}"

    def frame(self) -> dict[str, Any]:
        """The run's last frame: ``{"type": "error", "error_type", "message"}``."""
        return {"type": "error", "error_type": self.error_type, "message": self.message}


def client_error(exc: BaseException, *, expose: bool = False) -> ClientError:
    """What clients are told about ``exc``, raised by a chat model.

    A :class:`ModelFailure` gives its own message and kind. ``KeyboardInterrupt``
    and ``SystemExit`` are kind ``fatal``. Anything else is kind ``exception``
    with a generic message naming the type, or, with ``expose=True``, the
    whole :func:`describe_error` text.
    """
    error_type = type(exc).__name__
    if isinstance(exc, ModelFailure):
        return ClientError(error_type, exc.message, exc.kind)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return ClientError(
            error_type, "the chat model stopped; the server is shutting down", "fatal"
        )
    message = describe_error(exc) if expose else "the chat model failed"
    return ClientError(error_type, message, "exception")


class FailureReporter(Protocol):
    """Told about every run failure by the producer wrapper."""

    @property
    def expose_errors(self) -> bool:
        """Send clients the whole exception text (``--expose-errors``)."""
        ...

    def run_failed(self, record: ChatRunRecord, kind: str, exc: BaseException | None) -> None:
        """A run ended ``failed``; ``exc`` is what the model raised (``None`` if it
        ended the run itself). Called once per failed run, synchronously."""
        ...

    def model_fatal(self, exc: BaseException) -> None:
        """A model raised ``KeyboardInterrupt``/``SystemExit``: shut down gracefully."""
        ...


def log_failure(record: ChatRunRecord, kind: str, exc: BaseException | None) -> None:
    """Log a run failure at WARNING: conversation id, run id, kind and cause.

    The cause is the exception's whole text and traceback when there is one,
    else the record's ``last_error``.
    """
    cause = describe_error(exc) if exc is not None else (record.last_error or "no error given")
    logger.warning(
        "run %s of conversation %r failed (%s): %s",
        record.run_id,
        record.conversation_id,
        kind,
        cause,
        exc_info=exc,
    )


@attrs.define
class LogOnlyReporter:
    """A :class:`FailureReporter` that only logs (for a model used without a server)."""

    expose_errors: bool = False

    def run_failed(self, record: ChatRunRecord, kind: str, exc: BaseException | None) -> None:
        log_failure(record, kind, exc)

    def model_fatal(self, exc: BaseException) -> None:
        logger.error("a chat model raised %s; nothing to shut down", type(exc).__name__)
