"""A run: its shared state (the replay buffer, seq, status, live subscribers)
and the :class:`ChatRun` handle that producers and callers hold.

This is where a frame enters (:meth:`RunState.push_frame`, which also keeps
the run's byte count when a budget is set) and the one place a run becomes
terminal (:meth:`RunState.mark_terminal`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, final

import trio

from ._config import RegistryConfig
from ._counters import Counters
from ._exceptions import ReplayGap, RunTerminated
from ._fanout import Fanout, Subscriber
from ._frame_size import checked_result, checked_size, default_frame_size
from ._handle import RunHandle
from ._records import ChatRunEvent, ChatRunRecord
from ._status import ChatRunStatus
from ._subscription import ChatRunSubscription
from ._util import UNSET, NoPublicConstructor, Unset, check_optional_str

__all__ = ["INTERRUPTED_FRAME_TYPE", "ChatRun", "RunState"]

INTERRUPTED_FRAME_TYPE = "interrupted"

_NO_BUDGET = 1 << 128
"""``RunState.byte_budget`` without ``max_bytes_per_run``: more than any total."""
"""``frame["type"]`` of the last frame of a run that ends ``CANCELLED``."""


class RunState:
    """Everything a run holds, apart from the handles users keep.

    Every method is synchronous and has no checkpoint, so each one is atomic
    with respect to other Trio tasks: that is the registry's critical section.
    """

    __slots__ = (
        "buffer",
        "byte_budget",
        "bytes",
        "cancel_scope",
        "config",
        "conversation_id",
        "counters",
        "current_tool",
        "ended",
        "fanout",
        "interrupt_requested",
        "last_error",
        "latest_seq",
        "measure",
        "measure_trusted",
        "on_terminal",
        "pending_start",
        "producer_running",
        "producer_started",
        "run_id",
        "sizes",
        "started_at",
        "status",
        "terminated_at",
        "updated_at",
    )

    def __init__(
        self,
        conversation_id: str,
        run_id: str,
        config: RegistryConfig,
        counters: Counters,
        on_terminal: Callable[[RunState, trio.CancelScope | None], None],
        status: ChatRunStatus = ChatRunStatus.RUNNING,
    ) -> None:
        now = trio.current_time()
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.config = config
        self.counters = counters
        # Called once, by mark_terminal, so the registry can index the run for
        # retention and sweep; gets the producer's scope if it is still running.
        self.on_terminal = on_terminal
        self.status = status
        # (handle, producer, args) while the run is queued: what the registry
        # starts when the runs before it have ended.
        self.pending_start: tuple[Any, ...] | None = None
        self.started_at = now
        self.updated_at = now
        self.terminated_at: float | None = None
        self.latest_seq = 0
        self.current_tool: str | None = None
        self.last_error: str | None = None
        # The replay buffer: the newest max_events_per_run frames, seqs contiguous.
        # A deque while the run is active, frozen into a tuple when it ends: an
        # empty deque alone is ~760 bytes, most of a small retained run.
        self.buffer: Sequence[ChatRunEvent]
        # With a byte budget, frames are measured (``measure``), their sizes
        # kept in ``sizes`` alongside the buffer and summed in ``bytes``; with
        # none, nothing is measured and the deque's maxlen trims by count.
        self.bytes = 0
        self.buffer = deque(maxlen=config.max_events_per_run)
        # Without a per-run budget, a bound no total reaches: the push then
        # compares two ints rather than testing for None first.
        budget = config.max_bytes_per_run
        self.byte_budget = _NO_BUDGET if budget is None else budget
        if config.measures_bytes:
            self.measure: Callable[[Any], int] | None = config.frame_size or default_frame_size
            self.sizes: deque[int] | None = deque(maxlen=config.max_events_per_run)
        else:
            self.measure = None
            self.sizes = None
        self.fanout = Fanout(counters)
        # Entered by the producer task; None once the run is terminal, so a
        # finished run holds no reference to its task's scope.
        self.cancel_scope: trio.CancelScope | None = trio.CancelScope()
        self.producer_started = False
        self.producer_running = False
        self.interrupt_requested = False
        # Made by the first ChatRun.wait() on an active run: most runs are never
        # waited on, and a retained run need not carry one.
        self.ended: trio.Event | None = None

    # -- reads ---------------------------------------------------------------

    def snapshot(self) -> ChatRunRecord:
        return ChatRunRecord(
            conversation_id=self.conversation_id,
            run_id=self.run_id,
            status=self.status,
            started_at=self.started_at,
            updated_at=self.updated_at,
            terminated_at=self.terminated_at,
            latest_seq=self.latest_seq,
            current_tool=self.current_tool,
            last_error=self.last_error,
        )

    def events_after(self, after: int) -> list[ChatRunEvent]:
        """Buffered events with ``seq > after``, oldest first."""
        buffer = self.buffer
        if not buffer or after >= self.latest_seq:
            return []
        skip = after + 1 - buffer[0].seq
        return list(buffer) if skip <= 0 else list(islice(buffer, skip, None))

    # -- mutations -----------------------------------------------------------

    def _check_writable(self) -> None:
        if self.terminated_at is not None:
            raise RunTerminated(self.conversation_id, self.run_id, self.status)

    def _check_status(self, status: ChatRunStatus | str) -> ChatRunStatus:
        """``status`` as a member, if this run may move to it."""
        return self.status.check_move(status, self.run_id, self.conversation_id)

    def push_frame(
        self,
        frame: Any,
        status: ChatRunStatus | str | None = None,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
        size: int | None = None,
    ) -> int:
        """Append a frame, fan it out, apply the field changes; return its seq.

        Every argument is checked before anything changes. ``size``: the
        frame's size if the caller measured it already.
        """
        self._check_writable()
        # The streaming case passes no status/tool/error: skip their checks.
        new_status = None if status is None else self._check_status(status)
        if current_tool is not UNSET:
            check_optional_str("current_tool", current_tool)
        if error is not UNSET:
            check_optional_str("error", error)
        measure = self.measure
        # Measured before anything changes: a frame_size that raises refuses the push.
        if measure is not None and size is None:
            size = measure(frame)
            if size.__class__ is not int or size < 0:  # only an application's measure
                size = checked_result(size)

        seq = self.latest_seq + 1
        event = ChatRunEvent(self.conversation_id, self.run_id, seq, time.time(), frame)
        self.buffer.append(event)  # type: ignore[attr-defined]  # a deque while active
        if measure is not None:
            # The byte accounting, inline (this is the hot path of a budgeted
            # run): ``sizes`` has the buffer's maxlen, so when the append above
            # trimmed the oldest event by count, this append drops its size.
            sizes: deque[int] = self.sizes  # type: ignore[assignment]  # measuring
            measured: int = size  # type: ignore[assignment]  # measured above
            delta = measured - sizes[0] if len(sizes) == sizes.maxlen else measured
            sizes.append(measured)
            self.counters.buffered_bytes += delta
            total = self.bytes + delta
            self.bytes = self._trim_bytes(total) if total > self.byte_budget else total
        self.latest_seq = seq
        self.updated_at = trio.current_time()
        if current_tool is not UNSET:
            self.current_tool = current_tool
        if error is not UNSET:
            self.last_error = error
        self.counters.frames_pushed += 1
        self.fanout.publish(event)
        if new_status is not None:
            self._set_status(new_status)
        return seq

    def update(
        self,
        status: ChatRunStatus | str,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> None:
        """Change the status and fields without a frame."""
        self._check_writable()
        new_status = self._check_status(status)
        check_optional_str("current_tool", current_tool)
        check_optional_str("error", error)

        self.updated_at = trio.current_time()
        if current_tool is not UNSET:
            self.current_tool = current_tool
        if error is not UNSET:
            self.last_error = error
        self._set_status(new_status)

    def _trim_bytes(self, total: int) -> int:
        """Drop the oldest frames while the buffer holds more than
        ``max_bytes_per_run`` (``total`` bytes now; the newest frame is always
        kept); return the bytes left."""
        budget = self.byte_budget
        buffer: deque[ChatRunEvent] = self.buffer  # type: ignore[assignment]  # active
        sizes: deque[int] = self.sizes  # type: ignore[assignment]  # measuring
        dropped = 0
        while total > budget and len(buffer) > 1:
            buffer.popleft()
            size = sizes.popleft()
            total -= size
            dropped += size
        self.counters.buffered_bytes -= dropped
        return total

    def _set_status(self, status: ChatRunStatus) -> None:
        if status.is_terminal:
            self.mark_terminal(status)
        else:
            self.status = status

    def mark_terminal(self, status: ChatRunStatus) -> bool:
        """End the run with ``status``: the single place a run becomes terminal.

        Stamps ``terminated_at`` (and ``updated_at``) with ``trio.current_time()``,
        closes every subscriber's send channel (each reader drains what is queued,
        then its iterator ends), drops the cancel scope, wakes :meth:`ChatRun.wait`,
        and hands the run to the registry for retention and a sweep. Exactly
        once: every later call, from whichever path, returns ``False`` and
        changes nothing.

        A producer still running after this (it set the terminal status itself
        and goes on, say to save a transcript) may run as long as the run is
        retained: its scope gets the deadline ``terminated_at +
        terminal_retention``, and the registry cancels it if the run is evicted
        earlier.
        """
        if self.terminated_at is not None:
            return False
        now = trio.current_time()
        self.status = status
        self.terminated_at = now
        self.updated_at = now
        scope, self.cancel_scope = self.cancel_scope, None
        finishing = scope if self.producer_running else None
        if finishing is not None:
            finishing.deadline = now + self.config.terminal_retention
        self.buffer = tuple(self.buffer)
        self.sizes = None  # the total in ``bytes`` is all eviction needs now
        self.pending_start = None
        self.fanout.close()
        if self.ended is not None:
            self.ended.set()
        self.on_terminal(self, finishing)
        return True

    def interrupt(self) -> bool:
        """Ask the producer to stop; ``False`` if the run is already terminal.

        If the producer has not started yet (the run is queued, or was started
        in this scheduling round) it never will: the run ends ``CANCELLED``
        here and now. Otherwise its cancel scope is cancelled and
        the run ends ``CANCELLED`` when the producer exits
        (see ``run_producer`` in ``_producer.py``).
        """
        if self.terminated_at is not None:
            return False
        self.interrupt_requested = True
        if not self.producer_started:
            self.end_cancelled()
        elif self.cancel_scope is not None:
            self.cancel_scope.cancel()
        return True

    def end_cancelled(self, error: str | Unset | None = UNSET) -> None:
        """Push the ``{"type": "interrupted"}`` frame and end ``CANCELLED``."""
        frame = {"type": INTERRUPTED_FRAME_TYPE}
        size = None
        if self.measure is not None:
            # The run must end even if the application's frame_size fails on
            # this frame of ours.
            try:
                size = checked_size(self.measure, frame)
            except Exception:
                size = default_frame_size(frame)
        self.push_frame(frame, status=ChatRunStatus.CANCELLED, error=error, size=size)

    def subscribe(self, after: int) -> ChatRunSubscription:
        """Open a subscription replaying ``seq > after`` then following live.

        Taking the replay snapshot and registering the live channel happen in
        this one synchronous call, so no frame can fall between them.

        Raises:
            ValueError: ``after`` is past ``latest_seq``.
            ReplayGap: frames after ``after`` were already trimmed.
        """
        if after > self.latest_seq:
            raise ValueError(
                f"after={after} is past latest_seq={self.latest_seq} of run {self.run_id!r} "
                f"(conversation {self.conversation_id!r}); is the cursor from another run?"
            )
        buffer = self.buffer
        available_from = buffer[0].seq if buffer else self.latest_seq + 1
        if after + 1 < available_from:
            raise ReplayGap(self.conversation_id, self.run_id, after, available_from)
        replay = self.events_after(after)
        if self.terminated_at is not None:
            return ChatRunSubscription._create(self, after, replay, None, None)
        send, receive = trio.open_memory_channel[ChatRunEvent](self.config.subscriber_buffer)
        subscriber = Subscriber(send)
        self.fanout.add(subscriber)
        return ChatRunSubscription._create(self, after, replay, subscriber, receive)


@final
class ChatRun(RunHandle[RunState], metaclass=NoPublicConstructor):
    """Handle on one run, returned by :meth:`ChatRunRegistry.try_start` and
    passed to the producer.

    Not built directly. A handle always refers to its own run: after the
    conversation is restarted, the old handle still reads the old run and its
    pushes raise :class:`RunTerminated`.

    Every method except :meth:`wait` is synchronous with no checkpoint, and so
    atomic with respect to other Trio tasks. ``conversation_id``, ``run_id``,
    ``record``, ``push_frame``, ``update`` and ``interrupt`` are those of
    :class:`~trio_chatruns._handle.RunHandle`, which the Redis backend's
    handle shares.
    """

    __slots__ = ()

    async def wait(self) -> ChatRunRecord:
        """Wait until the run is terminal; return its final record.

        Returns as soon as the run is terminal, even if the producer task is
        still finishing. Always checkpoints (a ``trio.Event``, made on demand, or
        a bare checkpoint if the run has already ended).
        """
        state = self._state
        if state.terminated_at is None:
            if state.ended is None:
                state.ended = trio.Event()
            await state.ended.wait()
        else:
            await trio.lowlevel.checkpoint()
        return state.snapshot()
