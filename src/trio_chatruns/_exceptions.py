"""The exception hierarchy: every error this package raises on purpose.

``ChatRunError`` is the base of all of them, so ``except ChatRunError`` catches
anything the registry refuses. Bad arguments (a wrong type, an out-of-range
value) raise the builtin ``TypeError``/``ValueError`` instead, naming the bad
value, and leave the registry unchanged.
"""

from __future__ import annotations

__all__ = [
    "ChatRunError",
    "ReplayGap",
    "RunAlreadyActive",
    "RunNotFound",
    "RunQueueFull",
    "RunTerminated",
    "SubscriberLagged",
]


class ChatRunError(Exception):
    """Base class of every error raised by :mod:`trio_chatruns`.

    Subclasses keep their constructor arguments as attributes and pickle and
    copy with them (``_args`` names them, for ``__reduce__``).
    """

    _args: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[type[ChatRunError], tuple[object, ...]]:
        if not self._args:
            return (type(self), self.args)
        return (type(self), tuple(getattr(self, name) for name in self._args))


class RunAlreadyActive(ChatRunError):
    """:meth:`ChatRunRegistry.try_start` found an active run for the conversation.

    Attributes:
        conversation_id (str): the conversation asked for.
        run_id (str): the id of the run that is still active.
    """

    _args = ("conversation_id", "run_id")

    def __init__(self, conversation_id: str, run_id: str) -> None:
        super().__init__(f"conversation {conversation_id!r} already has an active run {run_id!r}")
        self.conversation_id = conversation_id
        self.run_id = run_id


class RunQueueFull(ChatRunError):
    """:meth:`ChatRunRegistry.try_start` with ``if_active="enqueue"`` found the
    conversation's queue full (``RegistryConfig.max_queued_per_conversation``
    runs already waiting); nothing changed.

    Attributes:
        conversation_id (str): the conversation asked for.
        max_queued (int): the limit that was reached.
    """

    _args = ("conversation_id", "max_queued")

    def __init__(self, conversation_id: str, max_queued: int) -> None:
        super().__init__(
            f"conversation {conversation_id!r} already has {max_queued} queued runs "
            f"(max_queued_per_conversation={max_queued})"
        )
        self.conversation_id = conversation_id
        self.max_queued = max_queued


class RunNotFound(ChatRunError, LookupError):
    """No run is held for the conversation (never started, or evicted), or the
    ``run_id`` asked for is not the conversation's current run.

    Also a :class:`LookupError`, like :class:`KeyError`.

    Attributes:
        conversation_id (str): the conversation asked for.
        run_id (str | None): the run asked for, if one was named.
    """

    _args = ("conversation_id", "run_id")

    def __init__(self, conversation_id: str, run_id: str | None = None) -> None:
        if run_id is None:
            message = f"no run for conversation {conversation_id!r}"
        else:
            message = f"run {run_id!r} is not the current run of conversation {conversation_id!r}"
        super().__init__(message)
        self.conversation_id = conversation_id
        self.run_id = run_id


class RunTerminated(ChatRunError):
    """A push or update reached a run that is already terminal.

    A run becomes terminal exactly once; after that its frames and status are
    final, so a late producer (or a handle kept past a restart) cannot change
    them.

    Attributes:
        conversation_id (str), run_id (str), status (ChatRunStatus): the run and
        the terminal status it ended with.
    """

    _args = ("conversation_id", "run_id", "status")

    def __init__(self, conversation_id: str, run_id: str, status: object) -> None:
        super().__init__(
            f"run {run_id!r} of conversation {conversation_id!r} is already terminal "
            f"({getattr(status, 'value', status)})"
        )
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.status = status


class ReplayGap(ChatRunError):
    """Frames after the subscriber's cursor were already trimmed from the replay
    buffer, so a gap-free resume is impossible.

    The client lost frames ``after + 1 .. available_from - 1``; it can resubscribe
    with ``after=available_from - 1`` to accept the gap explicitly.

    Attributes:
        conversation_id (str), run_id (str): the run.
        after (int): the cursor asked for.
        available_from (int): the oldest seq still buffered.
    """

    _args = ("conversation_id", "run_id", "after", "available_from")

    def __init__(self, conversation_id: str, run_id: str, after: int, available_from: int) -> None:
        super().__init__(
            f"run {run_id!r} of conversation {conversation_id!r}: frames "
            f"{after + 1}..{available_from - 1} after cursor {after} were trimmed; "
            f"the oldest buffered seq is {available_from}"
        )
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.after = after
        self.available_from = available_from


class SubscriberLagged(ChatRunError):
    """A subscriber read too slowly: its channel filled, so it was dropped rather
    than make the producer wait.

    Raised by the subscription's iterator after it has yielded every frame that
    was already queued for it. Resubscribe with ``after=resume_after`` to get
    the rest from the replay buffer (or a :class:`ReplayGap` if it was trimmed
    meanwhile).

    Attributes:
        conversation_id (str), run_id (str): the run.
        resume_after (int): the last seq the iterator yielded (the subscription's
            ``after`` if it yielded none).
    """

    _args = ("conversation_id", "run_id", "resume_after")

    def __init__(self, conversation_id: str, run_id: str, resume_after: int) -> None:
        super().__init__(
            f"subscriber of run {run_id!r} (conversation {conversation_id!r}) lagged "
            f"and was dropped; resume with after={resume_after}"
        )
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.resume_after = resume_after
