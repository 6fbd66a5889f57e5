"""Conversations: turns written to the history store, and read back for the model.

:class:`ConversationHistory` sits between the HTTP layer, the run backend
and a :class:`~.turn_store.TurnStore` (the SQLite
:class:`~trio_chatruns.server.history.ConversationStore`, or with
``--redis`` the :class:`~.redis_history.RedisConversationStore` every
worker shares):

- when ``POST /v1/chat/runs/{id}`` accepts a run, the user's prompt is
  stored as a new turn (:meth:`ConversationHistory.accept`, then
  :meth:`~ConversationHistory.store_prompt` before the ``202``);
- when the run starts, its producer first reads the conversation's earlier
  turns (waiting until the turns before it are saved) and hands them to the
  model as :attr:`ChatRequest.history`;
- when the run ends, the registry's run-end hook
  (:meth:`ConversationHistory.on_run_end`) saves the reply: the text, the
  tool calls, the final status, and why it did not complete. The registry
  waits for these hooks when it closes, so a reply cut by a shutdown is
  saved (status ``cancelled``) before the server exits.

It also turns stored turns into the JSON of the conversation routes
(:mod:`trio_chatruns.server.conversation_routes`).

With a shared store (Redis), the run before a turn may have ended on
another worker, whose hook saves its reply a moment later: a new run waits
up to :data:`REPLY_WAIT` seconds for the reply of the newest earlier turn
before it reads the history, and a run reaped there (its owner died) is
saved by the worker that reaped it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .. import ChatRunStatus
from .history import StoredTurn, TurnReply, iso_utc, open_conversation_store
from .producers import ChatMessage, ChatRequest, make_producer

if TYPE_CHECKING:
    from .. import ChatRunEvent, ChatRunRecord
    from .backend import RunBackend, StartedRun
    from .failures import FailureReporter
    from .producers import ChatModel
    from .turn_store import TurnStore

__all__ = [
    "REPLY_WAIT",
    "SHUTDOWN_ERROR",
    "ConversationHistory",
    "open_conversation_history",
    "reply_from_events",
]

logger = logging.getLogger("trio_chatruns.server")

SHUTDOWN_ERROR = "interrupted by a server shutdown"
"""The ``error`` saved with a reply that a server shutdown cut."""

LOST_ERROR = "the server stopped before this reply was saved"
"""The ``error`` of a reply that was never saved (status ``lost``)."""


def lost_reply(at: float) -> TurnReply:
    """The reply stored for a turn whose reply was never saved (status ``lost``)."""
    return TurnReply(text="", tool_calls=[], status="lost", error=LOST_ERROR, gap_to=None, at=at)


REPLY_WAIT = 5.0
"""Seconds a new turn waits, with a shared store, for the reply of the turn
before it (saved by the run-end hook of the worker that ran it) before it
reads the history without it."""


def reply_from_events(
    record: ChatRunRecord, events: Sequence[ChatRunEvent], *, shutting_down: bool = False
) -> TurnReply:
    """The reply a run produced, from its final record and the events still buffered.

    The text is the concatenation of the ``token`` frames; tool calls are the
    ``tool_call`` frames, each with the ``content`` of the ``tool_result``
    frame that answered it as ``result``. ``error`` is the run's
    ``last_error``, or :data:`SHUTDOWN_ERROR` for a run cancelled while the
    server shuts down. If the buffer no longer starts at seq 1, ``gap_to``
    says which frames are missing.
    """
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    by_id: dict[Any, dict[str, Any]] = {}
    for event in events:
        frame = event.frame
        if not isinstance(frame, dict):
            continue
        kind = frame.get("type")
        if kind == "token" and isinstance(frame.get("text"), str):
            text.append(frame["text"])
        elif kind == "tool_call":
            call = {
                "id": frame.get("id"),
                "name": frame.get("name"),
                "arguments": frame.get("arguments"),
            }
            calls.append(call)
            by_id[call["id"]] = call
        elif kind == "tool_result" and frame.get("id") in by_id:
            by_id[frame["id"]]["result"] = frame.get("content")
    error = record.last_error
    status = record.status.value
    if status == "cancelled" and error is None and shutting_down:
        error = SHUTDOWN_ERROR
    gap_to = events[0].seq - 1 if events and events[0].seq > 1 else None
    if not events and record.latest_seq:
        gap_to = record.latest_seq
    return TurnReply(
        text="".join(text),
        tool_calls=calls,
        status=status,
        error=error,
        gap_to=gap_to,
        at=time.time(),
    )


@attrs.define(eq=False)
class _PendingTurn:
    """A turn whose run has not been saved yet (accepted, queued, running or ending)."""

    conversation_id: str
    run_id: str
    position: int
    prompt: str
    at: float
    run: StartedRun
    stored: trio.Event = attrs.field(factory=trio.Event)
    """Set once the prompt is in the store (or storing it failed)."""
    saved: trio.Event = attrs.field(factory=trio.Event)
    """Set once the reply is in the store (or saving it failed, or was skipped)."""
    deleted: bool = False


@attrs.define(eq=False)
class ConversationHistory:
    """The server's conversation history over a :class:`ConversationStore`.

    Attributes:
        store (TurnStore): where turns are kept.
        history_messages (int): the most earlier messages (user and assistant)
            handed to the model with a prompt; the oldest are dropped first.
        shutting_down (Callable[[], bool]): tells whether the server is
            shutting down, so a reply cut by it is saved as such.
    """

    store: TurnStore
    history_messages: int = 20
    shutting_down: Callable[[], bool] = lambda: False
    _pending: dict[str, _PendingTurn] = attrs.field(factory=dict, init=False)

    # -- accepting a turn --------------------------------------------------

    def reserve_position(self) -> int:
        """The position of the next turn; synchronous (call it right before ``try_start``)."""
        return self.store.next_position()

    def producer(
        self,
        model: ChatModel,
        conversation_id: str,
        prompt: str,
        position: int,
        prepared: ChatRequest | None = None,
        *,
        reporter: FailureReporter | None = None,
    ) -> Any:
        """The producer for ``registry.try_start``: reads the history, then runs ``model``.

        ``prepared`` is the request :meth:`prepare` read just before, if no
        turn of the conversation has been pending since (checked with no
        checkpoint before ``try_start``: the run then starts at once); else
        the history is read when the run starts, after the turns before it
        are saved. Errors reading the history end the run ``failed`` like a
        model error.
        """

        async def with_history(run: Any, request: ChatRequest) -> None:
            if prepared is not None:
                request = prepared
            else:
                turn_position = position
                pending = self._pending.get(run.run_id)
                if self.store.shared and pending is not None:
                    # A shared store numbers the turn when it stores it.
                    await pending.stored.wait()
                    turn_position = pending.position
                request = await self._complete_request(request, turn_position)
            await model(run, request)

        name = getattr(model, "__qualname__", None) or type(model).__name__
        with_history.__qualname__ = name
        return make_producer(with_history, ChatRequest(conversation_id, prompt), reporter)

    def has_pending(self, conversation_id: str) -> bool:
        """Whether a turn of the conversation is accepted and not saved yet; synchronous."""
        return any(p.conversation_id == conversation_id for p in self._pending.values())

    async def prepare(self, conversation_id: str, prompt: str) -> ChatRequest | None:
        """Read the history for a prompt of a conversation with no pending turn.

        Done before the run starts, so a model that starts at once does not
        wait for the disk; valid only while :meth:`has_pending` stays false.
        ``None`` with a shared store: another worker may have a turn pending,
        so the history is read when the run starts.
        """
        if self.store.shared:
            return None
        request = ChatRequest(conversation_id, prompt)
        return await self._complete_request(request, self.store.peek_position())

    def accept(self, run: StartedRun, prompt: str, position: int) -> _PendingTurn:
        """Remember a run just started (or queued) for ``prompt``; synchronous."""
        pending = _PendingTurn(run.conversation_id, run.run_id, position, prompt, time.time(), run)
        self._pending[run.run_id] = pending
        return pending

    async def store_prompt(self, pending: _PendingTurn) -> None:
        """Write the user's side of ``pending``; shielded, so a client leaving cannot skip it.

        Raises:
            sqlite3.Error: the store failed (the run goes on; its reply will
                not be saved).
        """
        try:
            with trio.CancelScope(shield=True):
                if not pending.deleted:
                    pending.position = await self.store.add_turn(
                        pending.conversation_id,
                        pending.run_id,
                        pending.position,
                        pending.prompt,
                        pending.at,
                    )
        finally:
            pending.stored.set()

    async def _complete_request(self, request: ChatRequest, position: int) -> ChatRequest:
        """``request`` with the earlier turns of its conversation and its turn number."""
        for pending in list(self._pending.values()):
            if pending.conversation_id != request.conversation_id:
                continue
            # A shared store numbers a turn when it stores it: one not stored
            # yet was accepted after this one (and is not waited for).
            numbered = not self.store.shared or pending.stored.is_set()
            if numbered and pending.position < position:
                await pending.saved.wait()
        # Each turn gives at most two messages: read enough turns, keep the newest.
        earlier, turns = await self.store.context(
            request.conversation_id, before=position, last=self.history_messages
        )
        if self.store.shared and turns and turns[-1].reply is None:
            earlier, turns = await self._wait_reply(request.conversation_id, position, turns)
        messages: list[ChatMessage] = []
        if self.history_messages:
            for stored in turns:
                messages.append(ChatMessage("user", stored.prompt))
                if stored.reply is not None and stored.reply.text:
                    messages.append(ChatMessage("assistant", stored.reply.text))
            messages = messages[-self.history_messages :]
        return attrs.evolve(request, history=tuple(messages), turn=earlier + 1)

    async def _wait_reply(
        self, conversation_id: str, position: int, turns: list[StoredTurn]
    ) -> tuple[int, list[StoredTurn]]:
        """Re-read the context until the newest earlier turn has its reply.

        Its run ended (this turn's run could start), but the worker that ran
        it may still be saving the reply. Gives up after :data:`REPLY_WAIT`
        seconds: that reply was never saved (its worker was killed, or Redis
        was down when it ended), and it is stored as ``lost`` so that later
        turns do not wait for it again (a real reply saved later replaces it).
        """
        earlier = len(turns)
        delay = 0.01
        with trio.move_on_after(REPLY_WAIT):
            while turns and turns[-1].reply is None:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.2)
                earlier, turns = await self.store.context(
                    conversation_id, before=position, last=self.history_messages
                )
        if turns and turns[-1].reply is None:
            missing = turns[-1]
            logger.warning(
                "reply of run %s (conversation %r) not saved within %.0f s; stored as lost",
                missing.run_id,
                conversation_id,
                REPLY_WAIT,
            )
            await self.store.save_reply(
                missing.run_id, lost_reply(time.time()), conversation_id=conversation_id
            )
        return earlier, turns

    # -- the run-end hook --------------------------------------------------

    async def on_run_end(self, record: ChatRunRecord, events: Sequence[ChatRunEvent]) -> None:
        """The registry's ``on_run_end`` hook: save the reply of the run that ended.

        Runs that were not started through :meth:`accept` are ignored, except
        with a shared store: there a run reaped by this worker (its owner died)
        is saved here if its turn is stored. A failure to save is logged with
        the run id and re-raised (the registry counts it).
        """
        pending = self._pending.get(record.run_id)
        if pending is None:
            if self.store.shared:
                reply = reply_from_events(record, events, shutting_down=False)
                await self.store.save_reply(
                    record.run_id, reply, conversation_id=record.conversation_id
                )
            return
        try:
            if pending.deleted:
                return
            await pending.stored.wait()
            reply = reply_from_events(record, events, shutting_down=self.shutting_down())
            if not await self.store.save_reply(
                record.run_id, reply, conversation_id=record.conversation_id
            ):
                logger.warning(
                    "reply of run %s (conversation %r) not saved: its turn is not in the history",
                    record.run_id,
                    record.conversation_id,
                )
        finally:
            pending.saved.set()
            self._pending.pop(record.run_id, None)

    async def wait_saved(self, run_id: str) -> None:
        """Return once the reply of ``run_id`` is saved (or skipped: deleted, not stored).

        Returns at once for a run that is not waiting to be saved (already
        saved, or never started here).
        """
        pending = self._pending.get(run_id)
        if pending is not None:
            await pending.saved.wait()

    def cancel_queued(self) -> list[tuple[str, str]]:
        """Cancel every queued run (they end ``cancelled`` without running); synchronous.

        For a shutdown: their streams then end at once instead of waiting for
        the registry to close. Returns the ``(conversation_id, run_id)`` of each.
        """
        cancelled: list[tuple[str, str]] = []
        for pending in list(self._pending.values()):
            if pending.run.record.status is ChatRunStatus.QUEUED and pending.run.interrupt():
                cancelled.append((pending.conversation_id, pending.run_id))
        return cancelled

    # -- deleting ------------------------------------------------------------

    async def forget(self, conversation_id: str, backend: RunBackend) -> int:
        """Stop saving the conversation's turns and interrupt its runs.

        Every run of the conversation that has not been saved yet (queued,
        running, ending) is interrupted and will not be saved. Returns how
        many runs were interrupted.
        """
        interrupted = 0
        for pending in self._pending.values():
            if pending.conversation_id == conversation_id:
                pending.deleted = True
                interrupted += pending.run.interrupt()
        interrupted += await backend.interrupt(conversation_id)
        return interrupted

    # -- reading -------------------------------------------------------------

    async def live_status(self, backend: RunBackend, conversation_id: str, run_id: str) -> str:
        """The status of the run of a turn with no saved reply.

        A status of the registry (``queued``, ``running``, ...) while the run
        is known; ``"lost"`` when neither the registry nor the history knows
        it any more: the server stopped without saving the reply (killed, not
        shut down).
        """
        record = await backend.get(conversation_id)
        if record is not None and record.run_id == run_id:
            return record.status.value
        for queued in await backend.queued(conversation_id):
            if queued.run_id == run_id:
                return queued.status.value
        if run_id in self._pending:
            return "running"  # ended a moment ago; the reply is being saved
        return "lost"

    async def messages_json(
        self, backend: RunBackend, turns: Sequence[StoredTurn]
    ) -> list[dict[str, Any]]:
        """The ``messages`` of ``GET /v1/conversations/{id}/messages``, oldest first."""
        out: list[dict[str, Any]] = []
        for turn in turns:
            out.append(
                {
                    "role": "user",
                    "content": turn.prompt,
                    "run_id": turn.run_id,
                    "status": "sent",
                    "created_at": iso_utc(turn.prompt_at),
                }
            )
            reply = turn.reply
            if reply is None:
                record = await backend.get(turn.conversation_id)
                if (
                    record is not None
                    and record.run_id == turn.run_id
                    and record.status.is_terminal
                ):
                    # Ended, its hook not done yet: answer what it is about to save.
                    reply = reply_from_events(
                        record,
                        await backend.events(turn.conversation_id),
                        shutting_down=self.shutting_down(),
                    )
            if reply is None:
                status = await self.live_status(backend, turn.conversation_id, turn.run_id)
                out.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "run_id": turn.run_id,
                        "status": status,
                        "created_at": iso_utc(turn.prompt_at),
                        "tool_calls": [],
                        "error": LOST_ERROR if status == "lost" else None,
                        "gap": None,
                    }
                )
                continue
            out.append(
                {
                    "role": "assistant",
                    "content": reply.text,
                    "run_id": turn.run_id,
                    "status": reply.status,
                    "created_at": iso_utc(reply.at),
                    "tool_calls": reply.tool_calls,
                    "error": reply.error,
                    "gap": None if reply.gap_to is None else {"from": 1, "to": reply.gap_to},
                }
            )
        return out


@contextlib.asynccontextmanager
async def open_conversation_history(
    db: str, history_messages: int = 20
) -> AsyncIterator[ConversationHistory]:
    """Open the store at ``db`` and yield a :class:`ConversationHistory` over it.

    Open the registry inside this block with ``on_run_end=history.on_run_end``
    so the registry (and its hooks) finish before the store closes.

    Raises:
        HistoryError: the database cannot be used.
    """
    async with open_conversation_store(db) as store:
        yield ConversationHistory(store, history_messages)
