"""What a worker does for the runs it owns, in the background: renew their
leases (current and queued runs), and receive the messages other workers
send about them (interrupt; a queued run started; a run ended elsewhere).

Both hand what they learn to the backend's callbacks and never crash on a
Redis outage: they log, back off and go on.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping

import anyio
import trio

from ._codec import text
from ._errors import TRANSIENT_ERRORS, describe
from ._keys import KeyLayout
from ._owned import OwnedRun
from ._store import RedisStore

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["listen_interrupts", "renew_leases"]

logger = logging.getLogger("trio_chatruns.redis")

RenewedCallback = Callable[[OwnedRun, "str | None", bool, str], None]
"""``(state, status Redis holds if the run was lost, interrupt flagged,
'current' | 'queued')``."""

MessageCallback = Callable[[str, str, str], None]
"""``(kind, conversation_id, run_id)``: kind ``i`` interrupt, ``s`` started,
``c``/``f`` ended cancelled/failed by another worker."""


_TEARDOWN_ERRORS = (trio.Cancelled, anyio.ClosedResourceError, anyio.BrokenResourceError)


def _cancelled_teardown(exc: BaseException) -> bool:
    """Whether ``exc`` is only the noise of a pub/sub torn down by a
    cancellation of this task: Cancelled, or coredis failing to unsubscribe
    on a connection its own cancelled task already closed
    (``ClosedResourceError``), possibly grouped. Only while this task is
    cancelled (Trio's ``current_effective_deadline()`` is ``-inf``)."""
    if trio.current_effective_deadline() != -math.inf:
        return False
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(_TEARDOWN_ERRORS + TRANSIENT_ERRORS)
        return rest is None
    return isinstance(exc, _TEARDOWN_ERRORS + TRANSIENT_ERRORS)


async def renew_leases(
    store: RedisStore,
    owned: Mapping[str, OwnedRun],
    lease: float,
    on_renewed: RenewedCallback,
) -> None:
    """Every third of ``lease`` (seconds): renew the leases of the runs owned
    here, current and queued (one pipelined round trip), and hand each answer
    to ``on_renewed``: a run lost to another worker (or to Redis), an
    interrupt flagged in Redis whose pub/sub message was lost, a queued run
    that started while its message was lost.

    A run whose ``START`` has not been answered yet is left out: its
    ``RENEW`` could reach Redis first (another connection) and find no run,
    which would end a fresh run ``failed`` as lost."""
    while True:
        await trio.sleep(lease / 3)
        active = [
            state
            for state in owned.values()
            if state.start_answered and state.terminated_at is None
        ]
        if not active:
            continue
        try:
            results = await store.renew([(state.conversation_id, state.run_id) for state in active])
        except TRANSIENT_ERRORS as exc:
            logger.warning("could not renew %d lease(s): %s", len(active), describe(exc))
            continue
        for state, (lost, interrupted, where) in zip(active, results, strict=True):
            on_renewed(state, lost, interrupted, where)


async def listen_interrupts(
    store: RedisStore,
    worker_id: str,
    on_message: MessageCallback,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive the messages about the runs owned here on the worker's pub/sub
    channel (``<kind><run_id><cid>``) and hand them to ``on_message``; started
    once subscribed. Reconnects with backoff (50 ms to 1 s) when the
    connection is lost; raises if the first subscription fails."""
    channel = store.keys.interrupt_channel(worker_id)
    started = False
    backoff = 0.05
    while True:
        try:
            async with store.client.pubsub(
                channels=[channel], ignore_subscribe_messages=True
            ) as pubsub:
                backoff = 0.05
                if not started:
                    started = True
                    task_status.started()
                async for message in pubsub:
                    if message["type"] != "message":
                        continue
                    data = text(message["data"])
                    conversation_id, run_id = KeyLayout.split_member(data[1:])
                    on_message(data[:1], conversation_id, run_id)
        except BaseException as exc:
            if _cancelled_teardown(exc):
                # Cancelled (a hard stop): coredis's pub/sub teardown may
                # fail on its closed connection; the cancellation is what
                # propagates, raised afresh below (level-triggered).
                pass
            elif isinstance(exc, TRANSIENT_ERRORS) and started:
                logger.warning("interrupt channel lost (%s); reconnecting", describe(exc))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            else:
                raise
        await trio.lowlevel.checkpoint()  # raises Cancelled
