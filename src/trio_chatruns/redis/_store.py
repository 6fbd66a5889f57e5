"""The Redis operations the backend uses, one method per script or command,
over one coredis client. No policy here: callers decide about retries and
errors (connection errors propagate as coredis raises them)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import attrs
import coredis

from .._config import RegistryConfig
from . import _scripts
from ._codec import text
from ._keys import KeyLayout

__all__ = ["EndInfo", "RedisStore", "StartReply", "ended_runs", "flat_field", "lost_reason"]

_TERMINAL = frozenset({"completed", "failed", "cancelled"})

STREAM_GRACE_MS = 5000
"""How long a run's stream outlives its record after the end (ms), so that a
reader already following it reads the end even with ``terminal_retention=0``;
also how long a run that ended while not current keeps its hash."""

Flat = list[Any]
"""A run hash as Redis returns it: ``[field, value, ...]``."""


@attrs.frozen
class StartReply:
    """What ``START`` answered.

    ``outcome``: ``started``, ``queued``, ``active`` (``reject``) or ``full``;
    ``started_ms``: the run's ``started_at`` (Redis ``TIME``, ms);
    ``other_run_id``/``other_owner``: the replaced run (``started``) or the
    active run (otherwise); ``ended``: the runs the script ended for others
    (see :func:`ended_runs`).
    """

    outcome: str
    started_ms: int
    other_run_id: str
    other_owner: str
    ended: str


@attrs.frozen
class StreamEntry:
    """A stream entry as a script returned it (the shape coredis gives)."""

    identifier: str
    field_values: dict[str, str]


def _entries(raw: Any) -> list[StreamEntry]:
    """Stream entries from a script's JSON (``XRANGE``'s reply)."""
    # cjson encodes an empty Lua table as an object.
    if not isinstance(raw, list):
        return []
    return [
        StreamEntry(entry_id, dict(zip(values[::2], values[1::2], strict=True)))
        for entry_id, values in raw
    ]


@attrs.frozen
class EndInfo:
    """What the ``WRITE`` of a run's end answered: whether a queued run
    replaced it at once (then it is not indexed for retention), its bytes,
    and the runs the end's promotion ended for others."""

    replaced: bool
    bytes: int
    ended: str
    end_no: int = 0
    entries: list[StreamEntry] | None = None


def ended_runs(blob: str) -> list[tuple[Flat, bool, list[StreamEntry]]]:
    """The runs a script ended for others, from its JSON: ``(flat hash, index
    it for retention, its stream's entries)`` each, in the order they ended."""
    if not blob:
        return []
    runs = []
    for flat, raw_entries in json.loads(blob):
        fields = [text(v) for v in flat]
        index = False
        if len(fields) >= 2 and fields[-2] == "~index":
            index = fields[-1] == "1"
            del fields[-2:]
        runs.append((fields, index, _entries(raw_entries)))
    return runs


def flat_field(flat: Flat, name: str) -> str | None:
    """One field of a flat run hash, or ``None``."""
    for i in range(0, len(flat) - 1, 2):
        if text(flat[i]) == name:
            return text(flat[i + 1])
    return None


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


def _budget(value: int | None) -> int:
    return -1 if value is None else value


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
        self.measures_bytes = config.measures_bytes
        # Set when the backend calls a run-end hook: the WRITE of an end then
        # answers with the run's end number and frames.
        self.hook_data = False
        self._start = client.register_script(_scripts.START)
        self._write = client.register_script(_scripts.WRITE)
        self._renew = client.register_script(_scripts.RENEW)
        self._read = client.register_script(_scripts.READ)
        self._queued = client.register_script(_scripts.QUEUED)
        self._interrupt = client.register_script(_scripts.INTERRUPT)
        self._evict = client.register_script(_scripts.EVICT)
        self._index = client.register_script(_scripts.INDEX)
        self._hooked = client.register_script(_scripts.HOOKED)
        # The answers of the WRITE calls that ended a run, by run id, until
        # the end's duties take them (``take_end``).
        self._ends: dict[str, EndInfo] = {}

    def _keys(self, conversation_id: str) -> list[str]:
        return [self.keys.run(conversation_id), self.keys.queue(conversation_id)]

    def _common(self, conversation_id: str) -> list[str | int]:
        """``ARGV[1..9]`` of every conversation script (see ``_scripts.py``)."""
        return [
            self.keys.conversation(conversation_id),
            self.retention_ms,
            STREAM_GRACE_MS,
            self.config.max_events_per_run,
            self.keys.channel_prefix,
            self.lease_ms,
            conversation_id,
            _budget(self.config.max_bytes_per_run),
            "1" if self.hook_data else "0",
        ]

    async def start(
        self, conversation_id: str, run_id: str, owner: str, policy: str, max_queued: int
    ) -> StartReply:
        """Run :data:`~._scripts.START`."""
        reply: Any = await self._start(
            self._keys(conversation_id),
            [*self._common(conversation_id), run_id, owner, policy, max_queued],
        )
        values = [text(v) for v in reply]
        return StartReply(values[0], int(values[1] or 0), values[2], values[3], values[4])

    async def write(
        self,
        conversation_id: str,
        run_id: str,
        frames: Sequence[tuple[int, float, str, int]],
        status: str,
        current_tool: str | None,
        last_error: str | None,
    ) -> tuple[bool, str]:
        """Run :data:`~._scripts.WRITE` for ``(seq, timestamp, JSON, bytes)``
        frames: ``(written, status in Redis)``; ``written`` is ``False`` when
        the run was lost: ended by another worker or replaced (the status
        Redis holds), or gone from Redis (``''``). The answer to a write of
        the end is kept for :meth:`take_end`."""
        args: list[str | int | float] = [
            *self._common(conversation_id),
            run_id,
            status,
            current_tool or "",
            0 if current_tool is None else 1,
            last_error or "",
            0 if last_error is None else 1,
            len(frames),
            frames[0][0] if frames else 0,
            # Microseconds are all time.time() resolves, for less than repr() costs.
            " ".join([f"{frame[1]:.6f}" for frame in frames]),
            "\n".join([frame[2] for frame in frames]),
            " ".join([str(frame[3]) for frame in frames]) if self.measures_bytes else "",
            "1" if self.hook_data else "0",
        ]
        reply: Any = await self._write(self._keys(conversation_id), args)
        values = [text(v) for v in reply]
        if values[0] == "ok":
            if status in _TERMINAL:
                self._ends[run_id] = EndInfo(
                    values[2] == "1",
                    int(values[3]),
                    values[4],
                    int(values[5]),
                    _entries(json.loads(values[6])) if values[6] else None,
                )
            return True, ""
        return False, values[1]

    def take_end(self, run_id: str) -> EndInfo | None:
        """The answer to the write of the run's end (once), or ``None``."""
        return self._ends.pop(run_id, None)

    async def renew(self, leases: Sequence[tuple[str, str]]) -> list[tuple[str | None, bool, str]]:
        """Renew the leases of ``(conversation_id, run_id)`` pairs in one
        pipelined round trip: ``(None, interrupt requested, 'current' |
        'queued')`` for a held run, ``(status Redis holds, False, '')`` for a
        lost one (``''``: gone from Redis)."""
        async with self.client.pipeline(transaction=False) as pipe:
            requests: list[Any] = [
                self._renew(self._keys(cid), [*self._common(cid), run_id], client=pipe)
                for cid, run_id in leases
            ]
        results: list[tuple[str | None, bool, str]] = []
        for request in requests:
            values = [text(v) for v in await request]
            if values[0] == "ok":
                results.append((None, values[1] == "1", values[2]))
            else:
                results.append((values[1], False, ""))
        return results

    async def read(
        self, conversation_id: str, run_id: str | None = None, *, ended_too: bool = False
    ) -> tuple[list[Any], str, str]:
        """Run :data:`~._scripts.READ`: ``(flat run hash, oldest stream entry id,
        the runs it ended as JSON or '')``; the hash list is empty when there
        is no run (or, with ``run_id``, when that run is neither the current
        nor a queued one, nor with ``ended_too`` one that ended while not
        current a few seconds ago)."""
        reply: Any = await self._read(
            self._keys(conversation_id),
            [*self._common(conversation_id), run_id or "", "1" if ended_too else "0"],
        )
        values = list(reply)
        return values[2:], text(values[1]), text(values[0])

    async def queued(self, conversation_id: str) -> tuple[Flat, list[Flat], str]:
        """Run :data:`~._scripts.QUEUED`: ``(current run's hash, queued runs'
        hashes in start order, the runs it ended as JSON or '')``."""
        reply: Any = await self._queued(self._keys(conversation_id), self._common(conversation_id))
        values = list(reply)
        return list(values[1]), [list(flat) for flat in values[2:] if flat], text(values[0])

    async def interrupt(self, conversation_id: str, run_id: str | None) -> tuple[str, str] | None:
        """Run :data:`~._scripts.INTERRUPT`: ``(run_id, owner)`` or ``None``."""
        reply: Any = await self._interrupt(
            self._keys(conversation_id), [*self._common(conversation_id), run_id or ""]
        )
        values = [text(v) for v in reply]
        return (values[0], values[1]) if values else None

    async def notify(self, owner: str, kind: str, conversation_id: str, run_id: str) -> None:
        """Tell the owner worker over pub/sub: ``<kind><run_id><cid>``."""
        await self.client.publish(
            self.keys.interrupt_channel(owner),
            kind + self.keys.terminal_member(conversation_id, run_id),
        )

    async def notify_interrupt(self, owner: str, conversation_id: str, run_id: str) -> None:
        """Tell the owner worker to interrupt its run."""
        await self.notify(owner, "i", conversation_id, run_id)

    async def index(
        self,
        conversation_id: str | None,
        run_id: str | None,
        size: int = 0,
        *,
        drop: tuple[str, str] | None = None,
    ) -> tuple[int, int, int]:
        """Index an ended run of ``size`` bytes (or none), drop a replaced one,
        expire and cap the retention index, and evict the runs popped:
        ``(expired, evicted over the cap, evicted over the bytes)``."""
        member = "" if conversation_id is None or run_id is None else (run_id + conversation_id)
        dropped = "" if drop is None else drop[1] + drop[0]
        reply: Any = await self._index(
            [self.keys.terminal, self.keys.terminal_bytes],
            [
                member,
                self.retention_ms,
                self.config.max_retained_terminal,
                size,
                _budget(self.config.max_retained_bytes),
                dropped,
                "1" if self.measures_bytes else "0",
            ],
        )
        values = [text(v) for v in reply]
        expired, over_cap = int(values[0]), int(values[1])
        evicted = [0, 0]
        for n, popped in enumerate(values[2:]):
            cid, popped_run = self.keys.split_member(popped)
            evicted[n >= over_cap] += int(
                await self._evict(
                    [self.keys.run(cid), self.keys.conversation(cid) + "hooks"],
                    [self.keys.frames_prefix(cid), popped_run],
                )
            )
        return expired, evicted[0], evicted[1]

    async def unindex(self, conversation_id: str, run_id: str) -> None:
        """Drop a replaced run from the retention index."""
        await self.index(None, None, drop=(conversation_id, run_id))

    async def hooked(self, conversation_id: str, end_no: int | None = None) -> int:
        """Run :data:`~._scripts.HOOKED`: record that the hook call of end
        number ``end_no`` is over (if given); answer how far they are done."""
        reply: Any = await self._hooked(
            [self.keys.conversation(conversation_id) + "hooks"],
            ["" if end_no is None else end_no],
        )
        return int(reply)

    async def retained(self) -> tuple[int, int]:
        """How many ended runs the retention index holds (cluster-wide), and
        their bytes (0 without a byte budget)."""
        count = int(await self.client.zcard(self.keys.terminal))
        size = 0
        if self.measures_bytes:
            size = int(text(await self.client.hget(self.keys.terminal_bytes, "#total") or 0))
        return count, size

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
