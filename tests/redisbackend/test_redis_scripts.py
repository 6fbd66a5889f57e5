"""The Lua scripts on their own: each may be run twice by a client retry (a
reply lost on the way back), and running it again changes nothing."""

from __future__ import annotations

from trio_chatruns import RegistryConfig
from trio_chatruns.redis._keys import KeyLayout
from trio_chatruns.redis._store import RedisStore, ended_runs, flat_field


async def test_start_and_write_are_idempotent(redis_client, key_prefix) -> None:
    store = RedisStore(redis_client, KeyLayout(key_prefix), RegistryConfig(), lease=10.0)
    run_id = "a" * 32
    first = await store.start("c", run_id, "w1", "reject", 8)
    again = await store.start("c", run_id, "w1", "reject", 8)
    assert first.outcome == again.outcome == "started"
    assert first.started_ms == again.started_ms  # same started_at: the retry changed nothing
    refused = await store.start("c", "b" * 32, "w2", "reject", 8)
    assert (refused.outcome, refused.other_run_id, refused.other_owner) == ("active", run_id, "w1")
    queued = await store.start("c", "d" * 32, "w2", "enqueue", 8)
    assert queued.outcome == "queued"
    assert (await store.start("c", "d" * 32, "w2", "enqueue", 8)).outcome == "queued"
    _, waiting, _ = await store.queued("c")
    assert len(waiting) == 1  # the retry queued nothing more

    batch = [(1, 1.5, '{"n":1}', -1), (2, 1.6, '"two\\nlines"', -1)]
    assert await store.write("c", run_id, batch, "running", None, None) == (True, "")
    assert await store.write("c", run_id, batch, "running", None, None) == (True, "")
    more = [(3, 1.7, "3", -1)]
    assert await store.write("c", run_id, more, "completed", "tool", None) == (True, "")
    assert await store.write("c", run_id, more, "completed", "tool", None) == (True, "")
    entries = await store.frames("c", run_id, 1, None, 100)
    assert [entry.identifier for entry in entries] == [b"1-0", b"2-0", b"3-0", b"3-1"]
    # The end started the queued run: the ended one is no longer current.
    end = store.take_end(run_id)
    assert end is not None and end.replaced
    flat, _, reaped = await store.read("c", run_id)
    assert flat == []
    flat, _, reaped = await store.read("c")
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    assert (fields[b"run_id"], fields[b"status"]) == (b"d" * 32, b"running")
    # The ended run keeps its hash a few seconds at q:<run_id>, for its owner.
    fields = await redis_client.hgetall(f"{key_prefix}:{{c}}:q:{run_id}")
    assert (fields[b"status"], fields[b"latest_seq"], fields[b"current_tool"]) == (
        b"completed",
        b"3",
        b"tool",
    )
    assert reaped == ""
    # A different end for the same run is refused: it is already over.
    assert await store.write("c", run_id, [], "failed", None, "x") == (False, "completed")


async def test_an_end_written_by_another_worker_is_not_taken_for_a_retry(
    redis_client, key_prefix
) -> None:
    """The owner's WRITE of an end answers ``ok`` again only for its own end
    (a client retry): a run another worker ended with the same status (an
    ``interrupt`` start cancelled it while queued) answers ``lost``, so the
    owner does not do the end's duties (the hook) a second time."""
    store = RedisStore(redis_client, KeyLayout(key_prefix), RegistryConfig(), lease=10.0)
    assert (await store.start("c", "a" * 32, "w1", "reject", 8)).outcome == "started"
    assert (await store.start("c", "b" * 32, "w1", "enqueue", 8)).outcome == "queued"
    reply = await store.start("c", "d" * 32, "w2", "interrupt", 8)
    assert reply.outcome == "queued"
    ended = ended_runs(reply.ended)
    assert [(flat_field(flat, "run_id"), flat_field(flat, "status")) for flat, _, _ in ended] == [
        ("b" * 32, "cancelled")
    ]
    interrupted = [(1, 1.0, '{"type":"interrupted"}', -1)]
    assert await store.write("c", "b" * 32, interrupted, "cancelled", None, None) == (
        False,
        "cancelled",
    )
