"""Run status (``queued``, three active states, three terminal ones) and the
start policies that decide what a start does when its conversation is busy."""

from __future__ import annotations

import enum

__all__ = ["ChatRunStatus", "StartPolicy"]


class ChatRunStatus(str, enum.Enum):
    """Where a run is in its lifecycle.

    A ``str`` enum, so a record holding one serialises with ``json.dumps`` as
    its plain value (``"running"``). Active: ``queued`` (waiting behind the
    conversation's running run; its producer has not started), ``running``,
    ``waiting_approval``, ``waiting_hitl`` (the producer waits on a human).
    Terminal: ``completed``, ``failed``, ``cancelled``. A run starts
    ``queued`` or ``running``, leaves ``queued`` only when the registry starts
    it (or ends it), moves freely among the other active states, and then,
    exactly once, to a terminal one.
    """

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_HITL = "waiting_hitl"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_active(self) -> bool:
        """``True`` for ``queued``, ``running``, ``waiting_approval`` and ``waiting_hitl``."""
        return self not in _TERMINAL

    @property
    def is_terminal(self) -> bool:
        """``True`` for ``completed``, ``failed`` and ``cancelled``."""
        return self in _TERMINAL

    @classmethod
    def coerce(cls, value: object) -> ChatRunStatus:
        """Return ``value`` as a status; accepts a member or its string value.

        Raises:
            TypeError: ``value`` is neither a ``ChatRunStatus`` nor a ``str``.
            ValueError: ``value`` is a string that names no status.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise TypeError(f"status must be a ChatRunStatus or str, not {value!r}")
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(s.value) for s in cls)
            raise ValueError(f"unknown status {value!r}; expected one of {names}") from None

    def check_move(self, status: object, run_id: str, conversation_id: str) -> ChatRunStatus:
        """``status`` as a member, if a producer may move a run in this status
        to it: ``queued`` is set by the registry only, and a queued run takes
        a terminal status only (it becomes ``running`` when it is started).

        Raises:
            TypeError / ValueError: as :meth:`coerce`; ``ValueError`` for a
                move those rules refuse (naming the run).
        """
        new_status = ChatRunStatus.coerce(status)
        if new_status is ChatRunStatus.QUEUED:
            raise ValueError(
                f"status 'queued' is set by the registry only (run {run_id!r}, "
                f"conversation {conversation_id!r})"
            )
        if self is ChatRunStatus.QUEUED and not new_status.is_terminal:
            raise ValueError(
                f"run {run_id!r} (conversation {conversation_id!r}) is queued; "
                f"it becomes running when the registry starts it, not {new_status.value!r}"
            )
        return new_status


_TERMINAL = frozenset({ChatRunStatus.COMPLETED, ChatRunStatus.FAILED, ChatRunStatus.CANCELLED})


class StartPolicy(str, enum.Enum):
    """What :meth:`~trio_chatruns.ChatRunRegistry.try_start` does when the
    conversation already has an active run (with none, every policy starts
    the run at once).

    A ``str`` enum: ``try_start(..., if_active="enqueue")`` works as well.

    - ``reject``: raise :class:`~trio_chatruns.RunAlreadyActive`; nothing changes.
    - ``interrupt``: interrupt the active run, cancel the conversation's queued
      runs, and queue the new run to start as soon as the interrupted run is
      terminal ("stop and answer this instead").
    - ``enqueue``: queue the new run behind the active run and the runs already
      queued, first in, first out ("answer this next").
    """

    REJECT = "reject"
    INTERRUPT = "interrupt"
    ENQUEUE = "enqueue"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: object) -> StartPolicy:
        """Return ``value`` as a policy; accepts a member or its string value.

        Raises:
            ValueError: ``value`` is neither a ``StartPolicy`` nor the value of one.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(repr(p.value) for p in cls)
        raise ValueError(f"unknown start policy if_active={value!r}; expected one of {names}")
