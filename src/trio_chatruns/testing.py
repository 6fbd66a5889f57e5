"""Helpers for testing code built on :mod:`trio_chatruns` against the real
registry, under ``trio.testing.MockClock``; also a pytest plugin.

Installing the package registers this module as a pytest plugin (entry point
``pytest11``), so its fixtures are there in every test session, with no
``conftest.py`` import. They are async fixtures for pytest-trio
(``trio_mode = true``, or tests marked ``@pytest.mark.trio``):

- ``chat_run_config`` -> :class:`~trio_chatruns.RegistryConfig`: the config the
  registry fixture opens with; override it in a ``conftest.py`` or a test
  module to change the limits.
- ``chat_run_ends`` -> :class:`RunEndRecorder`: the ``on_run_end`` hook of the
  registry fixture, recording every run that ended.
- ``chat_run_registry`` -> :class:`~trio_chatruns.ChatRunRegistry`: a registry
  opened for the test and closed after it (every hook call returns first).

Helpers usable with or without pytest:

- :func:`collect_events`: subscribe and read until the run ends.
- :func:`open_event_collector`: subscribe now, read in the background, and
  wait for a number of events or the end.
- :func:`scripted_producer`: a producer that plays a script of frames,
  sleeps (on the Trio clock, so ``MockClock`` skips them), waits and errors.

See ``docs/testing-helpers.md`` for an example test.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ._config import RegistryConfig
from ._exceptions import SubscriberLagged
from ._records import ChatRunEvent, ChatRunRecord
from ._registry import ChatRunRegistry, open_chat_run_registry
from ._run import ChatRun
from ._status import ChatRunStatus
from ._util import UNSET, Unset

__all__ = [
    "EventCollector",
    "Push",
    "Raise",
    "RunEndRecorder",
    "Sleep",
    "WaitFor",
    "collect_events",
    "open_event_collector",
    "scripted_producer",
]


# -- collecting events -----------------------------------------------------------


async def collect_events(
    registry: ChatRunRegistry,
    conversation_id: str,
    *,
    after: int = 0,
    run_id: str | None = None,
) -> list[ChatRunEvent]:
    """Subscribe as :meth:`~trio_chatruns.ChatRunRegistry.subscribe` does and
    return every event until the run ends (the terminal frame included).

    Waits for the run to end: call it from a task that can wait, or after the
    run is terminal. Raises what ``subscribe`` raises (``RunNotFound``,
    ``ReplayGap``, ``ValueError``) and ``SubscriberLagged`` if the reader fell
    behind.
    """
    async with registry.subscribe(conversation_id, after=after, run_id=run_id) as subscription:
        return [event async for event in subscription]


class EventCollector:
    """Events read so far by :func:`open_event_collector`'s background reader.

    Attributes:
        events (list[ChatRunEvent]): every event read, in seq order.
        done (bool): the subscription ended (the run ended, or it lagged).
        error (SubscriberLagged | None): set if the reader was dropped for lag.
    """

    def __init__(self) -> None:
        self.events: list[ChatRunEvent] = []
        self.done = False
        self.error: SubscriberLagged | None = None
        self._changed = trio.Event()

    @property
    def frames(self) -> list[Any]:
        """The frames of :attr:`events`, as pushed."""
        return [event.frame for event in self.events]

    @property
    def seqs(self) -> list[int]:
        """The seqs of :attr:`events`."""
        return [event.seq for event in self.events]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[ChatRunEvent]:
        """Wait until at least ``count`` events were read or the subscription
        ended; return :attr:`events`. Checkpoints at least once."""
        await trio.lowlevel.checkpoint()
        while len(self.events) < count and not self.done:
            await self._changed.wait()
        return self.events

    async def wait_done(self) -> list[ChatRunEvent]:
        """Wait until the subscription ended; return :attr:`events`."""
        return await self.wait_for(math.inf)  # type: ignore[arg-type]

    async def _read(self, subscription: AsyncIterator[ChatRunEvent]) -> None:
        try:
            async for event in subscription:
                self.events.append(event)
                self._notify()
        except SubscriberLagged as exc:
            self.error = exc
        self.done = True
        self._notify()


@asynccontextmanager
async def open_event_collector(
    registry: ChatRunRegistry,
    conversation_id: str,
    *,
    after: int = 0,
    run_id: str | None = None,
) -> AsyncIterator[EventCollector]:
    """Subscribe on entry (so no frame pushed afterwards is missed), read in a
    background task, and yield the :class:`EventCollector` it fills.

    Leaving the block stops the reader and closes the subscription. Entering
    raises what ``registry.subscribe`` raises.
    """
    collector = EventCollector()
    async with (
        registry.subscribe(conversation_id, after=after, run_id=run_id) as subscription,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(collector._read, subscription)
        try:
            yield collector
        finally:
            nursery.cancel_scope.cancel()


# -- recording run ends ------------------------------------------------------------


class RunEndRecorder:
    """An ``on_run_end`` hook that records each call: pass it to
    ``open_chat_run_registry(on_run_end=recorder)``.

    Attributes:
        calls (list[tuple[ChatRunRecord, tuple[ChatRunEvent, ...]]]): one entry
            per ended run, in the order the hook was called.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[ChatRunRecord, tuple[ChatRunEvent, ...]]] = []
        self._changed = trio.Event()

    async def __call__(self, record: ChatRunRecord, events: Sequence[ChatRunEvent]) -> None:
        self.calls.append((record, tuple(events)))
        self._changed.set()
        self._changed = trio.Event()

    @property
    def records(self) -> list[ChatRunRecord]:
        """The final record of every ended run, in call order."""
        return [record for record, _ in self.calls]

    def by_run_id(self, run_id: str) -> tuple[ChatRunRecord, tuple[ChatRunEvent, ...]]:
        """The call for ``run_id``; ``KeyError`` if it did not end (yet)."""
        for call in self.calls:
            if call[0].run_id == run_id:
                return call
        raise KeyError(run_id)

    async def wait_for(self, count: int) -> list[ChatRunRecord]:
        """Wait until at least ``count`` calls were recorded; return :attr:`records`."""
        await trio.lowlevel.checkpoint()
        while len(self.calls) < count:
            await self._changed.wait()
        return self.records


# -- scripted producers --------------------------------------------------------------


@attrs.frozen
class Sleep:
    """Script step: ``await trio.sleep(seconds)`` (skipped by an autojump ``MockClock``)."""

    seconds: float


@attrs.frozen
class Push:
    """Script step: ``run.push_frame(frame, status=..., current_tool=..., error=...)``."""

    frame: Any
    status: ChatRunStatus | str | None = None
    current_tool: str | Unset | None = UNSET
    error: str | Unset | None = UNSET


@attrs.frozen
class WaitFor:
    """Script step: wait until ``event`` is set (e.g. a human approval)."""

    event: trio.Event


@attrs.frozen
class Raise:
    """Script step: raise ``error`` (the run ends ``failed``)."""

    error: Exception


def scripted_producer(*steps: object, delay: float = 0.0) -> Callable[[ChatRun], Awaitable[None]]:
    """A producer that plays ``steps`` in order, then returns (``completed``).

    Each step is a :class:`Sleep`, :class:`Push`, :class:`WaitFor` or
    :class:`Raise`; any other object is pushed as a frame. After each pushed
    frame the producer sleeps ``delay`` seconds (Trio clock; ``0`` is still a
    checkpoint, so subscribers and other producers interleave as they would
    with a real model).

    Example::

        producer = scripted_producer({"type": "delta", "text": "Hi"}, Sleep(5), "done")
        run = registry.try_start("conv", producer)
    """
    for step in steps:
        if isinstance(step, Sleep) and not step.seconds >= 0:
            raise ValueError(f"Sleep seconds must be >= 0, not {step.seconds!r}")
    if not delay >= 0:
        raise ValueError(f"delay must be >= 0 seconds, not {delay!r}")

    async def producer(run: ChatRun) -> None:
        for step in steps:
            if isinstance(step, Sleep):
                await trio.sleep(step.seconds)
                continue
            if isinstance(step, WaitFor):
                await step.event.wait()
                continue
            if isinstance(step, Raise):
                raise step.error
            if isinstance(step, Push):
                run.push_frame(
                    step.frame,
                    status=step.status,
                    current_tool=step.current_tool,
                    error=step.error,
                )
            else:
                run.push_frame(step)
            if run.record.status.is_terminal:
                return
            await trio.sleep(delay)

    return producer


# -- the pytest plugin ---------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pass
else:

    @pytest.fixture
    def chat_run_config() -> RegistryConfig:
        """The :class:`~trio_chatruns.RegistryConfig` of ``chat_run_registry``
        (the defaults); override this fixture to change it."""
        return RegistryConfig()

    @pytest.fixture
    def chat_run_ends() -> RunEndRecorder:
        """The :class:`RunEndRecorder` that ``chat_run_registry`` uses as its hook."""
        return RunEndRecorder()

    @pytest.fixture
    async def chat_run_registry(
        chat_run_config: RegistryConfig, chat_run_ends: RunEndRecorder
    ) -> AsyncIterator[ChatRunRegistry]:
        """A :class:`~trio_chatruns.ChatRunRegistry` open for the test (a
        pytest-trio fixture); closed after it, its hook calls finished."""
        async with open_chat_run_registry(chat_run_config, on_run_end=chat_run_ends) as registry:
            yield registry
