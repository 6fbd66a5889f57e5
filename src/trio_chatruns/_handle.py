"""What every run handle offers, whatever holds the run: :class:`RunHandle`,
the base of :class:`~trio_chatruns.ChatRun` (a run in this process) and of
the Redis backend's ``RedisChatRun`` (a run this worker owns), typed over
the :class:`HandledRun` protocol their states meet (an extension of the
producer supervision's ``SupervisedRun``). Each subclass adds its
own ``wait()``."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from ._producer import SupervisedRun
from ._records import ChatRunRecord
from ._status import ChatRunStatus
from ._util import UNSET, Unset

__all__ = ["HandledRun", "RunHandle"]


class HandledRun(SupervisedRun, Protocol):
    """What a handle reads and calls on its run's state (the core's
    ``RunState`` and the Redis backend's ``OwnedRun``): what the producer's
    supervision needs (:class:`~trio_chatruns._producer.SupervisedRun`),
    plus the status, the seq, a snapshot, pushing and interrupting."""

    status: ChatRunStatus
    latest_seq: int

    def snapshot(self) -> ChatRunRecord: ...

    def push_frame(
        self,
        frame: Any,
        status: ChatRunStatus | str | None = None,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> int: ...

    def interrupt(self) -> bool: ...


S = TypeVar("S", bound=HandledRun)


class RunHandle(Generic[S]):
    """Handle on one run: its ids, a snapshot, and the producer's methods.

    Every method here is synchronous with no checkpoint, and so atomic with
    respect to other Trio tasks.
    """

    __slots__ = ("_state",)

    def __init__(self, state: S) -> None:
        self._state = state

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<{type(self).__name__} {state.run_id} conversation={state.conversation_id!r} "
            f"status={state.status.value} latest_seq={state.latest_seq}>"
        )

    @property
    def conversation_id(self) -> str:
        """The conversation this run belongs to (``str``)."""
        return self._state.conversation_id

    @property
    def run_id(self) -> str:
        """This run's unique id (``str``, 32 hex digits, new for every run)."""
        return self._state.run_id

    @property
    def record(self) -> ChatRunRecord:
        """A snapshot of the run now (:class:`ChatRunRecord`)."""
        return self._state.snapshot()

    def push_frame(
        self,
        frame: Any,
        *,
        status: ChatRunStatus | str | None = None,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> int:
        """Append ``frame`` to the run and send it to every live subscriber.

        The frame gets the next seq (1, 2, ...), is kept in the replay buffer
        (the oldest frame is trimmed past ``max_events_per_run``), and is queued
        on each subscriber's channel without waiting: a subscriber whose channel
        is full is dropped with :class:`SubscriberLagged`. Then ``status``,
        ``current_tool`` and ``error`` (``UNSET`` leaves a field, ``None`` clears
        it) are applied; a terminal ``status`` ends the run after this frame.

        Args:
            frame: any object, stored and delivered as is.
            status (ChatRunStatus | str | None): new status; ``None`` keeps it.
            current_tool (str | None | UNSET), error (str | None | UNSET).

        Returns:
            int: the frame's seq.

        A ``queued`` run accepts frames and a terminal status (which ends it
        without running its producer), but no other status: it becomes
        ``running`` only when the registry starts it.

        Raises:
            RunTerminated: the run is already terminal.
            TypeError / ValueError: a bad ``status`` (``"queued"``, or an active
                status while queued), ``current_tool`` or ``error``; nothing is
                pushed.
            Whatever ``RegistryConfig.frame_size`` raises, or ``TypeError`` /
                ``ValueError`` if it returns no ``int >= 0`` (a byte budget
                set); nothing is pushed.
        """
        return self._state.push_frame(frame, status, current_tool, error)

    def update(
        self,
        status: ChatRunStatus | str,
        *,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> None:
        """Set the status (and fields) without pushing a frame.

        A terminal ``status`` ends the run. Raises as :meth:`push_frame`.
        """
        self._state.update(status, current_tool, error)

    def interrupt(self) -> bool:
        """Request cancellation of the producer; ``False`` if already terminal.

        The run ends ``CANCELLED`` once the producer has exited; frames it pushes
        while unwinding are kept, followed by a last ``{"type": "interrupted"}``
        frame. A run interrupted before its producer started (a ``queued`` run
        included) ends ``CANCELLED`` at once and never runs it.
        """
        return self._state.interrupt()
