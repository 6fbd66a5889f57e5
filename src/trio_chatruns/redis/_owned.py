"""A run owned by this worker: its local state (where a frame enters, and the
one place the run ends on this worker) and the :class:`RedisChatRun` handle
its producer holds.

``push_frame`` never waits on the network: the frame gets its seq here, is
encoded to JSON, and waits in ``pending`` until the run's writer task (see
``_writer.py``) sends it to Redis with the others of its batch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, final

import trio

from .._config import RegistryConfig
from .._exceptions import RunTerminated
from .._frame_size import checked_size, default_frame_size
from .._handle import RunHandle
from .._records import ChatRunRecord
from .._run import INTERRUPTED_FRAME_TYPE
from .._status import ChatRunStatus
from .._util import UNSET, NoPublicConstructor, Unset, check_optional_str
from ._codec import encode_frame

__all__ = ["OwnedRun", "RedisChatRun"]


class OwnedRun:
    """Everything this worker holds about a run it owns.

    Every method is synchronous with no checkpoint, so each is atomic with
    respect to other Trio tasks. Times are Unix seconds (the first from the
    Redis server when the run started; later ones from this machine's clock).
    """

    def __init__(
        self,
        conversation_id: str,
        run_id: str,
        started_at: float,
        on_change: Callable[[OwnedRun], None],
        config: RegistryConfig | None = None,
        status: ChatRunStatus = ChatRunStatus.RUNNING,
    ) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.status = status
        # The last active status, written with a batch that does not yet carry
        # the terminal status (frames pushed before the end still pending).
        self.active_status = status
        # (run handle, producer, args) while the run is queued.
        self.pending_start: tuple[Any, ...] | None = None
        # Set once the START script's answer came (the run started or was
        # queued): only then is a renewal sent after the START, so only then
        # does a RENEW that finds no run mean Redis lost it.
        self.start_answered = False
        # With a byte budget: how frames are measured, and the sizes of the
        # frames its stream keeps (trimmed as the WRITE script trims it).
        self.measure: Callable[[Any], int] | None = None
        self.max_events = 0
        self.byte_budget: int | None = None
        self.sizes: deque[int] = deque()
        self.bytes = 0
        if config is not None and config.measures_bytes:
            self.measure = config.frame_size or default_frame_size
            self.max_events = config.max_events_per_run
            self.byte_budget = config.max_bytes_per_run
        # Ended by another worker (a queued run cancelled by an ``interrupt``
        # start, or reaped): that worker did the end's duties.
        self.ended_elsewhere = False
        self.started_at = started_at
        self.updated_at = started_at
        self.terminated_at: float | None = None
        self.latest_seq = 0
        self.current_tool: str | None = None
        self.last_error: str | None = None
        # (seq, timestamp, JSON payload, bytes or -1) not yet written to
        # Redis, in seq order.
        self.pending: list[tuple[int, float, str, int]] = []
        # Fields changed since the last write (a frame, a status, a tool);
        # START wrote the initial ones.
        self.dirty = False
        self.wakeup = trio.Event()
        self.on_change = on_change
        self.cancel_scope: trio.CancelScope | None = trio.CancelScope()
        self.producer_started = False
        self.producer_running = False
        self.interrupt_requested = False
        # The run vanished from Redis (restart without persistence, flush):
        # nobody else can end it there, so its end's duties fall to us.
        self.gone = False
        # Set once the end is in Redis (or the writer gave up on it).
        self.written_end = trio.Event()

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

    def _check_writable(self) -> None:
        if self.terminated_at is not None:
            raise RunTerminated(self.conversation_id, self.run_id, self.status)

    def _changed(self) -> None:
        self.dirty = True
        self.wakeup.set()

    def push_frame(
        self,
        frame: Any,
        status: ChatRunStatus | str | None = None,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> int:
        """Give ``frame`` the next seq and queue it for the writer; return the seq.

        Every argument is checked (the frame encoded) before anything changes.
        """
        self._check_writable()
        new_status = None if status is None else self._check_status(status)
        if current_tool is not UNSET:
            check_optional_str("current_tool", current_tool)
        if error is not UNSET:
            check_optional_str("error", error)
        payload = encode_frame(frame)
        size = -1
        if self.measure is not None:
            size = checked_size(self.measure, frame)
            self._account(size)
        seq = self.latest_seq + 1
        now = time.time()
        self.pending.append((seq, now, payload, size))
        self.latest_seq = seq
        self.updated_at = now
        if current_tool is not UNSET:
            self.current_tool = current_tool
        if error is not UNSET:
            self.last_error = error
        if new_status is not None:
            self._set_status(new_status)
        self._changed()
        return seq

    def update(
        self,
        status: ChatRunStatus | str,
        current_tool: str | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> None:
        self._check_writable()
        new_status = self._check_status(status)
        check_optional_str("current_tool", current_tool)
        check_optional_str("error", error)
        self.updated_at = time.time()
        if current_tool is not UNSET:
            self.current_tool = current_tool
        if error is not UNSET:
            self.last_error = error
        self._set_status(new_status)
        self._changed()

    def _check_status(self, status: ChatRunStatus | str) -> ChatRunStatus:
        """``status`` as a member, if this run may move to it (the core's rules)."""
        return self.status.check_move(status, self.run_id, self.conversation_id)

    def _account(self, size: int) -> None:
        """Keep ``bytes`` as the WRITE script keeps the stream's: the newest
        ``max_events_per_run`` frames, then the oldest dropped while they
        total more than ``max_bytes_per_run`` (the newest frame stays)."""
        sizes = self.sizes
        sizes.append(size)
        self.bytes += size
        while len(sizes) > self.max_events:
            self.bytes -= sizes.popleft()
        budget = self.byte_budget
        if budget is not None:
            while self.bytes > budget and len(sizes) > 1:
                self.bytes -= sizes.popleft()

    def start(self) -> None:
        """The backend started this queued run (Redis made it current)."""
        self.status = self.active_status = ChatRunStatus.RUNNING
        self.updated_at = time.time()

    def end_elsewhere(self, status: ChatRunStatus, error: str | Unset | None = UNSET) -> None:
        """Another worker ended this run in Redis (and does its end's duties):
        end it here too, cancelling its producer, writing nothing more."""
        if self.terminated_at is not None:
            return
        self.ended_elsewhere = True
        self.pending.clear()
        self.mark_terminal(status, error, stop_producer=True)

    def _set_status(self, status: ChatRunStatus) -> None:
        if status.is_terminal:
            self.mark_terminal(status)
        else:
            self.status = status
            self.active_status = status

    def mark_terminal(
        self,
        status: ChatRunStatus,
        error: str | Unset | None = UNSET,
        *,
        stop_producer: bool = False,
    ) -> bool:
        """End the run on this worker, exactly once; the writer then writes
        the end to Redis after the pending frames. Later calls return ``False``.

        ``stop_producer``: the run ends from outside the producer (its lease
        was lost, its frames cannot be written), so cancel a producer still
        running. Otherwise a producer that set a terminal status itself may
        go on (say, to save a transcript) until the backend closes.
        """
        if self.terminated_at is not None:
            return False
        now = time.time()
        self.status = status
        self.terminated_at = now
        self.updated_at = now
        if error is not UNSET:
            self.last_error = error
        scope, self.cancel_scope = self.cancel_scope, None
        if scope is not None and stop_producer:
            scope.cancel()
        self._changed()
        self.on_change(self)
        return True

    def interrupt(self) -> bool:
        """Ask the producer to stop; ``False`` if the run already ended here."""
        if self.terminated_at is not None:
            return False
        self.interrupt_requested = True
        if not self.producer_started:
            self.end_cancelled()
        elif self.cancel_scope is not None:
            self.cancel_scope.cancel()
        return True

    def end_cancelled(self, error: str | Unset | None = UNSET) -> None:
        """Push the ``{"type": "interrupted"}`` frame and end ``CANCELLED``
        (measured by the default size if the application's ``frame_size``
        fails on it: the run must end)."""
        measure = self.measure
        if measure is not None and measure is not default_frame_size:
            try:
                checked_size(measure, {"type": INTERRUPTED_FRAME_TYPE})
            except Exception:
                self.measure = default_frame_size
        self.push_frame(
            {"type": INTERRUPTED_FRAME_TYPE}, status=ChatRunStatus.CANCELLED, error=error
        )


@final
class RedisChatRun(RunHandle[OwnedRun], metaclass=NoPublicConstructor):
    """Handle on a run this worker owns, returned by
    :meth:`RedisChatRuns.try_start` and passed to the producer.

    The methods of :class:`~trio_chatruns.ChatRun` (the same base,
    :class:`~trio_chatruns._handle.RunHandle`), all synchronous and atomic
    except :meth:`wait`. ``push_frame`` never waits on the network: frames
    reach Redis through the run's writer task, in order, batched; ``record``
    is the run as this worker holds it (it may be ahead of Redis by the
    frames still being written). Frames must be JSON-serialisable
    (``TypeError`` otherwise). A ``push_frame`` on a run another worker
    ended (after this worker lost its lease) raises ``RunTerminated``.
    """

    __slots__ = ()

    async def wait(self) -> ChatRunRecord:
        """Wait until the run has ended and its end is written to Redis, or
        the run ended ``failed`` because its frames could not be written;
        return the final record as this worker holds it."""
        await self._state.written_end.wait()
        return self._state.snapshot()
