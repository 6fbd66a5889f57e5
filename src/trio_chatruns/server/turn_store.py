"""What the conversation history needs of a store: :class:`TurnStore`.

Two stores implement it: the SQLite :class:`~.history.ConversationStore`
(one process, the default) and :class:`~.redis_history.RedisConversationStore`
(``serve --redis``: every worker reads and writes the same conversations).
:class:`~.conversations.ConversationHistory` is written against this
protocol only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .history import ConversationSummary, StoredTurn, TurnReply

__all__ = ["TurnStore"]


class TurnStore(Protocol):
    """Where turns are kept. Every ``async`` method may raise the store's error
    (``sqlite3.Error``; ``BackendUnavailable`` when Redis cannot be reached)."""

    @property
    def path(self) -> str:
        """Where the store is, for a log line (a file, ``":memory:"``, a Redis URL)."""
        ...

    @property
    def persistent(self) -> bool:
        """Whether turns outlive the process."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other processes write turns too (so waiting for a reply
        saved elsewhere cannot use an in-process event)."""
        ...

    def peek_position(self) -> int:
        """The position :meth:`next_position` will give next (reserving nothing)."""
        ...

    def next_position(self) -> int:
        """Reserve the position of a new turn; synchronous. A shared store
        assigns positions in :meth:`add_turn` instead (this is then a placeholder)."""
        ...

    async def add_turn(
        self, conversation_id: str, run_id: str, position: int, prompt: str, at: float
    ) -> int:
        """Store the user's side of a turn; return its position (idempotent per ``run_id``)."""
        ...

    async def save_reply(self, run_id: str, reply: TurnReply, *, conversation_id: str) -> bool:
        """Store the reply of the turn of ``run_id``; ``False`` if that turn is not stored."""
        ...

    async def turns(
        self, conversation_id: str, *, before: int | None = None, last: int | None = None
    ) -> list[StoredTurn]:
        """The turns of a conversation, oldest first."""
        ...

    async def context(
        self, conversation_id: str, *, before: int, last: int
    ) -> tuple[int, list[StoredTurn]]:
        """How many turns come before ``before``, and the newest ``last`` of them."""
        ...

    async def conversations(self, *, limit: int = 100) -> list[ConversationSummary]:
        """The conversations, most recently updated first."""
        ...

    async def delete(self, conversation_id: str) -> bool:
        """Delete a conversation and its turns; ``False`` if it had none."""
        ...
