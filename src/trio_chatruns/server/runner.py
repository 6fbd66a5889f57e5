"""Run the chat server: registry + Starlette app + hypercorn's Trio worker.

:func:`serve` owns everything in one nursery tree::

    open_chat_run_registry()            # producers run here
    └── hypercorn.trio.serve(app)       # connections run here

Shutdown (SIGINT/SIGTERM, or :meth:`RunningServer.shutdown`) goes in this
order, so that it ends within hypercorn's graceful timeout with every stream
closed cleanly:

1. the server refuses new runs and streams (503) and interrupts every active
   run, so each ends ``cancelled`` and its streams send ``end`` and close;
2. after at most half the graceful timeout, streams still open are cut;
3. hypercorn stops accepting and waits for the connections left;
4. the registry closes (anything still running is cancelled).

Hypercorn's own order — drain connections, *then* run the app's lifespan
shutdown — is why the registry is not opened in a Starlette lifespan: streams
would only end when the graceful timeout cancelled them.

With ``ServerSettings.redis`` set, the registry is the Redis run backend
and the history lives in the same Redis (:mod:`.redis_runner`), so every
worker started with that URL serves every conversation; the order above is
the same.

Step 4 waits for every producer task, and Trio cannot stop a task that
shields itself from cancellation. If :func:`serve` has not returned
:func:`shutdown_deadline` seconds after the shutdown began, it logs an error
naming the runs still active; the ``trio-chatruns`` command then exits with
status 1 a second later (a library function does not end the process).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from .. import RegistryConfig, open_chat_run_registry
from .app import ChatServer
from .auth import ensure_api_key, log_exposure
from .config import ServerSettings
from .connections import WriteDeadlines, install
from .conversations import open_conversation_history
from .gc_tuning import tuned_gc
from .producers import describe_model

if TYPE_CHECKING:
    from .conversations import ConversationHistory
    from .producers import ChatModel

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["RunningServer", "hypercorn_config", "only_leaf", "serve", "shutdown_deadline"]

logger = logging.getLogger("trio_chatruns.server")


@attrs.define(eq=False)
class RunningServer:
    """What :func:`serve` hands to ``nursery.start``: the live server.

    Attributes:
        server (ChatServer): the HTTP layer (and through it, the registry).
        urls (list[str]): the bound addresses, e.g. ``["http://127.0.0.1:8000"]``.
    """

    server: ChatServer
    urls: list[str]
    _stop: trio.Event = attrs.field(factory=trio.Event, alias="_stop")

    @property
    def url(self) -> str:
        """The first bound ``http://host:port`` (no trailing slash)."""
        return self.urls[0]

    def shutdown(self) -> None:
        """Start a graceful shutdown, as SIGTERM would. Synchronous, idempotent."""
        self._stop.set()

    @property
    def shutting_down(self) -> bool:
        """``True`` once a shutdown was requested (:meth:`shutdown` or a signal)."""
        return self._stop.is_set()

    async def wait_shutdown_requested(self) -> None:
        """Return once a shutdown was requested (:meth:`shutdown` or a signal)."""
        await self._stop.wait()


def shutdown_deadline(settings: ServerSettings) -> float:
    """Seconds after a shutdown request by which :func:`serve` should have returned.

    Half the graceful timeout for streams to end, the graceful timeout for
    hypercorn to drain, one second for the registry to close.
    """
    return 1.5 * settings.graceful_timeout + 1.0


def only_leaf(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first leaf of ``exc`` if every leaf of it is a ``kind``, else ``None``.

    Trio wraps errors from nurseries in (nested) exception groups; this finds
    the one error a caller is interested in, on Python 3.10 too.
    """
    if isinstance(exc, BaseExceptionGroup):
        leaves = [only_leaf(child, kind) for child in exc.exceptions]
        if not leaves or any(leaf is None for leaf in leaves):
            return None
        return leaves[0]
    return exc if isinstance(exc, kind) else None


WEBSOCKET_MAX_MESSAGE_BYTES = 4096
"""Largest WebSocket message a client may send (the server ignores them all);
hypercorn's default, 16 MiB, would let each client make the server buffer that much."""


class _HypercornConfig(HypercornConfig):
    """Hypercorn's config, creating its TCP sockets without leaking one that fails to bind.

    Hypercorn 0.18 leaves the socket of a failed ``bind`` (address in use) to
    the garbage collector: a ``ResourceWarning``. ``ServerSettings`` only ever
    binds ``host:port`` over TCP, which is all this handles. It also carries
    the server's :class:`~.connections.WriteDeadlines` to its connections.
    """

    write_deadlines: WriteDeadlines | None = None

    def _create_sockets(
        self, binds: list[str], type_: int = socket.SOCK_STREAM
    ) -> list[socket.socket]:
        sockets: list[socket.socket] = []
        try:
            for bind in binds:
                host, _, port = bind.rpartition(":")
                host = host.replace("[", "").replace("]", "")
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, type_)
                sockets.append(sock)
                if type_ == socket.SOCK_STREAM:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, int(port)))
                sock.setblocking(False)
                sock.set_inheritable(True)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets


def hypercorn_config(settings: ServerSettings) -> _HypercornConfig:
    """The hypercorn configuration for ``settings`` (bind, timeouts, pings, backlog).

    Every socket write gets ``settings.send_timeout`` (see
    :mod:`~.connections`: hypercorn shields its writes, so only a deadline
    inside that shield can end one); client WebSocket messages are capped at
    :data:`WEBSOCKET_MAX_MESSAGE_BYTES`.

    Hypercorn's ``read_timeout`` is left off on purpose: it bounds every read
    of a connection, so it would also cut SSE streams, where the client sends
    nothing for as long as the stream lasts. Request bodies are bounded by
    ``ServerSettings.body_timeout`` instead; idle keep-alive connections by
    hypercorn's ``keep_alive_timeout`` (5 s).
    """
    config = _HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.websocket_ping_interval = settings.websocket_ping_interval
    config.backlog = settings.backlog
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    install()
    config.write_deadlines = WriteDeadlines(settings.send_timeout)
    config.accesslog = None
    # A plain logger: hypercorn adds no handler of its own, so the application's
    # logging configuration decides where its messages go.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(
    model: ChatModel,
    settings: ServerSettings | None = None,
    registry_config: RegistryConfig | None = None,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the chat API and page until shut down; see the module docstring.

    Use as ``running = await nursery.start(serve, model, settings)`` to get the
    bound URL (``port=0`` picks a free port), or ``trio.run(serve, model)``.

    Args:
        model: produces the replies (e.g. :class:`ScriptedModel`).
        settings: HTTP limits and timings; ``None`` for the defaults.
        registry_config: the registry's limits; ``None`` for the defaults.
        handle_signals: shut down gracefully on SIGINT/SIGTERM (a second one
            stops at once). Only possible in the main thread.

    Bound to a non-loopback address without ``settings.api_key``, the server
    makes a random key and logs the page URL carrying it (see
    :func:`trio_chatruns.server.auth.ensure_api_key`); the running server's
    ``server.settings.api_key`` holds it.

    Raises:
        OSError: the address cannot be bound (the error itself, not wrapped
            in an exception group).
        ImportError: ``settings.redis`` is set and coredis is not installed
            (the message names the ``[redis]`` extra).
        trio_chatruns.redis.RedisUnavailable: ``settings.redis`` cannot be
            reached at start (later outages are answered 503 and retried).
    """
    if settings is not None and settings.redis is not None:
        from .redis_runner import require_coredis

        require_coredis()
    settings, generated_key = ensure_api_key(settings or ServerSettings())
    try:
        await _serve(model, settings, registry_config, handle_signals, task_status, generated_key)
    except BaseExceptionGroup as group:
        os_error = only_leaf(group, OSError)
        if os_error is None:
            raise
        raise os_error from None


async def _serve(
    model: ChatModel,
    settings: ServerSettings,
    registry_config: RegistryConfig | None,
    handle_signals: bool,
    task_status: trio.TaskStatus[RunningServer],
    generated_key: bool = False,
) -> None:
    config = hypercorn_config(settings)
    deadlines = config.write_deadlines
    assert deadlines is not None
    stop = trio.Event()
    server: ChatServer | None = None
    # Cancelled by a second signal: hypercorn and everything it runs.
    hard_stop = trio.CancelScope()
    async with trio.open_nursery() as guard:
        guard.start_soon(_shutdown_watchdog, stop, settings, lambda: server)
        if handle_signals:
            # Watched until the registry has closed (step 4 of a shutdown
            # saves the cut replies): a signal then must not find Python's
            # default handler, which would kill the process (status -15).
            guard.start_soon(_watch_signals, stop, hard_stop, deadlines)
        async with _open_runs(settings, registry_config) as (registry, history):
            server = ChatServer(
                registry, model, settings, history=history, on_shutdown_request=stop.set
            )

            async def shutdown_trigger() -> None:
                await stop.wait()
                server.begin_shutdown()
                with trio.move_on_after(settings.graceful_timeout / 2):
                    await server.wait_streams_closed()
                server.disconnect_streams()
                # A stream whose client stopped reading is stuck in a shielded
                # write (see .connections): close those connections now, and
                # any write still blocked half-way through hypercorn's drain.
                deadlines.cut(grace=settings.graceful_timeout / 2)

            # Startup is done (modules imported, app built): what is alive now
            # lives as long as the server (see .gc_tuning).
            with (
                tuned_gc() if settings.tune_gc else contextlib.nullcontext(),
                hard_stop,
            ):
                async with trio.open_nursery() as nursery:

                    async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
                        await hypercorn.trio.serve(
                            server.app,  # type: ignore[arg-type]  # Starlette's ASGI types are looser
                            config,
                            shutdown_trigger=shutdown_trigger,
                            task_status=task_status,
                        )

                    urls = await nursery.start(run_hypercorn)
                    _log_startup(urls, model, settings, server.backend.config)
                    log_exposure(settings, urls, generated_key)
                    task_status.started(RunningServer(server, urls, _stop=stop))
        # The registry closed: the watchdog has nothing to say, the signals
        # go back to Python's handlers.
        guard.cancel_scope.cancel()
    assert server is not None
    stats = server.stats()
    logger.info(
        "shutdown complete: %d run(s) interrupted by the shutdown, %d stream(s) cut "
        "since start, %d run(s) failed since start",
        len(server.shutdown_runs),
        stats.streams_dropped,
        stats.run_failures,
    )


@asynccontextmanager
async def _open_runs(
    settings: ServerSettings, registry_config: RegistryConfig | None
) -> AsyncIterator[tuple[Any, ConversationHistory]]:
    """The registry (in memory, or Redis with ``settings.redis``) and the history over it.

    The registry closes first and waits for its run-end hooks, so the
    replies cut by the shutdown are saved before the history closes.
    """
    if settings.redis is not None:
        from .redis_runner import open_redis_parts, redact

        async with open_redis_parts(
            settings.redis, registry_config, settings.history_messages, settings.redis_lease
        ) as (runs, history):
            logger.info(
                "runs and conversation history in Redis at %s (worker %s)",
                redact(settings.redis),
                runs.worker_id,
            )
            yield runs, history
        return
    async with (
        open_conversation_history(settings.db, settings.history_messages) as history,
        open_chat_run_registry(registry_config, on_run_end=history.on_run_end) as registry,
    ):
        yield registry, history


def _log_startup(
    urls: list[str], model: ChatModel, settings: ServerSettings, config: RegistryConfig
) -> None:
    """One INFO line naming the address, the model and its endpoint, and the limits."""
    logger.info(
        "listening on %s; model: %s; limits: max_active_runs=%d max_subscribers_per_run=%d "
        "max_body_bytes=%d max_prompt_chars=%d body_timeout=%gs heartbeat=%gs "
        "max_events_per_run=%d terminal_retention=%gs max_retained_terminal=%d "
        "subscriber_buffer=%d; access log %s; errors to clients %s",
        ", ".join(urls),
        describe_model(model),
        settings.max_active_runs,
        settings.max_subscribers_per_run,
        settings.max_body_bytes,
        settings.max_prompt_chars,
        settings.body_timeout,
        settings.heartbeat_interval,
        config.max_events_per_run,
        config.terminal_retention,
        config.max_retained_terminal,
        config.subscriber_buffer,
        "on" if settings.access_log else "off",
        "in full (--expose-errors)" if settings.expose_errors else "as type and summary",
    )


async def _shutdown_watchdog(
    stop: trio.Event, settings: ServerSettings, server: Callable[[], ChatServer | None]
) -> None:
    """Log the runs that keep a graceful shutdown from finishing in time."""
    await stop.wait()
    await trio.sleep(shutdown_deadline(settings))
    current = server()
    stuck = [] if current is None else current.backend.active_here()
    logger.error(
        "graceful shutdown did not finish within %.1f s: a producer ignores cancellation "
        "(e.g. a shielded cancel scope); %d run(s) still active: %s",
        shutdown_deadline(settings),
        len(stuck),
        ", ".join(f"{r.conversation_id}/{r.run_id}" for r in stuck) or "none (a task still ending)",
    )


async def _watch_signals(
    stop: trio.Event, hard_stop: trio.CancelScope, deadlines: WriteDeadlines
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                # A second signal: stop now, including writes to clients that
                # do not read (hypercorn shields them from cancellation).
                deadlines.cut()
                hard_stop.cancel()
                return
            stop.set()
