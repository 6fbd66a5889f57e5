"""Connections that cannot stall the server: a deadline on every socket write.

Hypercorn's Trio worker (0.17 and 0.18) writes to a connection's socket
inside a *shielded* cancel scope (``TCPServer.protocol_send``), so that a
cancelled application task never leaves half a message on the wire. The
consequence: once a client stops reading and its receive window fills, the
write never returns, and nothing outside can interrupt it. Cancelling the
ASGI ``send`` does not help (the shield absorbs it), hypercorn's graceful
timeout does not help (it cancels, and the shield absorbs that too), and the
stream holding the connection keeps its subscription, its stream slot, its
socket and whatever run it pins in memory.

What does end the write is the shielded scope's *own* deadline (a shield
blocks cancellation from outside a scope, not the scope's own). This module
gives hypercorn's ``TCPServer`` one such scope per write, shielded and with a
deadline (:class:`WriteDeadlines`, ``--send-timeout``): a write that has not finished
by then is abandoned and the connection is closed — as it must be, since a
half-written message leaves the byte stream unusable. Closing the socket wakes
hypercorn's reader, the application gets its ``http.disconnect`` /
``websocket.disconnect``, and everything the stream held is released. A
shutdown uses the same scopes to cut writes still blocked when streams are
cut, and all of them at a second signal.

Hypercorn creates its connection objects itself (``hypercorn.trio.run``
names the class), so :func:`install` replaces that one name with
:class:`DeadlineTCPServer`, a subclass that changes only the raw-data branch
of ``protocol_send`` and only for a config that carries a
:class:`WriteDeadlines` (any other hypercorn server in the process behaves
exactly as before). The supported hypercorn versions are pinned in
``pyproject.toml``; :func:`install` refuses others.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any

import hypercorn
import hypercorn.trio.run
import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["SUPPORTED_HYPERCORN", "DeadlineTCPServer", "WriteDeadlines", "install"]

logger = logging.getLogger("trio_chatruns.server")

SUPPORTED_HYPERCORN = ((0, 17), (0, 19))
"""Hypercorn versions whose ``TCPServer.protocol_send`` this module was checked
against: at least the first, below the second."""


class WriteDeadlines:
    """The deadline on every socket write of one server, and the writes in flight.

    Attributes:
        send_timeout (float): seconds a single write may take; past it the
            connection is closed.
    """

    def __init__(self, send_timeout: float) -> None:
        self.send_timeout = send_timeout
        self._cap = math.inf  # no write may outlive this (shutdown)
        self._writes: set[trio.CancelScope] = set()
        self.closed_connections = 0
        """Connections closed because a write did not finish in time."""

    def write_scope(self) -> trio.CancelScope:
        """A shielded cancel scope bounding one write: outer cancellation cannot
        interrupt the write (as hypercorn's own shield), its deadline can.
        :meth:`done` it after."""
        scope = trio.CancelScope(
            deadline=min(trio.current_time() + self.send_timeout, self._cap), shield=True
        )
        self._writes.add(scope)
        return scope

    def done(self, scope: trio.CancelScope) -> None:
        """Forget a scope made by :meth:`write_scope` (its write ended)."""
        self._writes.discard(scope)

    @property
    def in_flight(self) -> int:
        """Writes not finished now (a stalled client's write stays here until cut)."""
        return len(self._writes)

    def cut(self, grace: float = 0.0) -> int:
        """Abandon every write in flight now; later writes get at most ``grace`` seconds.

        Their connections are closed. Synchronous. Returns how many were cut.
        """
        self._cap = min(self._cap, trio.current_time() + grace)
        writes = list(self._writes)
        for scope in writes:
            scope.cancel()
        return len(writes)


class DeadlineTCPServer(TCPServer):
    """Hypercorn's ``TCPServer`` whose socket writes end by a deadline.

    Only the raw-data branch of ``protocol_send`` differs, and only when the
    config carries a :class:`WriteDeadlines` (attribute ``write_deadlines``):
    what the socket takes at once is written without waiting (no cancel scope
    per write), the rest under the deadline.
    """

    async def protocol_send(self, event: Any) -> None:
        deadlines: WriteDeadlines | None = getattr(self.config, "write_deadlines", None)
        if deadlines is None or not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        lock = self.send_lock
        try:
            # A free lock is taken without a checkpoint: the write below is
            # shielded anyway, so a checkpoint here only costs a scheduling round.
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        closed = False
        try:
            data = event.data
            written = self._write_now(data)
            if written < 0:
                closed = True
            elif written < len(data):
                closed = await self._write_rest(deadlines, memoryview(data)[written:])
            else:
                # Written at once: still one scheduling round, as Trio's own
                # send does, so the connection's reader runs before what the
                # application does next (closing it, say) and no request
                # bytes are left unread when it closes.
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            lock.release()
        if closed:
            await self.protocol.handle(Closed())

    def _write_now(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting: the bytes written,
        or ``-1`` when the connection is closed or broken. Synchronous.

        Most writes of a healthy stream fit in the socket's send buffer; this
        writes them with no cancel scope and none of the coroutines of
        ``SocketStream.send_all``. Only a plain TCP stream is
        written directly (never TLS); anything else gets ``0`` (all of it is
        left to :meth:`_write_rest`).
        """
        stream: Any = self.stream  # typed SSLStream by hypercorn; plain TCP is a SocketStream
        if not data or type(stream) is not trio.SocketStream:
            return 0
        try:
            # The socket is non-blocking (Trio's); a closed one has fileno -1.
            return os.write(stream.socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError:
            return -1

    async def _write_rest(self, deadlines: WriteDeadlines, rest: memoryview) -> bool:
        """Write ``rest`` by the deadline; ``True`` when the connection is closed after."""
        # hypercorn's shield and the write deadline are one scope: shielded
        # from outer cancellation, cancelled by its own deadline (or by
        # WriteDeadlines.cut).
        write = deadlines.write_scope()
        try:
            with write:
                await self.stream.send_all(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        finally:
            deadlines.done(write)
        if not write.cancelled_caught:
            return False
        # Part of the data may be on the wire: the connection is unusable.
        # Closing the socket also wakes the reader.
        deadlines.closed_connections += 1
        logger.debug("closing a connection: a write did not finish in time")
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self.stream.aclose()
        return True


def install() -> None:
    """Make hypercorn's Trio worker create :class:`DeadlineTCPServer` connections.

    Idempotent. Without a :class:`WriteDeadlines` on the config they behave
    exactly like hypercorn's own.

    Raises:
        RuntimeError: the installed hypercorn is outside :data:`SUPPORTED_HYPERCORN`
            or no longer has the names this relies on.
    """
    names = vars(hypercorn.trio.run)  # the module hypercorn's worker looks TCPServer up in
    if names.get("TCPServer") is DeadlineTCPServer:
        return
    version = _version()
    low, high = SUPPORTED_HYPERCORN
    if not (low <= version < high) or names.get("TCPServer") is not TCPServer:
        raise RuntimeError(
            f"hypercorn {'.'.join(map(str, version))} is not supported by "
            f"trio_chatruns.server.connections (needs >= {low[0]}.{low[1]}, "
            f"< {high[0]}.{high[1]})"
        )
    names["TCPServer"] = DeadlineTCPServer


def _version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("hypercorn").split(".")[:2] if p.isdigit())
