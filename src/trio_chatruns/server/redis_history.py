"""Conversation history in Redis: the :class:`~.turn_store.TurnStore` of ``serve --redis``.

Every worker sharing the Redis reads and writes the same conversations, so
any worker continues any conversation. Keys (default prefix
``trio_chatruns``; every key of a conversation carries the hash tag
``{conversation_id}``, as the run keys do):

- ``trio_chatruns:{<cid>}:conversation``: a hash, ``title``, ``created_at``,
  ``updated_at`` (Unix seconds) and ``next_position`` (the turn counter);
- ``trio_chatruns:{<cid>}:turns``: a sorted set, run ids by position;
- ``trio_chatruns:{<cid>}:turn:<run_id>``: a hash, ``position``, ``prompt``,
  ``prompt_at`` and, once saved, ``reply`` (the reply as JSON);
- ``trio_chatruns:conversations``: a sorted set, conversation ids by
  ``updated_at``: the list of conversations (the one key outside a
  conversation's slot, written after the conversation's own keys).

Each change to a conversation is one Lua script (atomic); a turn's position
is the conversation's counter, taken when its prompt is stored, so the turns
of a conversation keep the order their prompts were accepted in, whichever
worker took them. Nothing expires: as with the SQLite file, the history is
kept until a conversation is deleted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import coredis
from coredis.exceptions import ConnectionError as RedisConnectionError

from .backend import BackendUnavailable
from .conversations import ConversationHistory
from .history import TITLE_CHARS, ConversationSummary, StoredTurn, TurnReply

__all__ = ["RedisConversationStore", "open_redis_conversation_history"]

_TRANSIENT = (RedisConnectionError, TimeoutError, OSError)

# KEYS: conversation, turns, turn. ARGV: run_id, prompt, at, title.
# Returns {position, updated_at}.
_ADD_TURN = """
local existing = redis.call('HGET', KEYS[3], 'position')
if existing then
  return {existing, redis.call('HGET', KEYS[1], 'updated_at') or ARGV[3]}
end
local position = redis.call('HINCRBY', KEYS[1], 'next_position', 1)
if redis.call('HSETNX', KEYS[1], 'title', ARGV[4]) == 1 then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[3])
end
local updated = redis.call('HGET', KEYS[1], 'updated_at')
if not updated or tonumber(ARGV[3]) > tonumber(updated) then
  updated = ARGV[3]
  redis.call('HSET', KEYS[1], 'updated_at', updated)
end
redis.call('ZADD', KEYS[2], position, ARGV[1])
redis.call('HSET', KEYS[3], 'position', position, 'prompt', ARGV[2], 'prompt_at', ARGV[3])
return {tostring(position), updated}
"""

# KEYS: conversation, turn. ARGV: reply JSON, reply time.
# Returns the conversation's updated_at, or false when the turn is not stored.
_SAVE_REPLY = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return false
end
redis.call('HSET', KEYS[2], 'reply', ARGV[1])
local updated = redis.call('HGET', KEYS[1], 'updated_at')
if not updated or tonumber(ARGV[2]) > tonumber(updated) then
  updated = ARGV[2]
  redis.call('HSET', KEYS[1], 'updated_at', updated)
end
return updated
"""

# KEYS: turns. ARGV: turn key prefix, max score ('+inf' or '(N'), last (-1: all).
# Returns {count, run_id, position, prompt, prompt_at, reply|false, ...}, oldest first.
_READ_TURNS = """
local ids
local last = tonumber(ARGV[3])
if last >= 0 then
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'LIMIT', 0, last)
else
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf')
end
local out = {redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[2])}
for i = #ids, 1, -1 do
  local fields = redis.call('HMGET', ARGV[1] .. ids[i], 'position', 'prompt', 'prompt_at', 'reply')
  if fields[1] then
    table.insert(out, ids[i])
    table.insert(out, fields[1])
    table.insert(out, fields[2])
    table.insert(out, fields[3])
    table.insert(out, fields[4] or '')
  end
end
return out
"""

# KEYS: conversation, turns. Returns {title, created_at, updated_at, turns} or false.
_READ_CONVERSATION = """
local fields = redis.call('HMGET', KEYS[1], 'title', 'created_at', 'updated_at')
if not fields[1] then
  return false
end
return {fields[1], fields[2], fields[3], redis.call('ZCARD', KEYS[2])}
"""

# KEYS: conversation, turns. ARGV: turn key prefix. Returns keys deleted (conversation, turns).
_DELETE = """
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('DEL', ARGV[1] .. id)
end
return redis.call('DEL', KEYS[1], KEYS[2])
"""

# KEYS: index. ARGV: updated_at, conversation id.
_INDEX = """
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[2])
return 1
"""

# KEYS: index. ARGV: conversation id.
_UNINDEX = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS: index. ARGV: how many. Newest first.
_LIST = """
return redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _title(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


@contextmanager
def _available(operation: str) -> Iterator[None]:
    try:
        yield
    except _TRANSIENT as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise BackendUnavailable(
            operation, f"Redis is unavailable for the conversation history ({operation}): {reason}"
        ) from exc


def _reply_json(reply: TurnReply) -> str:
    return json.dumps(
        {
            "text": reply.text,
            "tool_calls": reply.tool_calls,
            "status": reply.status,
            "error": reply.error,
            "gap_to": reply.gap_to,
            "at": reply.at,
        },
        ensure_ascii=False,
    )


def _reply(text: str) -> TurnReply | None:
    if not text:
        return None
    data = json.loads(text)
    return TurnReply(
        text=data["text"],
        tool_calls=data["tool_calls"],
        status=data["status"],
        error=data["error"],
        gap_to=data["gap_to"],
        at=data["at"],
    )


class RedisConversationStore:
    """The conversation history in Redis; see the module docstring.

    Every method is async: one script, one round trip (two for
    :meth:`add_turn`, :meth:`save_reply`, :meth:`delete`, which also update
    the conversation list, and :meth:`conversations`).

    Raises (every async method):
        BackendUnavailable: Redis cannot be reached (the server answers 503).
    """

    def __init__(self, client: coredis.Redis[Any], key_prefix: str, where: str) -> None:
        self._client = client
        self._prefix = key_prefix
        self._where = where
        self._add_turn = client.register_script(_ADD_TURN)
        self._save_reply = client.register_script(_SAVE_REPLY)
        self._read_turns = client.register_script(_READ_TURNS)
        self._read_conversation = client.register_script(_READ_CONVERSATION)
        self._delete = client.register_script(_DELETE)
        self._index = client.register_script(_INDEX)
        self._unindex = client.register_script(_UNINDEX)
        self._list = client.register_script(_LIST)

    @property
    def path(self) -> str:
        """The Redis the history is in (its URL without a password)."""
        return self._where

    @property
    def persistent(self) -> bool:
        """``True``: turns outlive a worker (as long as Redis keeps them)."""
        return True

    @property
    def shared(self) -> bool:
        """``True``: every worker on this Redis writes turns."""
        return True

    # -- key names -------------------------------------------------------------

    def _conversation_key(self, conversation_id: str) -> str:
        return f"{self._prefix}:{{{conversation_id}}}:conversation"

    def _turns_key(self, conversation_id: str) -> str:
        return f"{self._prefix}:{{{conversation_id}}}:turns"

    def _turn_prefix(self, conversation_id: str) -> str:
        return f"{self._prefix}:{{{conversation_id}}}:turn:"

    @property
    def _index_key(self) -> str:
        return f"{self._prefix}:conversations"

    # -- positions -------------------------------------------------------------

    def peek_position(self) -> int:
        """``0``: positions are taken in :meth:`add_turn`."""
        return 0

    def next_position(self) -> int:
        """``0``, a placeholder: :meth:`add_turn` numbers the turn."""
        return 0

    # -- writing -----------------------------------------------------------------

    async def add_turn(
        self, conversation_id: str, run_id: str, position: int, prompt: str, at: float
    ) -> int:
        """Store the user's side of a turn; return the position Redis gave it.

        ``position`` is ignored (the conversation's counter numbers turns).
        Idempotent: a turn already stored for ``run_id`` keeps its position.
        """
        with _available("add_turn"):
            reply: Any = await self._add_turn(
                [
                    self._conversation_key(conversation_id),
                    self._turns_key(conversation_id),
                    self._turn_prefix(conversation_id) + run_id,
                ],
                [run_id, prompt, repr(float(at)), _title(prompt)],
            )
            assigned, updated = int(_text(reply[0])), _text(reply[1])
            await self._index([self._index_key], [updated, conversation_id])
        return assigned

    async def save_reply(self, run_id: str, reply: TurnReply, *, conversation_id: str) -> bool:
        """Store the reply of the turn of ``run_id``; ``False`` if the turn is
        not stored (its conversation was deleted meanwhile)."""
        with _available("save_reply"):
            updated: Any = await self._save_reply(
                [
                    self._conversation_key(conversation_id),
                    self._turn_prefix(conversation_id) + run_id,
                ],
                [_reply_json(reply), repr(float(reply.at))],
            )
            if updated is None:
                return False
            await self._index([self._index_key], [_text(updated), conversation_id])
        return True

    async def delete(self, conversation_id: str) -> bool:
        """Delete a conversation and all its turns; ``False`` if it had none."""
        with _available("delete"):
            deleted: Any = await self._delete(
                [self._conversation_key(conversation_id), self._turns_key(conversation_id)],
                [self._turn_prefix(conversation_id)],
            )
            await self._unindex([self._index_key], [conversation_id])
        return int(deleted) > 0

    # -- reading -----------------------------------------------------------------

    async def _turns(
        self, conversation_id: str, before: int | None, last: int | None
    ) -> tuple[int, list[StoredTurn]]:
        with _available("read"):
            reply: Any = await self._read_turns(
                [self._turns_key(conversation_id)],
                [
                    self._turn_prefix(conversation_id),
                    "+inf" if before is None else f"({before}",
                    -1 if last is None else last,
                ],
            )
        count = int(reply[0])
        turns = [
            StoredTurn(
                conversation_id,
                _text(reply[i]),
                int(_text(reply[i + 1])),
                _text(reply[i + 2]),
                float(_text(reply[i + 3])),
                _reply(_text(reply[i + 4])),
            )
            for i in range(1, len(reply) - 4, 5)
        ]
        return count, turns

    async def turns(
        self, conversation_id: str, *, before: int | None = None, last: int | None = None
    ) -> list[StoredTurn]:
        """The turns of a conversation, oldest first (``[]`` if there are none)."""
        _, turns = await self._turns(conversation_id, before, last)
        return turns

    async def context(
        self, conversation_id: str, *, before: int, last: int
    ) -> tuple[int, list[StoredTurn]]:
        """How many turns come before position ``before``, and the newest ``last`` of them."""
        return await self._turns(conversation_id, before, last)

    async def conversations(self, *, limit: int = 100) -> list[ConversationSummary]:
        """The conversations, most recently updated first, at most ``limit``.

        Two round trips: the index, then every conversation's summary pipelined.
        """
        summaries: list[ConversationSummary] = []
        with _available("conversations"):
            listed: Any = await self._list([self._index_key], [limit])
            ids = [_text(raw) for raw in listed]
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                requests: list[Any] = [
                    self._read_conversation(
                        [self._conversation_key(cid), self._turns_key(cid)], [], client=pipe
                    )
                    for cid in ids
                ]
            for conversation_id, request in zip(ids, requests, strict=True):
                found: Any = await request
                if found is None:  # deleted meanwhile: drop its index entry
                    await self._unindex([self._index_key], [conversation_id])
                    continue
                title, created, updated, turns = (_text(v) for v in found)
                summaries.append(
                    ConversationSummary(
                        conversation_id, title, float(created), float(updated), int(turns)
                    )
                )
        summaries.sort(key=lambda s: (-s.updated_at, s.id))
        return summaries


@asynccontextmanager
async def open_redis_conversation_history(
    client: coredis.Redis[Any],
    *,
    key_prefix: str = "trio_chatruns",
    history_messages: int = 20,
    where: str = "redis",
) -> AsyncIterator[ConversationHistory]:
    """A :class:`ConversationHistory` over the conversations kept in Redis.

    Open the Redis run backend inside this block with
    ``on_run_end=history.on_run_end``, so its hooks finish first.

    Args:
        client: an entered ``coredis.Redis``.
        key_prefix: the prefix of every key (the run backend's, by default).
        history_messages: earlier messages handed to the model with a prompt.
        where: how logs name the store (e.g. the URL without its password).
    """
    yield ConversationHistory(RedisConversationStore(client, key_prefix, where), history_messages)
