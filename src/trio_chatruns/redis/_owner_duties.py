"""What a worker does for the runs it owns, in the background: renew their
leases, and receive the interrupts other workers send them.

Both act on the backend's map of owned runs (conversation id ->
:class:`~._owned.OwnedRun`) and never crash on a Redis outage: they log,
back off and go on.
"""

from __future__ import annotations

import logging

import trio

from .._status import ChatRunStatus
from ._codec import text
from ._errors import TRANSIENT_ERRORS, describe
from ._keys import KeyLayout
from ._owned import OwnedRun
from ._store import RedisStore

__all__ = ["listen_interrupts", "renew_leases"]

logger = logging.getLogger("trio_chatruns.redis")


async def renew_leases(store: RedisStore, owned: dict[str, OwnedRun], lease: float) -> None:
    """Every third of ``lease`` (seconds): renew the leases of the runs owned
    here (one pipelined round trip), and act on what Redis says: a run lost
    to another worker (or to Redis) ends here too, with its producer
    cancelled; an interrupt flagged in Redis (its pub/sub message lost)
    reaches its producer."""
    while True:
        await trio.sleep(lease / 3)
        active = [state for state in owned.values() if state.terminated_at is None]
        if not active:
            continue
        try:
            results = await store.renew([(state.conversation_id, state.run_id) for state in active])
        except TRANSIENT_ERRORS as exc:
            logger.warning("could not renew %d lease(s): %s", len(active), describe(exc))
            continue
        for state, (lost, interrupted) in zip(active, results, strict=True):
            if lost:
                state.pending.clear()
                state.mark_terminal(ChatRunStatus.FAILED, error=lost, stop_producer=True)
            elif interrupted:
                state.interrupt()


async def listen_interrupts(
    store: RedisStore,
    worker_id: str,
    owned: dict[str, OwnedRun],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive interrupts for the runs owned here on the worker's pub/sub
    channel; started once subscribed. Reconnects with backoff (50 ms to 1 s)
    when the connection is lost; raises if the first subscription fails."""
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
                    conversation_id, run_id = KeyLayout.split_member(text(message["data"]))
                    state = owned.get(conversation_id)
                    if state is not None and state.run_id == run_id:
                        state.interrupt()
        except TRANSIENT_ERRORS as exc:
            if not started:
                raise
            logger.warning("interrupt channel lost (%s); reconnecting", describe(exc))
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
