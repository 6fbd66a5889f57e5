"""The chat server's state: what a :class:`~.app.ChatServer` holds, below its routes.

:class:`ServerState` holds what the HTTP layer adds to the registry: the chat
model, the limits, a count of open streams per run, the cancel scopes of open
streams and request bodies (so shutdown, or a test, can drop them), the
failure counters and the metrics. The routes and the two stream transports
(``routes``, ``sse_stream``, ``ws_stream``, ``streams``) read it; the app
(:mod:`.app`) is assembled on top of it. This module imports none of those,
so the server has no import cycle (STYLE.md).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from .. import ChatRunRegistry, ChatRunStatus
from .config import ServerSettings
from .failures import log_failure
from .memory_backend import MemoryBackend
from .metrics import ServerMetrics

if TYPE_CHECKING:
    from .. import ChatRunRecord
    from ..redis import RedisChatRuns
    from .backend import RunBackend
    from .conversations import ConversationHistory
    from .producers import ChatModel

__all__ = ["END_REASONS", "ServerState", "ServerStats", "TrackedStream", "as_backend"]

logger = logging.getLogger("trio_chatruns.server")

END_REASONS = {
    "completed": "the run completed",
    "failed": "the run failed (its last frame is an error frame)",
    "interrupted": "a client interrupted the run",
    "shutdown": "the server is shutting down and interrupted the run",
    "unavailable": "the run is no longer held (evicted or replaced); no record",
}
"""The ``reason`` of every stream ``end`` message, with its meaning."""


@attrs.frozen
class ServerStats:
    """Counters of the HTTP layer (the registry's are in ``RegistryStats``)."""

    open_streams: int
    """SSE and WebSocket streams open now."""
    streams_opened: int
    """Streams accepted since the server started."""
    streams_resumed: int
    """Of those, streams opened with a cursor (a client reconnecting)."""
    streams_dropped: int
    """Streams cut by :meth:`ChatServer.disconnect_streams` (shutdown or tests);
    streams closed for lag are not counted here but in ``streams_lagged``."""
    streams_lagged: int = 0
    """Streams closed because their client read too slowly (``lagged``)."""
    run_failures: int = 0
    """Runs that ended ``failed`` (``trio_chatruns_model_failures_total`` splits them by kind)."""


class TrackedStream(Protocol):
    """What :meth:`ServerState.track_stream` reads of a stream (``streams.StreamPlan`` is one)."""

    @property
    def run_id(self) -> str:
        """The run the stream follows."""
        ...

    @property
    def resumed(self) -> bool:
        """The client sent a cursor (a reconnect)."""
        ...


@attrs.define(eq=False)
class ServerState:
    """What the HTTP layer of a chat server holds over an open registry.

    Not built on its own: :class:`~.app.ChatServer` is this state plus the
    Starlette app serving it. The routes and stream transports take a
    ``ServerState`` (``request.app.state.chat_server``).

    Attributes:
        registry (ChatRunRegistry | RedisChatRuns | RunBackend): where runs
            live, opened (and closed) by the caller: an in-memory
            ``ChatRunRegistry``, a ``trio_chatruns.redis.RedisChatRuns``
            (several workers sharing one Redis), or any
            :class:`~.backend.RunBackend`.
        backend (RunBackend): what the routes and streams talk to, made from
            ``registry`` at construction (see :mod:`.backend`).
        model (ChatModel): produces every reply.
        settings (ServerSettings): limits and timings.
        history (ConversationHistory | None): the conversation history; the
            registry must have been opened with ``on_run_end=history.on_run_end``
            (``ValueError`` at construction otherwise: the replies would never
            be saved, and the next turn would wait for them forever).
            ``None``: no history, each prompt is sent alone and the
            conversation routes answer 404.
        on_shutdown_request (Callable[[], None] | None): called when a model
            raises ``KeyboardInterrupt``/``SystemExit``, to shut the whole
            server down gracefully (:func:`~.runner.serve` passes its own);
            ``None``: :meth:`begin_shutdown` is called instead.
        metrics (ServerMetrics): this server's Prometheus registry and
            instruments (``GET /metrics``).
    """

    registry: ChatRunRegistry | RedisChatRuns | RunBackend
    model: ChatModel
    settings: ServerSettings = attrs.field(factory=ServerSettings)
    history: ConversationHistory | None = None
    on_shutdown_request: Callable[[], None] | None = attrs.field(default=None, kw_only=True)
    metrics: ServerMetrics = attrs.field(init=False, repr=False)
    """This server's metrics (its own ``CollectorRegistry``)."""
    backend: RunBackend = attrs.field(init=False, repr=False)
    """The run backend the routes and streams talk to (made from ``registry``)."""
    _closing: bool = attrs.field(default=False, init=False)
    # The scopes of open streams, so disconnect_streams() can cut them; a
    # stream's pump runs inside its scope, the ASGI response outside it.
    _drop_scopes: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    # The scopes of request bodies being read, so begin_shutdown() can cut them.
    _body_scopes: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    _per_run: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _opened: int = attrs.field(default=0, init=False)
    _resumed: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)
    _lagged: int = attrs.field(default=0, init=False)
    _fatal: BaseException | None = attrs.field(default=None, init=False)
    _failures: int = attrs.field(default=0, init=False)
    # Runs interrupted by begin_shutdown(): their streams end with reason "shutdown".
    _shutdown_runs: set[str] = attrs.field(factory=set, init=False)

    @property
    def closing(self) -> bool:
        """``True`` once :meth:`begin_shutdown` was called: new runs and streams get 503."""
        return self._closing

    def __attrs_post_init__(self) -> None:
        self.backend = as_backend(self.registry)
        if self.history is not None:
            hook = self.backend.on_run_end
            if hook != self.history.on_run_end:
                raise ValueError(
                    "the registry was opened without the history's run-end hook "
                    f"(its on_run_end is {hook!r}): replies would never be saved and the "
                    "next turn of a conversation would wait for them forever; open it "
                    "with on_run_end=history.on_run_end"
                )
        self.metrics = ServerMetrics(self)
        if self.history is not None:
            self.history.shutting_down = lambda: self._closing

    def subscriber_count(self, run_id: str) -> int:
        """Streams (SSE and WebSocket) open on run ``run_id`` now."""
        return self._per_run[run_id]

    def stats(self) -> ServerStats:
        """A snapshot of the HTTP layer's counters."""
        return ServerStats(
            open_streams=len(self._drop_scopes),
            streams_opened=self._opened,
            streams_resumed=self._resumed,
            streams_dropped=self._dropped,
            streams_lagged=self._lagged,
            run_failures=self._failures,
        )

    # -- what streams and producers report ------------------------------------

    @property
    def fatal_exception(self) -> BaseException | None:
        """The first ``KeyboardInterrupt``/``SystemExit`` a model raised, if any.

        ``trio-chatruns`` exits with its status after the graceful shutdown it
        caused (``SystemExit.code``, or 130 for ``KeyboardInterrupt``).
        """
        return self._fatal

    @property
    def shutdown_runs(self) -> frozenset[str]:
        """Run ids :meth:`begin_shutdown` interrupted."""
        return frozenset(self._shutdown_runs)

    def note_lagged(self) -> None:
        """Count a stream closed because its client read too slowly."""
        self._lagged += 1

    def end_reason(self, record: ChatRunRecord | None) -> str:
        """Why a stream of the run ``record`` ends: a key of :data:`END_REASONS`.

        ``"shutdown"`` for a run :meth:`begin_shutdown` interrupted,
        ``"interrupted"`` for any other cancelled run, else the status
        (``"completed"``, ``"failed"``); ``"unavailable"`` for ``None``.
        """
        if record is None:
            return "unavailable"
        if record.status is ChatRunStatus.CANCELLED:
            return "shutdown" if record.run_id in self._shutdown_runs else "interrupted"
        if record.status is ChatRunStatus.FAILED:
            return "failed"
        return "completed"

    @property
    def expose_errors(self) -> bool:
        """Clients get a model exception's whole text (``ServerSettings.expose_errors``)."""
        return self.settings.expose_errors

    def run_failed(self, record: ChatRunRecord, kind: str, exc: BaseException | None) -> None:
        """Log a failed run at WARNING and count it by ``kind`` (the producer wrapper calls it)."""
        self._failures += 1
        self.metrics.model_failures.labels(kind).inc()
        log_failure(record, kind, exc)

    def model_fatal(self, exc: BaseException) -> None:
        """A model raised ``KeyboardInterrupt``/``SystemExit``: shut down gracefully.

        Calls :attr:`on_shutdown_request` (or :meth:`begin_shutdown`), so every
        other run is interrupted and every stream gets its ``end``.
        """
        logger.error(
            "a chat model raised %s: shutting the server down gracefully", type(exc).__name__
        )
        if self._fatal is None:
            self._fatal = exc
        if self.on_shutdown_request is not None:
            self.on_shutdown_request()
        else:
            self.begin_shutdown()

    @contextlib.contextmanager
    def track_stream(self, plan: TrackedStream) -> Iterator[trio.CancelScope]:
        """Count a stream for the duration of the ``with`` block.

        Yields a fresh cancel scope, not yet entered: the stream runs its pump
        inside it, and :meth:`disconnect_streams` cancels it.
        """
        scope = trio.CancelScope()
        self._drop_scopes.add(scope)
        self._per_run[plan.run_id] += 1
        self._opened += 1
        self._resumed += plan.resumed
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield scope
        finally:
            self._drop_scopes.discard(scope)
            self._per_run[plan.run_id] -= 1
            if not self._per_run[plan.run_id]:
                del self._per_run[plan.run_id]
            if not self._drop_scopes:
                self._idle.set()

    @contextlib.contextmanager
    def track_body_read(self) -> Iterator[trio.CancelScope]:
        """Enter a cancel scope for reading a request body; :meth:`begin_shutdown` cancels it.

        Already cancelled if the server is closing, so a slow upload never
        holds a graceful shutdown (the request is answered 503).
        """
        with trio.CancelScope() as scope:
            if self._closing:
                scope.cancel()
            self._body_scopes.add(scope)
            try:
                yield scope
            finally:
                self._body_scopes.discard(scope)

    @property
    def body_reads(self) -> int:
        """Request bodies being read now."""
        return len(self._body_scopes)

    def disconnect_streams(self) -> int:
        """Cut every open stream now, as a network drop would; return how many.

        SSE responses end (``EventSource`` reconnects with ``Last-Event-ID``);
        WebSockets close with 1013 ("resume"). Runs are not touched.
        Synchronous.
        """
        scopes = list(self._drop_scopes)
        for scope in scopes:
            scope.cancel()
        self._dropped += len(scopes)
        if scopes and self._closing:
            logger.info("shutdown: cut %d stream(s) still open", len(scopes))
        return len(scopes)

    def begin_shutdown(self) -> int:
        """Stop accepting runs and streams, and interrupt every active run.

        Request bodies still being received are cut (those requests get 503).
        Open streams then end by themselves: each one's run ends
        ``cancelled``, the stream sends ``end`` and closes. Returns how many
        runs were interrupted. Synchronous, idempotent.
        """
        if self._closing:
            return 0
        self._closing = True
        for scope in list(self._body_scopes):
            scope.cancel()  # those requests are answered 503
        ended: list[str] = []
        if self.history is not None:
            # Queued runs first, so none of them starts when the run before it ends.
            for conversation_id, run_id in self.history.cancel_queued():
                self._shutdown_runs.add(run_id)
                ended.append(f"{conversation_id}/{run_id}")
        for record in self.backend.active_here():
            if self.backend.interrupt_here(record.conversation_id):
                self._shutdown_runs.add(record.run_id)
                ended.append(f"{record.conversation_id}/{record.run_id}")
        logger.info(
            "shutting down: interrupted %d active run(s)%s; %d stream(s) open, "
            "%d request body(ies) cut",
            len(ended),
            (": " + ", ".join(ended)) if ended else "",
            len(self._drop_scopes),
            len(self._body_scopes),
        )
        return len(ended)

    async def wait_streams_closed(self) -> None:
        """Return once no stream is open (immediately if none is)."""
        if self._drop_scopes:
            await self._idle.wait()


def as_backend(registry: object) -> RunBackend:
    """The :class:`~.backend.RunBackend` over ``registry``.

    A ``ChatRunRegistry`` gets a :class:`~.memory_backend.MemoryBackend`, a
    ``trio_chatruns.redis.RedisChatRuns`` a
    :class:`~.redis_backend.RedisBackend` (imported only then: it needs the
    ``[redis]`` extra); a ``RunBackend`` is used as it is.

    Raises:
        TypeError: ``registry`` is none of those.
    """
    if isinstance(registry, ChatRunRegistry):
        return MemoryBackend(registry)
    if type(registry).__module__.startswith("trio_chatruns.redis"):
        from .redis_backend import RedisBackend  # the [redis] extra

        return RedisBackend(registry)  # type: ignore[arg-type]
    if all(hasattr(registry, name) for name in ("active_here", "interrupt_here", "subscribe")):
        return registry  # type: ignore[return-value]
    raise TypeError(
        "registry must be a ChatRunRegistry, a trio_chatruns.redis.RedisChatRuns "
        f"or a RunBackend, not {registry!r}"
    )
