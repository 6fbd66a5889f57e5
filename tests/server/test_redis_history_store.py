"""The conversation history in Redis (server/redis_history.py), on a real redis-server.

The same answers as the SQLite store for what the history relies on: turns
numbered in the order their prompts were stored, per conversation; replies
saved only for stored turns; the list newest first; context reads; delete.
"""

from __future__ import annotations

import pytest

from trio_chatruns.server.history import TurnReply

coredis = pytest.importorskip("coredis")

from trio_chatruns.server.redis_history import RedisConversationStore  # noqa: E402


def reply(text, at, status="completed"):
    return TurnReply(text=text, tool_calls=[], status=status, error=None, gap_to=None, at=at)


async def test_turns_replies_list_and_delete(redis_url):
    async with coredis.Redis.from_url(redis_url) as client:
        store = RedisConversationStore(client, "t", "redis://test")
        assert store.shared and store.persistent and store.path == "redis://test"
        assert await store.conversations() == []
        r1 = "1" * 32
        r2 = "2" * 32
        r3 = "3" * 32
        assert await store.add_turn("a", r1, 0, "first  prompt\nof a", 100.0) == 1
        assert await store.add_turn("b", r3, 0, "b's prompt", 101.0) == 1
        assert await store.add_turn("a", r2, 0, "second", 102.0) == 2
        # Idempotent per run id: the turn keeps its position.
        assert await store.add_turn("a", r1, 0, "first  prompt\nof a", 100.0) == 1
        assert await store.save_reply(r1, reply("one", 103.0), conversation_id="a")
        assert not await store.save_reply("9" * 32, reply("x", 104.0), conversation_id="a")
        turns = await store.turns("a")
        assert [(t.run_id, t.position, t.prompt) for t in turns] == [
            (r1, 1, "first  prompt\nof a"),
            (r2, 2, "second"),
        ]
        assert turns[0].reply == reply("one", 103.0)
        assert turns[1].reply is None
        earlier, context = await store.context("a", before=2, last=5)
        assert (earlier, [t.run_id for t in context]) == (1, [r1])
        earlier, context = await store.context("a", before=10, last=1)
        assert (earlier, [t.run_id for t in context]) == (2, [r2])
        assert await store.context("a", before=10, last=0) == (2, [])
        listed = await store.conversations()
        assert [(c.id, c.title, c.turns, c.updated_at) for c in listed] == [
            ("a", "first prompt of a", 2, 103.0),
            ("b", "b's prompt", 1, 101.0),
        ]
        assert [c.id for c in await store.conversations(limit=1)] == ["a"]
        assert await store.delete("a")
        assert not await store.delete("a")
        assert await store.turns("a") == []
        # A reply for a deleted conversation does not bring it back.
        assert not await store.save_reply(r2, reply("late", 105.0), conversation_id="a")
        assert [c.id for c in await store.conversations()] == ["b"]
        # Every key of a conversation carries its hash tag.
        keys = {k.decode() if isinstance(k, bytes) else k for k in await client.keys("t:*")}
        assert keys == {
            "t:{b}:conversation",
            "t:{b}:turns",
            f"t:{{b}}:turn:{r3}",
            "t:conversations",
        }
