"""Run status: the three active states and the three terminal ones."""

from __future__ import annotations

import enum

__all__ = ["ChatRunStatus"]


class ChatRunStatus(str, enum.Enum):
    """Where a run is in its lifecycle.

    A ``str`` enum, so a record holding one serialises with ``json.dumps`` as
    its plain value (``"running"``). Active: ``running``, ``waiting_approval``,
    ``waiting_hitl`` (the producer waits on a human). Terminal: ``completed``,
    ``failed``, ``cancelled``. A run moves freely among the active states and
    then, exactly once, to a terminal one.
    """

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
        """``True`` for ``running``, ``waiting_approval`` and ``waiting_hitl``."""
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


_TERMINAL = frozenset({ChatRunStatus.COMPLETED, ChatRunStatus.FAILED, ChatRunStatus.CANCELLED})
