"""The chat-model interface, the frame vocabulary, and loading a model by name.

Frames the included models push (all JSON objects with a ``type``):

=================  =========================================================
``status``         ``{"status", "current_tool"}`` — the run's status changed
``token``          ``{"text"}`` — the next piece of the reply
``tool_call``      ``{"id", "name", "arguments"}`` — a complete tool call
``tool_call_delta`` ``{"index", "id", "name", "arguments_delta"}`` — streamed
``tool_result``    ``{"id", "name", "content"}`` — a tool's answer
``done``           ``{"finish_reason"}`` — terminal, status ``completed``
``error``          ``{"message"}`` — terminal, status ``failed``
``interrupted``    pushed by the registry when a run is interrupted
=================  =========================================================

The reply text is the concatenation of the ``token`` frames' ``text``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ... import ChatRunStatus
from ..failures import FailureReporter, LogOnlyReporter, client_error, describe_error

if TYPE_CHECKING:
    from trio_chatruns import ChatRun

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "ChatModel",
    "ChatRequest",
    "describe_error",
    "describe_model",
    "load_model",
    "make_producer",
]


@attrs.frozen
class ChatRequest:
    """What a client asked for: one user turn.

    Attributes:
        conversation_id (str): the conversation the turn belongs to.
        prompt (str): the user's message.
    """

    conversation_id: str
    prompt: str


class ChatModel(Protocol):
    """An async callable that produces the reply to ``request`` into ``run``.

    Returning ends the run ``completed`` (unless the model pushed a terminal
    status itself); raising ends it ``failed``, with a last ``error`` frame
    pushed by the server (raise :class:`~..failures.ModelFailure` to choose
    what clients read). It must let ``trio.Cancelled`` propagate: that is how
    an interrupt or a shutdown stops it.
    """

    def __call__(self, run: ChatRun, request: ChatRequest) -> Awaitable[None]: ...


def describe_model(model: ChatModel) -> str:
    """A one-line name of ``model`` for the log: its ``description`` if it has
    one (the included models name their endpoint and rate), else its type."""
    description = getattr(model, "description", None)
    if isinstance(description, str) and description:
        return description
    name = getattr(model, "__qualname__", None) or type(model).__qualname__
    module = getattr(model, "__module__", None) or type(model).__module__
    return f"{module}:{name}"


def make_producer(
    model: ChatModel, request: ChatRequest, reporter: FailureReporter | None = None
) -> Callable[[ChatRun], Awaitable[None]]:
    """Bind ``model`` to ``request``: return the ``producer(run)`` the registry runs.

    If the model raises an ``Exception`` while its run is still active and not
    being interrupted, the producer ends the run ``failed`` with a last frame
    ``{"type": "error", "error_type", "message"}`` written for clients
    (``last_error`` is ``"<error_type>: <message>"``; see
    :func:`~..failures.client_error`) and reports the failure (``reporter``
    logs it at WARNING with the whole exception). Otherwise (the run already
    ended, or it is being cancelled) the exception goes on to the registry,
    which records and logs it; cancellation always propagates.

    ``KeyboardInterrupt`` and ``SystemExit`` (alone, or in a group with only
    ``Exception`` beside them) never leave the producer: the run ends
    ``failed`` (kind ``fatal``) and ``reporter.model_fatal`` is told, which
    shuts the server down gracefully, so every other stream still gets its
    end. A model that ends its own run ``failed`` is reported too (kind
    ``reported``). ``reporter`` defaults to one that only logs.
    """
    report: FailureReporter = reporter if reporter is not None else LogOnlyReporter()

    def fail(run: ChatRun, exc: BaseException) -> None:
        error = client_error(exc, expose=report.expose_errors)
        if not run.record.status.is_terminal:
            run.push_frame(error.frame(), status=ChatRunStatus.FAILED, error=error.last_error)
        report.run_failed(run.record, error.kind, exc)

    async def producer(run: ChatRun) -> None:
        try:
            await model(run, request)
        except (KeyboardInterrupt, SystemExit) as exc:
            fail(run, exc)
            report.model_fatal(exc)
            return
        except Exception as exc:
            if run.record.status.is_terminal or trio.current_effective_deadline() == -math.inf:
                raise
            fail(run, exc)
            return
        except BaseExceptionGroup as group:
            fatal, rest = group.split((KeyboardInterrupt, SystemExit))
            if fatal is None or (rest is not None and not isinstance(rest, Exception)):
                raise  # a cancellation (or another BaseException) rides along
            fail(run, fatal.exceptions[0] if len(fatal.exceptions) == 1 else fatal)
            report.model_fatal(fatal)
            return
        record = run.record
        if record.status is ChatRunStatus.FAILED:
            report.run_failed(record, "reported", None)

    name = getattr(model, "__qualname__", None) or type(model).__name__
    producer.__qualname__ = f"producer[{name}]"
    return producer


def _is_async_callable(obj: Any) -> bool:
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - instances with async __call__
    )


def load_model(spec: str) -> ChatModel:
    """Import a user model named ``"package.module:attribute"``.

    The attribute (dotted paths allowed after the colon) must be an async
    callable ``(run, request)``, or a zero-argument class/factory returning one.

    Raises:
        ValueError: ``spec`` has no ``:`` or names something that is neither.
        ImportError / AttributeError: the module or attribute does not exist.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"producer spec must be 'module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if _is_async_callable(obj) and not inspect.isclass(obj):
        return obj  # type: ignore[no-any-return]
    if callable(obj):
        made = obj()
        if _is_async_callable(made):
            return made  # type: ignore[no-any-return]
    raise ValueError(
        f"{spec!r} is not an async callable (run, request), nor a factory returning one"
    )
