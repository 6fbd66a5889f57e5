"""The Redis operations the backend uses, one method per script or command,
over one coredis client. No policy here: callers decide about retries and
errors (connection errors propagate as coredis raises them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import coredis

from .._config import RegistryConfig
from . import _scripts
from ._codec import text
from ._keys import KeyLayout

__all__ = ["RedisStore", "StartResult"]

STREAM_GRACE_MS = 5000
"""How long a run's stream outlives its record after the end (ms), so that a
reader already following it reads the end even with ``terminal_retention=0``."""

StartResult = tuple[str, str, int]
"""``(outcome, run_id, started_at_ms)``: outcome ``started``; ``active``
(``run_id`` is the active run's); or ``reaped`` (``run_id`` is the lapsed run
the script just ended; retry)."""


def lost_reason(status: str) -> str:
    """Why a run this worker owned is no longer its, from the status Redis holds."""
    if not status:
        return (
            "the run is no longer in Redis (Redis restarted without persistence, "
            "was flushed, or the run was evicted); it was ended here"
        )
    return f"this worker lost the run's lease; another worker ended it ({status})"


def _retention_ms(seconds: float) -> int:
    return -1 if math.isinf(seconds) else int(seconds * 1000)


class RedisStore:
    """One coredis client, the key layout and the registered scripts."""

    def __init__(
        self, client: coredis.Redis[Any], keys: KeyLayout, config: RegistryConfig, lease: float
    ) -> None:
        self.client = client
        self.keys = keys
        self.config = config
        self.lease_ms = max(1, int(lease * 1000))
        self.retention_ms = _retention_ms(config.terminal_retention)
        self._start = client.register_script(_scripts.START)
        self._write = client.register_script(_scripts.WRITE)
        self._renew = client.register_script(_scripts.RENEW)
        self._read = client.register_script(_scripts.READ)
        self._interrupt = client.register_script(_scripts.INTERRUPT)
        self._evict = client.register_script(_scripts.EVICT)
        self._index = client.register_script(_scripts.INDEX)

    def _reap_args(self, conversation_id: str) -> list[str | int]:
        return [
            self.keys.frames_prefix(conversation_id),
            self.retention_ms,
            STREAM_GRACE_MS,
            self.config.max_events_per_run,
        ]

    async def start(self, conversation_id: str, run_id: str, owner: str) -> tuple[StartResult, str]:
        """Run :data:`~._scripts.START`; also returns the replaced run id ('' if none)."""
        reply: Any = await self._start(
            [self.keys.run(conversation_id)],
            [*self._reap_args(conversation_id), run_id, owner, self.lease_ms],
        )
        values = [text(v) for v in reply]
        if values[0] != "started":
            return (values[0], values[1], 0), ""
        return ("started", run_id, int(values[1])), values[2]

    async def write(
        self,
        conversation_id: str,
        run_id: str,
        frames: Sequence[tuple[int, float, str]],
        status: str,
        current_tool: str | None,
        last_error: str | None,
    ) -> tuple[bool, str]:
        """Run :data:`~._scripts.WRITE`: ``(written, status in Redis)``;
        ``written`` is ``False`` when the run was lost: ended by another
        worker or replaced (the status Redis holds), or gone from Redis
        (``''``)."""
        args: list[str | int | float] = [
            *self._reap_args(conversation_id),
            run_id,
            self.lease_ms,
            status,
            current_tool or "",
            0 if current_tool is None else 1,
            last_error or "",
            0 if last_error is None else 1,
            len(frames),
            frames[0][0] if frames else 0,
            # Microseconds are all time.time() resolves, for less than repr() costs.
            " ".join([f"{timestamp:.6f}" for _, timestamp, _ in frames]),
            "\n".join([payload for _, _, payload in frames]),
        ]
        reply: Any = await self._write(
            [self.keys.run(conversation_id), self.keys.frames(conversation_id, run_id)], args
        )
        values = [text(v) for v in reply]
        if values[0] == "ok":
            return True, ""
        return False, values[1]

    async def renew(self, leases: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
        """Renew the leases of ``(conversation_id, run_id)`` pairs in one
        pipelined round trip: ``(why it was lost or '', interrupt requested)``."""
        async with self.client.pipeline(transaction=False) as pipe:
            requests: list[Any] = [
                self._renew(
                    [self.keys.run(cid)],
                    [*self._reap_args(cid), run_id, self.lease_ms],
                    client=pipe,
                )
                for cid, run_id in leases
            ]
        results = []
        for request in requests:
            values = [text(v) for v in await request]
            if values[0] == "ok":
                results.append(("", values[1] == "1"))
            else:
                results.append((lost_reason(values[1]), False))
        return results

    async def read(self, conversation_id: str) -> tuple[list[Any], str, str]:
        """Run :data:`~._scripts.READ`: ``(flat run hash, oldest stream entry id,
        id of the run it reaped or '')``; the hash list is empty when there is
        no run."""
        reply: Any = await self._read(
            [self.keys.run(conversation_id)], self._reap_args(conversation_id)
        )
        values = list(reply)
        return values[2:], text(values[1]), text(values[0])

    async def interrupt(self, conversation_id: str, run_id: str | None) -> tuple[str, str] | None:
        """Run :data:`~._scripts.INTERRUPT`: ``(run_id, owner)`` or ``None``."""
        reply: Any = await self._interrupt(
            [self.keys.run(conversation_id)], [*self._reap_args(conversation_id), run_id or ""]
        )
        values = [text(v) for v in reply]
        return (values[0], values[1]) if values else None

    async def notify_interrupt(self, owner: str, conversation_id: str, run_id: str) -> None:
        """Tell the owner worker over pub/sub (``<run_id><cid>``)."""
        await self.client.publish(
            self.keys.interrupt_channel(owner), self.keys.terminal_member(conversation_id, run_id)
        )

    async def index(self, conversation_id: str | None, run_id: str | None) -> tuple[int, int]:
        """Index an ended run (or none), expire and cap the retention index,
        and evict the runs popped over the cap: ``(expired, evicted)``."""
        member = "" if conversation_id is None or run_id is None else (run_id + conversation_id)
        reply: Any = await self._index(
            [self.keys.terminal],
            [member, self.retention_ms, self.config.max_retained_terminal],
        )
        values = [text(v) for v in reply]
        expired = int(values[0])
        evicted = 0
        for popped in values[1:]:
            cid, popped_run = self.keys.split_member(popped)
            evicted += int(
                await self._evict([self.keys.run(cid)], [self.keys.frames_prefix(cid), popped_run])
            )
        return expired, evicted

    async def unindex(self, conversation_id: str, run_id: str) -> None:
        """Drop a replaced run from the retention index."""
        await self.client.zrem(self.keys.terminal, [run_id + conversation_id])

    async def retained(self) -> int:
        """How many ended runs the retention index holds (cluster-wide)."""
        return int(await self.client.zcard(self.keys.terminal))

    async def frames(
        self, conversation_id: str, run_id: str, first: int, last: int | None, count: int
    ) -> tuple[Any, ...]:
        """Stream entries of a run from seq ``first`` to ``last`` (frames only)
        or to the end (``None``, end marker included), at most ``count``."""
        end = "+" if last is None else f"{last}-0"
        return await self.client.xrange(
            self.keys.frames(conversation_id, run_id), f"{first}-0", end, count=count
        )

    async def follow(
        self, conversation_id: str, run_id: str, after_id: str, block_ms: int, count: int
    ) -> tuple[Any, ...]:
        """Blocking ``XREAD`` of a run's stream after entry ``after_id``;
        ``()`` when ``block_ms`` passed with nothing new."""
        key = self.keys.frames(conversation_id, run_id)
        reply: Any = await self.client.xread({key: after_id}, count=count, block=block_ms)
        if not reply:
            return ()
        for entries in reply.values():
            return tuple(entries)
        return ()  # pragma: no cover

    async def run_keys(self) -> list[str]:
        """Every run hash under the prefix (``SCAN``: O(keyspace), for listing)."""
        found: list[str] = []
        cursor: int | None = 0
        while True:
            cursor, keys = await self.client.scan(
                cursor=cursor or 0, match=self.keys.run_pattern, count=1000
            )
            found.extend(text(key) for key in keys)
            if not cursor:
                return found
