"""The Lua scripts on their own: each may be run twice by a client retry (a
reply lost on the way back), and running it again changes nothing."""

from __future__ import annotations

from trio_chatruns import RegistryConfig
from trio_chatruns.redis._keys import KeyLayout
from trio_chatruns.redis._store import RedisStore


async def test_start_and_write_are_idempotent(redis_client, key_prefix) -> None:
    store = RedisStore(redis_client, KeyLayout(key_prefix), RegistryConfig(), lease=10.0)
    run_id = "a" * 32
    first = await store.start("c", run_id, "w1")
    again = await store.start("c", run_id, "w1")
    assert first[0][0] == again[0][0] == "started"
    assert first[0][2] == again[0][2]  # same started_at: the retry changed nothing
    assert (await store.start("c", "b" * 32, "w2"))[0][:2] == ("active", run_id)

    batch = [(1, 1.5, '{"n":1}'), (2, 1.6, '"two\\nlines"')]
    assert await store.write("c", run_id, batch, "running", None, None) == (True, "")
    assert await store.write("c", run_id, batch, "running", None, None) == (True, "")
    more = [(3, 1.7, "3")]
    assert await store.write("c", run_id, more, "completed", "tool", None) == (True, "")
    assert await store.write("c", run_id, more, "completed", "tool", None) == (True, "")
    entries = await store.frames("c", run_id, 1, None, 100)
    assert [entry.identifier for entry in entries] == [b"1-0", b"2-0", b"3-0", b"3-1"]
    flat, first_id, reaped = await store.read("c")
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    assert (fields[b"status"], fields[b"latest_seq"], fields[b"current_tool"]) == (
        b"completed",
        b"3",
        b"tool",
    )
    assert (first_id, reaped) == ("1-0", "")
    # A different end for the same run is refused: it is already over.
    assert await store.write("c", run_id, [], "failed", None, "x") == (False, "completed")
