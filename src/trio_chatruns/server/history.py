"""Conversation history in SQLite: the turns of every conversation, on disk.

One table row per *turn*: the user's prompt (written when the run is
accepted) and the assistant's reply (written by the registry's run-end hook:
the text, the tool calls, the final status, an error or the range of frames
that were trimmed before it could be saved). Conversations are listed
newest first with the first prompt as their title.

The store uses the standard library's :mod:`sqlite3` on one connection.
Every call runs in a worker thread (``trio.to_thread.run_sync``) behind a
``trio.CapacityLimiter(1)``, so the Trio thread never blocks on the disk and
the connection is used by one thread at a time. A file database is opened in
WAL mode (readers do not wait for the writer, and a commit survives a crash
of the process); ``":memory:"`` keeps nothing after the store closes.

The schema is versioned with ``PRAGMA user_version`` (SQLite's own slot for
it): :data:`SCHEMA_VERSION` is what this module writes; an older file is
migrated step by step when opened, a newer one is refused (``HistoryError``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

__all__ = [
    "DEFAULT_DB_FILENAME",
    "SCHEMA_VERSION",
    "ConversationSummary",
    "HistoryError",
    "StoredTurn",
    "TurnReply",
    "iso_utc",
    "open_conversation_store",
    "ConversationStore",
]

DEFAULT_DB_FILENAME = "trio-chatruns.db"
"""The file ``trio-chatruns serve`` keeps history in, in the current directory."""

SCHEMA_VERSION = 1
"""The ``PRAGMA user_version`` this module writes."""

TITLE_CHARS = 80
"""A conversation's title is its first prompt, cut to this many characters."""

T = TypeVar("T")

# Each entry takes the schema from version i to i + 1, in one transaction.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversations (
        id          TEXT PRIMARY KEY,
        title       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE turns (
        run_id          TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        prompt          TEXT NOT NULL,
        prompt_at       REAL NOT NULL,
        reply           TEXT,
        tool_calls      TEXT,
        status          TEXT,
        error           TEXT,
        gap_to          INTEGER,
        reply_at        REAL
    );
    CREATE INDEX turns_by_conversation ON turns (conversation_id, position);
    CREATE INDEX conversations_by_update ON conversations (updated_at DESC);
    """,
]


class HistoryError(Exception):
    """The history database cannot be used (newer schema, not a database, ...)."""


def iso_utc(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds: ``2026-11-30T05:12:03.042Z``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class TurnReply:
    """The assistant's side of a turn, as the run-end hook saves it.

    Attributes:
        text (str): the concatenated ``token`` frames that were still buffered.
        tool_calls (list[dict]): the ``tool_call`` frames (``id``, ``name``,
            ``arguments``), each with a ``result`` when a ``tool_result``
            frame answered it.
        status (str): the run's final status: ``completed``, ``failed`` or
            ``cancelled``.
        error (str | None): why it did not complete (the run's
            ``last_error``, or that a server shutdown cut it).
        gap_to (int | None): frames ``1..gap_to`` were trimmed from the replay
            buffer before the reply was saved (``--max-events``), so ``text``
            lacks their tokens; ``None`` when nothing is missing.
        at (float): when it was saved, Unix seconds.
    """

    text: str
    tool_calls: list[dict[str, Any]]
    status: str
    error: str | None
    gap_to: int | None
    at: float


@attrs.frozen
class StoredTurn:
    """One turn as stored: the prompt, and the reply once the run ended.

    ``reply`` is ``None`` while the run has not ended, or when the server
    stopped without saving it (killed, not shut down).
    """

    conversation_id: str
    run_id: str
    position: int
    prompt: str
    prompt_at: float
    reply: TurnReply | None


@attrs.frozen
class ConversationSummary:
    """A conversation in the list: ``id``, ``title`` (its first prompt), times, turns."""

    id: str
    title: str
    created_at: float
    updated_at: float
    turns: int


class ConversationStore:
    """The SQLite history of every conversation; create it with :func:`open_conversation_store`.

    Every method is async: the query runs in a worker thread, one at a time.

    Raises (every method):
        sqlite3.Error: the database failed (disk full, file removed, ...).
    """

    def __init__(self, connection: sqlite3.Connection, path: str, next_position: int) -> None:
        self._db = connection
        self._limiter = trio.CapacityLimiter(1)
        self._next_position = next_position
        self.path = path
        """The database file (absolute), or ``":memory:"``."""

    @property
    def persistent(self) -> bool:
        """``True`` for a file, ``False`` for ``":memory:"``."""
        return self.path != ":memory:"

    @property
    def shared(self) -> bool:
        """``False``: one process writes this database."""
        return False

    def peek_position(self) -> int:
        """The position :meth:`next_position` will give next (reserving nothing)."""
        return self._next_position

    def next_position(self) -> int:
        """Reserve the position of a new turn (rising across every conversation).

        Synchronous, no checkpoint: call it in the same step as the run's
        start, so turns are ordered as their runs were accepted.
        """
        position = self._next_position
        self._next_position += 1
        return position

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(_transaction, self._db, fn, limiter=self._limiter)

    async def add_turn(
        self, conversation_id: str, run_id: str, position: int, prompt: str, at: float
    ) -> int:
        """Store the user's side of a turn (and the conversation, titled by its first prompt).

        Idempotent: a turn already stored for ``run_id`` is left as it is.
        Returns ``position``.
        """

        def add(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET updated_at = max(updated_at, excluded.updated_at)",
                (conversation_id, _title(prompt), at, at),
            )
            db.execute(
                "INSERT INTO turns (run_id, conversation_id, position, prompt, prompt_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                (run_id, conversation_id, position, prompt, at),
            )

        await self._run(add)
        return position

    async def save_reply(
        self, run_id: str, reply: TurnReply, *, conversation_id: str | None = None
    ) -> bool:
        """Store the assistant's side of the turn of ``run_id``.

        Returns ``False`` (and stores nothing) if the turn is not stored,
        e.g. its conversation was deleted meanwhile. ``conversation_id`` is
        not needed here (run ids are unique); the Redis store uses it.
        """

        def save(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE turns SET reply = ?, tool_calls = ?, status = ?, error = ?, gap_to = ?,"
                " reply_at = ? WHERE run_id = ?",
                (
                    reply.text,
                    json.dumps(reply.tool_calls, ensure_ascii=False),
                    reply.status,
                    reply.error,
                    reply.gap_to,
                    reply.at,
                    run_id,
                ),
            )
            if cursor.rowcount:
                db.execute(
                    "UPDATE conversations SET updated_at = max(updated_at, ?)"
                    " WHERE id = (SELECT conversation_id FROM turns WHERE run_id = ?)",
                    (reply.at, run_id),
                )
            return cursor.rowcount > 0

        return await self._run(save)

    async def turns(
        self, conversation_id: str, *, before: int | None = None, last: int | None = None
    ) -> list[StoredTurn]:
        """The turns of a conversation, oldest first (``[]`` if there are none).

        Args:
            before: only turns with a smaller position.
            last: only the newest ``last`` of those.
        """
        return await self._run(lambda db: _read_turns(db, conversation_id, before, last))

    async def context(
        self, conversation_id: str, *, before: int, last: int
    ) -> tuple[int, list[StoredTurn]]:
        """How many turns come before position ``before``, and the newest ``last`` of them.

        One query round (one worker-thread call): what a new turn's model needs.
        """

        def read(db: sqlite3.Connection) -> tuple[int, list[StoredTurn]]:
            row = db.execute(
                "SELECT count(*) FROM turns WHERE conversation_id = ? AND position < ?",
                (conversation_id, before),
            ).fetchone()
            turns = _read_turns(db, conversation_id, before, last) if last else []
            return int(row[0]), turns

        return await self._run(read)

    async def count_turns(self, conversation_id: str, *, before: int | None = None) -> int:
        """How many turns the conversation has (with a position below ``before``)."""

        def count(db: sqlite3.Connection) -> int:
            if before is None:
                row = db.execute(
                    "SELECT count(*) FROM turns WHERE conversation_id = ?", (conversation_id,)
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT count(*) FROM turns WHERE conversation_id = ? AND position < ?",
                    (conversation_id, before),
                ).fetchone()
            return int(row[0])

        return await self._run(count)

    async def conversation(self, conversation_id: str) -> ConversationSummary | None:
        """One conversation's summary, ``None`` if it has no history."""
        found = await self._run(lambda db: _summaries(db, "WHERE c.id = ?", (conversation_id,)))
        return found[0] if found else None

    async def conversations(self, *, limit: int = 100) -> list[ConversationSummary]:
        """The conversations, most recently updated first, at most ``limit``."""
        return await self._run(
            lambda db: _summaries(db, "ORDER BY c.updated_at DESC, c.id LIMIT ?", (limit,))
        )

    async def delete(self, conversation_id: str) -> bool:
        """Delete a conversation and all its turns; ``False`` if it had none."""

        def delete(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation_id,))
            cursor = db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return cursor.rowcount > 0

        return await self._run(delete)


def _read_turns(
    db: sqlite3.Connection, conversation_id: str, before: int | None, last: int | None
) -> list[StoredTurn]:
    query = (
        "SELECT conversation_id, run_id, position, prompt, prompt_at, reply, tool_calls,"
        " status, error, gap_to, reply_at FROM turns WHERE conversation_id = ?"
    )
    params: list[Any] = [conversation_id]
    if before is not None:
        query += " AND position < ?"
        params.append(before)
    query += " ORDER BY position DESC"
    if last is not None:
        query += " LIMIT ?"
        params.append(last)
    rows = db.execute(query, params).fetchall()
    return [_turn(row) for row in reversed(rows)]


def _title(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def _turn(row: Sequence[Any]) -> StoredTurn:
    (cid, run_id, position, prompt, prompt_at, text, tool_calls, status, error, gap_to, at) = row
    reply = None
    if status is not None:
        reply = TurnReply(
            text=text or "",
            tool_calls=json.loads(tool_calls) if tool_calls else [],
            status=status,
            error=error,
            gap_to=gap_to,
            at=at,
        )
    return StoredTurn(cid, run_id, position, prompt, prompt_at, reply)


def _summaries(
    db: sqlite3.Connection, tail: str, params: tuple[Any, ...]
) -> list[ConversationSummary]:
    rows = db.execute(
        "SELECT c.id, c.title, c.created_at, c.updated_at,"
        " (SELECT count(*) FROM turns t WHERE t.conversation_id = c.id)"
        f" FROM conversations c {tail}",
        params,
    ).fetchall()
    return [ConversationSummary(*row) for row in rows]


def _transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(db)`` in one transaction: committed, or rolled back if it raises."""
    db.execute("BEGIN")
    try:
        result = fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _connect(path: str) -> tuple[sqlite3.Connection, int]:
    """Open (creating or migrating) the database; return it and the next turn position."""
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open history database {path}: {exc}") from None
    try:
        db.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistoryError(f"cannot use WAL mode on {path} (got {mode})")
            db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL
            db.execute("PRAGMA busy_timeout = 5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history database {path} has schema version {version}; this version of "
                f"trio-chatruns reads up to {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):

            def migrate(db: sqlite3.Connection, target: int = target) -> None:
                for statement in _MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

            _transaction(db, migrate)
        row = db.execute("SELECT coalesce(max(position), 0) FROM turns").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise HistoryError(f"cannot use history database {path}: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db, int(row[0]) + 1


@contextlib.asynccontextmanager
async def open_conversation_store(path: str) -> AsyncIterator[ConversationStore]:
    """Open the history database at ``path`` (created if missing) for the ``async with`` block.

    Args:
        path: a file name (relative to the current directory, made absolute)
            or ``":memory:"`` for a store that keeps nothing.

    Raises:
        HistoryError: the file is not a usable database (not SQLite, a newer
            schema, a directory that does not exist, ...); the message names it.
    """
    if path != ":memory:":
        path = await trio.to_thread.run_sync(os.path.abspath, path)
    db, next_position = await trio.to_thread.run_sync(_connect, path)
    store = ConversationStore(db, path, next_position)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.close, limiter=store._limiter)
