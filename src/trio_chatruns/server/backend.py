"""The run backend: the one interface the chat server talks to for runs.

Two backends implement :class:`RunBackend`:

- :class:`~.memory_backend.MemoryBackend`, over the in-memory
  :class:`~trio_chatruns.ChatRunRegistry` (the default): its methods call the
  registry's synchronous, atomic methods and add no checkpoint; ``subscribe``
  *is* the registry's, so a stream iterates the registry's own
  :class:`~trio_chatruns.ChatRunSubscription` with nothing in between;
- :class:`~.redis_backend.RedisBackend`, over
  :class:`trio_chatruns.redis.RedisChatRuns` (``serve --redis``): every worker
  sharing one Redis serves every run.

Methods that need a Redis round trip are ``async`` in the interface; the
in-memory backend's are ``async`` too but never checkpoint, so a route that
reads and then starts a run with it is still one atomic step. A backend that
cannot reach its store raises :class:`BackendUnavailable`, which the routes
answer ``503`` (``{"error": ...}``, ``Retry-After``) and a stream turns into
``lagged`` (the client resumes from its cursor).

Every record a backend returns has its times (``started_at``, ``updated_at``,
``terminated_at``) on the Trio clock, as the in-memory registry stamps them,
so :func:`~.sse.record_to_json` shows them as the same wall-clock times
whichever backend holds the run.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from .. import ChatRunError

if TYPE_CHECKING:
    from .. import ChatRunEvent, ChatRunRecord, RegistryConfig, RegistryStats

__all__ = [
    "BackendUnavailable",
    "RunBackend",
    "RunEndHook",
    "StartedRun",
    "StreamSubscription",
]

RunEndHook = Callable[..., Awaitable[None]]
"""``async def hook(record, events) -> None``: a registry's ``on_run_end``."""


class BackendUnavailable(ChatRunError):
    """The run backend's store cannot be reached (Redis down or restarting).

    Nothing was changed by the failed operation. The server answers ``503``
    with this message and ``Retry-After``; the backend reconnects by itself.

    Attributes:
        operation (str): what was being done (``"try_start"``, ``"get"``...).
        message (str): the whole message, fit for a client.
    """

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.message = message


class StartedRun(Protocol):
    """The handle of a run a backend started (``ChatRun``, ``RedisChatRun``)."""

    @property
    def conversation_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def record(self) -> ChatRunRecord:
        """A snapshot of the run as this worker holds it."""
        ...

    def interrupt(self) -> bool:
        """Request cancellation of the run's producer (synchronous)."""
        ...


class StreamSubscription(Protocol):
    """What a stream iterates (``ChatRunSubscription`` is one, as is the Redis adaptor's).

    ``record.latest_seq - last_seq`` events come out of :meth:`__anext__`
    without waiting; after the iteration ended (``StopAsyncIteration``),
    ``record`` is the run's final record.
    """

    @property
    def last_seq(self) -> int: ...
    @property
    def record(self) -> ChatRunRecord: ...
    async def __anext__(self) -> ChatRunEvent: ...


class RunBackend(Protocol):
    """Where the server's runs live; see the module docstring.

    Errors are the registry's (``RunAlreadyActive``, ``RunQueueFull``,
    ``RunNotFound``, ``ReplayGap``, ``ValueError``/``TypeError`` for bad
    arguments, ``RuntimeError`` once closed), plus
    :class:`BackendUnavailable` from any ``async`` method and on entering
    ``subscribe``, and ``NotImplementedError`` from ``try_start`` for a start
    policy the backend does not have.
    """

    @property
    def name(self) -> str:
        """``"memory"`` or ``"redis"`` (for logs and ``/v1/stats``)."""
        ...

    @property
    def config(self) -> RegistryConfig:
        """The registry limits in force."""
        ...

    @property
    def on_run_end(self) -> RunEndHook | None:
        """The run-end hook the backend was opened with (``None``: none)."""
        ...

    async def try_start(
        self, conversation_id: str, producer: Any, *, if_active: str = "reject"
    ) -> StartedRun:
        """Start (or queue) ``producer(run)`` for the conversation; atomic."""
        ...

    async def get(self, conversation_id: str) -> ChatRunRecord | None: ...
    async def queued(self, conversation_id: str) -> builtins.list[ChatRunRecord]: ...
    async def list(self, *, active_only: bool = False) -> builtins.list[ChatRunRecord]: ...
    async def events(
        self, conversation_id: str, *, after: int = 0
    ) -> builtins.list[ChatRunEvent]: ...
    async def interrupt(self, conversation_id: str) -> bool:
        """Interrupt the conversation's active run, wherever it runs."""
        ...

    async def stats(self) -> RegistryStats: ...

    def subscribe(
        self, conversation_id: str, *, after: int = 0, run_id: str | None = None
    ) -> AbstractAsyncContextManager[StreamSubscription]:
        """Follow a run from a cursor: the rules of ``ChatRunRegistry.subscribe``."""
        ...

    def active_here(self) -> builtins.list[ChatRunRecord]:
        """The active runs (queued ones included) owned by this process; synchronous.

        Those not ``queued`` are what ``max_active_runs`` counts; a graceful
        shutdown interrupts them all (with :meth:`interrupt_here`).
        """
        ...

    def interrupt_here(self, conversation_id: str) -> bool:
        """Interrupt the conversation's run if its producer runs here; synchronous."""
        ...
