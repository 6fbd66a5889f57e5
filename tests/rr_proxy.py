"""A tiny round-robin TCP proxy for the multi-worker tests (Trio, real sockets).

It stands where nginx stands in docs/deploy.md: clients connect to one
loopback port, and each new client connection goes to the next worker in
turn. It relays bytes both ways as they arrive (no buffering, so an SSE or
WebSocket stream flows through frame by frame) and passes a half-close on.
It knows nothing of HTTP: a keep-alive connection stays on its worker, as
with nginx's ``upstream`` without sticky sessions, and requests spread over
workers as connections are opened. :meth:`RoundRobinProxy.cut_all` drops
every open connection at once (a network drop), so the clients reconnect,
through the next workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import trio

__all__ = ["RoundRobinProxy"]

Address = tuple[str, int]


class RoundRobinProxy:
    """Listens on 127.0.0.1 (a free port) and relays each connection to a worker.

    Start it with ``port = await nursery.start(proxy.serve)``; set
    :attr:`upstreams` (``[(host, port), ...]``) before the first client
    connects (workers behind a proxy must know its port for their Host
    check, so the proxy binds first). :attr:`routed` lists the upstream of
    every connection accepted so far, in order.
    """

    def __init__(self, upstreams: Sequence[Address] = ()) -> None:
        self.upstreams: list[Address] = list(upstreams)
        self.routed: list[Address] = []
        self._turn = itertools.count()
        self._connections: set[trio.CancelScope] = set()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port: int = listeners[0].socket.getsockname()[1]
        task_status.started(port)
        await trio.serve_listeners(self._relay, listeners)

    def cut_all(self) -> int:
        """Close every open connection, both sides; return how many there were."""
        for scope in self._connections:
            scope.cancel()
        return len(self._connections)

    async def _relay(self, client: trio.SocketStream) -> None:
        if not self.upstreams:
            await client.aclose()
            return
        upstream = self.upstreams[next(self._turn) % len(self.upstreams)]
        self.routed.append(upstream)
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    try:
                        server = await trio.open_tcp_stream(*upstream)
                    except OSError:
                        return  # the worker is down: the client sees the connection close
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(_pump, server, client, nursery.cancel_scope)
            finally:
                self._connections.discard(scope)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, connection: trio.CancelScope
) -> None:
    """Copy bytes from ``source`` to ``sink`` as they arrive; pass EOF on as a
    half-close. A reset on either side ends the whole connection."""
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        connection.cancel()
