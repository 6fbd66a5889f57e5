"""The Redis run backend: :class:`~.backend.RunBackend` over ``RedisChatRuns``.

What ``trio-chatruns serve --redis URL`` runs on: every worker opened on the
same Redis serves every run (start on one, stream, resume and interrupt
through any other). This module only adapts
:class:`trio_chatruns.redis.RedisChatRuns` to the server's interface:

- ``RedisUnavailable`` becomes :class:`~.backend.BackendUnavailable` (the
  routes answer ``503``);
- records come back with their times on this process's Trio clock (Redis
  stamps Unix seconds; see :mod:`.wallclock`), like the in-memory registry's;
- the runs started here are remembered, so ``max_active_runs`` counts them
  and a graceful shutdown interrupts them synchronously;
- a subscription is wrapped so that, once it ends, its ``record`` is the
  run's final record as Redis holds it (the ``end`` message carries it).

Needs the ``[redis]`` extra (coredis); imported only when a server is given
a ``RedisChatRuns``.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from typing import TYPE_CHECKING, Any

import attrs

from .. import ChatRunRecord, ChatRunStatus, RunNotFound
from ..redis import RedisChatRun, RedisChatRuns, RedisSubscription, RedisUnavailable
from .backend import BackendUnavailable
from .wallclock import wall_anchor

if TYPE_CHECKING:
    from .. import ChatRunEvent, RegistryConfig, RegistryStats
    from .backend import RunEndHook

__all__ = ["RedisBackend"]


@contextmanager
def _available() -> Iterator[None]:
    """Re-raise ``RedisUnavailable`` as :class:`BackendUnavailable` (a 503)."""
    try:
        yield
    except RedisUnavailable as exc:
        raise BackendUnavailable(exc.operation, str(exc)) from exc


def _to_trio_clock(record: ChatRunRecord) -> ChatRunRecord:
    """``record`` with its Unix-second times moved to this run's Trio clock."""
    anchor = wall_anchor()
    terminated = record.terminated_at
    return attrs.evolve(
        record,
        started_at=record.started_at - anchor,
        updated_at=record.updated_at - anchor,
        terminated_at=None if terminated is None else terminated - anchor,
    )


class RedisStream:
    """A :class:`~trio_chatruns.redis.RedisSubscription` as a stream iterates it.

    While the run is live, ``record`` only answers ``latest_seq`` (the frames
    that come out without waiting: the replay still held); once the iteration
    ended, it is the run's final record read from Redis. If that record is
    gone (``terminal_retention=0``) or Redis cannot be read at that moment,
    the iteration ends with ``RunNotFound`` instead, so the stream says
    ``unavailable`` rather than inventing a status.
    """

    __slots__ = ("_final", "_runs", "_subscription")

    def __init__(self, runs: RedisChatRuns, subscription: RedisSubscription) -> None:
        self._runs = runs
        self._subscription = subscription
        self._final: ChatRunRecord | None = None

    @property
    def last_seq(self) -> int:
        return self._subscription.last_seq

    @property
    def record(self) -> ChatRunRecord:
        if self._final is not None:
            return self._final
        subscription = self._subscription
        # The replay still queued comes out without waiting; live frames may
        # repeat replayed ones (skipped), so only the replay is counted.
        ready = len(getattr(subscription, "_replay", ()))
        return ChatRunRecord(
            conversation_id=subscription.conversation_id,
            run_id=subscription.run_id,
            status=ChatRunStatus.RUNNING,
            started_at=0.0,
            updated_at=0.0,
            terminated_at=None,
            latest_seq=subscription.last_seq + ready,
            current_tool=None,
            last_error=None,
        )

    def __aiter__(self) -> RedisStream:
        return self

    async def __anext__(self) -> ChatRunEvent:
        try:
            return await self._subscription.__anext__()
        except StopAsyncIteration:
            subscription = self._subscription
            try:
                final = await self._runs.get(subscription.conversation_id)
            except RedisUnavailable:
                final = None
            if final is None or final.run_id != subscription.run_id:
                raise RunNotFound(subscription.conversation_id, subscription.run_id) from None
            self._final = _to_trio_clock(final)
            raise


class RedisBackend:
    """The runs of every worker sharing one Redis; see the module docstring.

    Attributes:
        runs (RedisChatRuns): the open Redis backend (owned by the caller).
    """

    name = "redis"

    def __init__(self, runs: RedisChatRuns) -> None:
        self.runs = runs
        # Runs started here (by run id) that may still be active.
        self._here: dict[str, RedisChatRun] = {}

    def __repr__(self) -> str:
        return f"<RedisBackend {self.runs!r}>"

    @property
    def config(self) -> RegistryConfig:
        return self.runs.config

    @property
    def on_run_end(self) -> RunEndHook | None:
        return self.runs._run_end_hook()

    def _prune_here(self) -> None:
        ended = [run_id for run_id, run in self._here.items() if run.record.status.is_terminal]
        for run_id in ended:
            del self._here[run_id]

    async def try_start(
        self, conversation_id: str, producer: Any, *, if_active: str = "reject"
    ) -> RedisChatRun:
        self._prune_here()
        with _available():
            run = await self.runs.try_start(conversation_id, producer, if_active=if_active)
        self._here[run.run_id] = run
        return run

    async def get(self, conversation_id: str) -> ChatRunRecord | None:
        with _available():
            record = await self.runs.get(conversation_id)
        return None if record is None else _to_trio_clock(record)

    async def queued(self, conversation_id: str) -> builtins.list[ChatRunRecord]:
        with _available():
            records = await self.runs.queued(conversation_id)
        return [_to_trio_clock(record) for record in records]

    async def list(self, *, active_only: bool = False) -> builtins.list[ChatRunRecord]:
        with _available():
            records = await self.runs.list(active_only=active_only)
        return [_to_trio_clock(record) for record in records]

    async def events(self, conversation_id: str, *, after: int = 0) -> builtins.list[ChatRunEvent]:
        with _available():
            return await self.runs.events(conversation_id, after=after)

    async def interrupt(self, conversation_id: str) -> bool:
        with _available():
            return await self.runs.interrupt(conversation_id)

    async def stats(self) -> RegistryStats:
        with _available():
            return await self.runs.stats()

    def subscribe(
        self, conversation_id: str, *, after: int = 0, run_id: str | None = None
    ) -> AbstractAsyncContextManager[RedisStream]:
        return self._subscribe(conversation_id, after, run_id)

    @asynccontextmanager
    async def _subscribe(
        self, conversation_id: str, after: int, run_id: str | None
    ) -> AsyncIterator[RedisStream]:
        async with AsyncExitStack() as stack:
            with _available():  # on entering only: iterating never raises it
                subscription = await stack.enter_async_context(
                    self.runs.subscribe(conversation_id, after=after, run_id=run_id)
                )
            yield RedisStream(self.runs, subscription)

    def active_here(self) -> builtins.list[ChatRunRecord]:
        self._prune_here()
        return [_to_trio_clock(run.record) for run in self._here.values()]

    def interrupt_here(self, conversation_id: str) -> bool:
        interrupted = False
        for run in builtins.list(self._here.values()):
            if run.conversation_id == conversation_id and run.record.status.is_active:
                interrupted = run.interrupt() or interrupted
        return interrupted
