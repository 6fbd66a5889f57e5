"""Quickstart: one chat run streamed to two subscribers.

Shows, in order: a producer streaming tokens; subscriber A reading it all;
subscriber B disconnecting mid-reply and resuming from the last seq it saw
(no gap, no duplicate); an interrupt of a second run; and eviction once the
retention window has passed.

Run it with ``python examples/quickstart.py``. It runs on Trio's MockClock, so
the 5-minute retention window passes instantly and the output is the same
every time.
"""

from __future__ import annotations

import trio
import trio.testing

from trio_chatruns import (
    TERMINAL_RETENTION,
    ChatRun,
    ChatRunRegistry,
    ChatRunStatus,
    open_chat_run_registry,
)

REPLY = ["Trio", "makes", "structured", "concurrency", "feel", "natural", "."]


def say(message: str) -> None:
    print(f"[t={trio.current_time():7.2f}s] {message}")


async def model(run: ChatRun) -> None:
    """A stand-in for an LLM: one token frame every 0.1 s, with a tool call."""
    run.update(ChatRunStatus.RUNNING, current_tool="search")
    run.push_frame({"type": "tool_call", "name": "search", "arguments": {"q": "trio"}})
    await trio.sleep(0.1)
    run.push_frame({"type": "tool_result", "name": "search"}, current_tool=None)
    for token in REPLY:
        await trio.sleep(0.1)
        run.push_frame({"type": "token", "text": token})


async def subscriber_a(registry: ChatRunRegistry) -> None:
    async with registry.subscribe("conv-1") as subscription:
        tokens = [e.frame["text"] async for e in subscription if e.frame["type"] == "token"]
    say(f"A read the whole reply: {' '.join(tokens)!r}")


async def subscriber_b(registry: ChatRunRegistry) -> None:
    tokens = []
    # First connection: drop after 3 frames, as a flaky mobile client would.
    async with registry.subscribe("conv-1") as subscription:
        async for event in subscription:
            if event.frame["type"] == "token":
                tokens.append(event.frame["text"])
            if event.seq == 4:
                break
        cursor, run_id = subscription.last_seq, subscription.run_id
    say(f"B disconnected after seq {cursor}")
    await trio.sleep(0.35)
    # Reconnect with the last seq it saw: the missed frames, then the live tail.
    async with registry.subscribe("conv-1", after=cursor, run_id=run_id) as subscription:
        async for event in subscription:
            if event.seq == cursor + 1:
                say(f"B resumed at seq {event.seq} (replayed from the buffer)")
            if event.frame["type"] == "token":
                tokens.append(event.frame["text"])
    say(f"B read the whole reply: {' '.join(tokens)!r}")


async def main() -> None:
    async with open_chat_run_registry() as registry:
        run = registry.try_start("conv-1", model)
        say(f"started run {run.run_id[:8]} for conv-1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber_a, registry)
            nursery.start_soon(subscriber_b, registry)
        record = await run.wait()
        say(f"conv-1 ended {record.status.value}, latest_seq={record.latest_seq}")

        # A second conversation, interrupted mid-reply (the user pressed stop).
        other = registry.try_start("conv-2", model)
        await trio.sleep(0.35)
        registry.interrupt("conv-2")
        record = await other.wait()
        last = registry.events("conv-2")[-1].frame
        say(f"conv-2 interrupted: status={record.status.value}, last frame={last}")

        say(f"retained: {[r.conversation_id for r in registry.list()]}")
        await trio.sleep(TERMINAL_RETENTION)
        say(f"after {TERMINAL_RETENTION:.0f}s of retention: {registry.list()}")
        stats = registry.stats()
        say(
            f"stats: evicted_ttl={stats.evicted_ttl} frames_pushed={stats.frames_pushed} "
            f"subscribers={stats.subscribers}"
        )


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
