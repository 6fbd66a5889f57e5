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
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from .. import RegistryConfig, open_chat_run_registry
from .app import ChatServer
from .config import ServerSettings

if TYPE_CHECKING:
    from .producers import ChatModel

__all__ = ["RunningServer", "hypercorn_config", "serve"]


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


def hypercorn_config(settings: ServerSettings) -> HypercornConfig:
    """The hypercorn configuration for ``settings`` (bind, timeouts, pings)."""
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.websocket_ping_interval = settings.websocket_ping_interval
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

    Raises:
        OSError: the address cannot be bound.
    """
    settings = settings or ServerSettings()
    config = hypercorn_config(settings)
    stop = trio.Event()
    async with open_chat_run_registry(registry_config) as registry:
        server = ChatServer(registry, model, settings)

        async def shutdown_trigger() -> None:
            await stop.wait()
            server.begin_shutdown()
            with trio.move_on_after(settings.graceful_timeout / 2):
                await server.wait_streams_closed()
            server.disconnect_streams()

        async with trio.open_nursery() as nursery:

            async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
                await hypercorn.trio.serve(
                    server.app,  # type: ignore[arg-type]  # Starlette's ASGI types are looser
                    config,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # stop the signal watcher

            if handle_signals:
                nursery.start_soon(_watch_signals, stop, nursery.cancel_scope)
            urls = await nursery.start(run_hypercorn)
            task_status.started(RunningServer(server, urls, _stop=stop))


async def _watch_signals(stop: trio.Event, hard_stop: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                hard_stop.cancel()  # a second signal: stop now
                return
            stop.set()
