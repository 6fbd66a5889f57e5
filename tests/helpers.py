"""Producers and small utilities shared by the tests."""

from __future__ import annotations

import trio

from trio_chatruns import ChatRun, ChatRunRegistry, ChatRunStatus


async def park(run: ChatRun) -> None:
    """A producer that pushes nothing and waits until cancelled."""
    await trio.sleep_forever()


async def finish_at_once(run: ChatRun) -> None:
    """A producer that returns immediately (the run ends COMPLETED)."""


def make_ticker(count: int, interval: float = 1.0):
    """A producer pushing ``{"n": i}`` for i in 1..count, one per ``interval`` s."""

    async def ticker(run: ChatRun) -> None:
        for n in range(1, count + 1):
            run.push_frame({"n": n})
            await trio.sleep(interval)

    return ticker


def finished_run(registry: ChatRunRegistry, conversation_id: str, frames: int = 1) -> ChatRun:
    """Start a run, push ``frames`` frames through its handle and complete it,
    all synchronously (the producer task never gets to run)."""
    run = registry.try_start(conversation_id, park)
    for n in range(1, frames + 1):
        status = ChatRunStatus.COMPLETED if n == frames else None
        run.push_frame({"n": n}, status=status)
    if frames == 0:
        run.update(ChatRunStatus.COMPLETED)
    return run


async def wait_until(condition, *, poll: float = 0.005) -> None:
    """Wait until ``condition()`` is true: for a state nothing signals (a counter,
    a log record, another process). Fails with ``trio.TooSlowError`` after 10
    seconds; the poll interval paces the check, it is not a wait for the event
    to have happened."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the state
            await trio.sleep(poll)
