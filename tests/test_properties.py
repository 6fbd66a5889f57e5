"""Property-based checks of replay and fan-out against a simple model."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st

from trio_chatruns import RegistryConfig, ReplayGap, SubscriberLagged, open_chat_run_registry

from helpers import park


@given(
    capacity=st.integers(1, 12),
    pushes=st.integers(0, 40),
    after=st.integers(0, 45),
    terminal=st.booleans(),
)
def test_replay_is_exactly_the_buffered_suffix_or_a_gap(capacity, pushes, after, terminal):
    async def main():
        config = RegistryConfig(max_events_per_run=capacity)
        async with open_chat_run_registry(config) as registry:
            run = registry.try_start("c", park)
            for n in range(1, pushes + 1):
                run.push_frame(n)
            if terminal:
                run.update("completed")
            oldest = max(1, pushes - capacity + 1)
            # The model: seqs oldest..pushes are buffered.
            assert [e.seq for e in registry.events("c", after=after)] == list(
                range(max(after + 1, oldest), pushes + 1)
            )
            try:
                async with registry.subscribe("c", after=after) as subscription:
                    if not terminal:
                        run.update("completed")
                    got = [e.frame async for e in subscription]
            except ReplayGap as gap:
                assert after + 1 < oldest
                assert gap.available_from == oldest
            except ValueError:
                assert after > pushes
            else:
                assert oldest <= after + 1 and after <= pushes
                assert got == list(range(after + 1, pushes + 1))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# A schedule: for each step, push one frame, then let each subscriber read up to
# k queued events (0 = stays silent this step).
schedules = st.integers(1, 4).flatmap(
    lambda subscribers: st.lists(
        st.lists(st.integers(0, 3), min_size=subscribers, max_size=subscribers),
        max_size=30,
    )
)


@given(buffer=st.integers(1, 4), schedule=schedules)
def test_every_subscriber_sees_a_gapless_prefix_then_end_or_lag(buffer, schedule):
    count = len(schedule[0]) if schedule else 1

    async def main():
        config = RegistryConfig(subscriber_buffer=buffer)
        async with open_chat_run_registry(config) as registry:
            run = registry.try_start("c", park)
            seen = [[] for _ in range(count)]
            outcome = [None] * count
            async with trio.open_nursery() as nursery:
                subscriptions = []
                for _ in range(count):
                    subscriptions.append(await nursery_enter(nursery, registry.subscribe("c")))

                async def read(i, k):
                    for _ in range(k):
                        if outcome[i] is not None:
                            return
                        with trio.move_on_after(0.001):
                            try:
                                seen[i].append((await subscriptions[i].__anext__()).seq)
                            except SubscriberLagged as lag:
                                outcome[i] = ("lagged", lag.resume_after)
                            except StopAsyncIteration:
                                outcome[i] = ("ended", None)

                for step in schedule:
                    run.push_frame("x")
                    for i, k in enumerate(step):
                        await read(i, k)
                run.update("completed")
                for i in range(count):
                    await read(i, 10_000)
                nursery.cancel_scope.cancel()
            total = run.record.latest_seq
            lagged = 0
            for i in range(count):
                assert seen[i] == list(range(1, len(seen[i]) + 1))
                kind, resume_after = outcome[i]
                if kind == "ended":
                    assert seen[i] == list(range(1, total + 1))
                else:
                    lagged += 1
                    assert resume_after == len(seen[i])
                    assert len(seen[i]) < total
            assert registry.stats().lagged_subscribers == lagged
            event(f"lagged subscribers: {min(lagged, 2)}")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def nursery_enter(nursery, manager):
    """Enter an async context manager for the lifetime of ``nursery``."""
    entered = trio.Event()
    holder = []

    async def hold():
        async with manager as value:
            holder.append(value)
            entered.set()
            await trio.sleep_forever()

    nursery.start_soon(hold)
    await entered.wait()
    return holder[0]
