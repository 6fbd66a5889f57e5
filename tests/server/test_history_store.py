"""The SQLite history store on a real file: turns, replies, reopening, schema, WAL."""

from __future__ import annotations

import sqlite3

import pytest

from trio_chatruns.server.history import (
    SCHEMA_VERSION,
    HistoryError,
    TurnReply,
    iso_utc,
    open_conversation_store,
)


def reply(text: str, status: str = "completed", **kw: object) -> TurnReply:
    fields = {"tool_calls": [], "error": None, "gap_to": None, "at": 2000.0, **kw}
    return TurnReply(text=text, status=status, **fields)  # type: ignore[arg-type]


async def test_turns_survive_reopening(tmp_path):
    db = str(tmp_path / "history.db")
    async with open_conversation_store(db) as store:
        assert store.persistent and store.path == db
        first = store.next_position()
        await store.add_turn("c1", "run-1", first, "hello there", 1000.0)
        calls = [{"id": "x", "name": "search", "arguments": {"q": 1}, "result": "2 results"}]
        assert await store.save_reply("run-1", reply("Hi!", tool_calls=calls, at=1000.5))
        await store.add_turn("c1", "run-2", store.next_position(), "again", 1001.0)
        await store.add_turn("c2", "run-3", store.next_position(), "other\n  chat", 1002.0)
    async with open_conversation_store(db) as store:
        turns = await store.turns("c1")
        assert [t.run_id for t in turns] == ["run-1", "run-2"]
        assert turns[0].prompt == "hello there"
        assert turns[0].reply == reply("Hi!", tool_calls=calls, at=1000.5)
        assert turns[1].reply is None  # never saved: the server was killed
        # Positions go on rising after a reopen.
        assert store.next_position() > turns[1].position
        summaries = await store.conversations()
        assert [s.id for s in summaries] == ["c2", "c1"]  # newest first
        assert summaries[0].title == "other chat"
        assert summaries[1].title == "hello there" and summaries[1].turns == 2


async def test_file_is_wal_and_versioned(tmp_path):
    db = tmp_path / "history.db"
    async with open_conversation_store(str(db)):
        pass
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.commit()
    finally:
        connection.close()
    with pytest.raises(HistoryError, match="schema version"):
        async with open_conversation_store(str(db)):
            pass


async def test_not_a_database_is_refused(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(HistoryError, match=r"notes\.txt"):
        async with open_conversation_store(str(bad)):
            pass
    with pytest.raises(HistoryError, match="cannot open"):
        async with open_conversation_store(str(tmp_path / "missing-dir" / "h.db")):
            pass


async def test_window_delete_and_memory():
    async with open_conversation_store(":memory:") as store:
        assert not store.persistent
        for i in range(5):
            await store.add_turn("c", f"r{i}", store.next_position(), f"p{i}", 1000.0 + i)
        turns = await store.turns("c")
        before = turns[4].position
        assert [t.prompt for t in await store.turns("c", before=before, last=2)] == ["p2", "p3"]
        assert await store.count_turns("c", before=before) == 4
        count, window = await store.context("c", before=before, last=2)
        assert count == 4 and [t.prompt for t in window] == ["p2", "p3"]
        assert await store.context("c", before=before, last=0) == (4, [])
        long = "x" * 200
        await store.add_turn("d", "rd", store.next_position(), long, 2000.0)
        summary = await store.conversation("d")
        assert summary is not None and len(summary.title) == 80 and summary.title.endswith("…")
        assert await store.delete("c")
        assert await store.turns("c") == []
        assert not await store.delete("c")
        assert not await store.save_reply("r1", reply("late"))  # its turn is gone
        assert await store.conversation("c") is None


def test_iso_utc():
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1767225600.25) == "2026-01-01T00:00:00.250Z"


def test_reply_from_events_text_tools_gap_and_shutdown():
    from trio_chatruns import ChatRunEvent, ChatRunRecord, ChatRunStatus
    from trio_chatruns.server.conversations import SHUTDOWN_ERROR, reply_from_events

    def event(seq, frame):
        return ChatRunEvent("c", "r", seq, 1000.0 + seq, frame)

    frames = [
        {"type": "token", "text": "Hel"},
        {"type": "tool_call", "id": "t1", "name": "search", "arguments": {"q": "x"}},
        {"type": "tool_result", "id": "t1", "name": "search", "content": "3 results"},
        {"type": "token", "text": "lo"},
        "not a dict",
        {"type": "interrupted"},
    ]
    events = [event(seq, frame) for seq, frame in enumerate(frames, start=3)]
    fields = {"started_at": 0.0, "updated_at": 1.0, "terminated_at": 1.0, "current_tool": None}
    record = ChatRunRecord(
        conversation_id="c",
        run_id="r",
        status=ChatRunStatus.CANCELLED,
        latest_seq=8,
        last_error=None,
        **fields,
    )
    reply = reply_from_events(record, events, shutting_down=True)
    assert reply.text == "Hello"
    assert reply.tool_calls == [
        {"id": "t1", "name": "search", "arguments": {"q": "x"}, "result": "3 results"}
    ]
    assert reply.status == "cancelled" and reply.error == SHUTDOWN_ERROR
    assert reply.gap_to == 2  # frames 1 and 2 were trimmed before the hook ran
    assert reply_from_events(record, events).error is None  # an interrupt by a client
    assert reply_from_events(record, []).gap_to == 8
