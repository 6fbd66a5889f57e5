"""Testing an application's own handler against the real registry, with the
fixtures and helpers of ``trio_chatruns.testing`` (docs/testing-helpers.md).

Run it with ``pytest docs/examples/test_chat_handler.py``: the fixtures come
from the plugin the package registers, no conftest.py needed.
"""

from __future__ import annotations

import pytest
import trio

from trio_chatruns import ChatRun, ChatRunRegistry, ChatRunStatus, RegistryConfig
from trio_chatruns.testing import Sleep, collect_events, open_event_collector, scripted_producer

pytestmark = pytest.mark.trio


# -- the application code under test (normally imported from your package) --------


async def echo_model(run: ChatRun, prompt: str) -> None:
    for word in prompt.split():
        run.push_frame({"type": "delta", "text": word})
        await trio.sleep(0.5)  # the model's pace, on the Trio clock
    run.push_frame({"type": "done"})


def handle_prompt(registry: ChatRunRegistry, conversation_id: str, prompt: str) -> str:
    """POST /conversations/{id}/prompts: answer next, after any reply in progress."""
    run = registry.try_start(conversation_id, echo_model, prompt, if_active="enqueue")
    return run.run_id


# -- the tests ----------------------------------------------------------------------


@pytest.fixture
def chat_run_config() -> RegistryConfig:
    """Overrides the plugin's fixture: the registry under test uses these limits."""
    return RegistryConfig(terminal_retention=60, max_queued_per_conversation=1)


async def test_prompts_are_answered_in_order_and_saved(
    chat_run_registry, chat_run_ends, autojump_clock
):
    first = handle_prompt(chat_run_registry, "c", "hello there")
    second = handle_prompt(chat_run_registry, "c", "and again")

    events = await collect_events(chat_run_registry, "c", run_id=first)
    assert [event.frame for event in events] == [
        {"type": "delta", "text": "hello"},
        {"type": "delta", "text": "there"},
        {"type": "done"},
    ]
    assert trio.current_time() == 1.0  # two half-second steps, skipped by the MockClock

    async with open_event_collector(chat_run_registry, "c", run_id=second) as reply:
        await reply.wait_done()
    assert [frame["type"] for frame in reply.frames] == ["delta", "delta", "done"]

    # The registry's run-end hook saw both turns, in order (what a server persists).
    records = await chat_run_ends.wait_for(2)
    assert [record.run_id for record in records] == [first, second]
    assert all(record.status is ChatRunStatus.COMPLETED for record in records)


async def test_a_client_resumes_from_its_last_seq(chat_run_registry, autojump_clock):
    chat_run_registry.try_start("c", scripted_producer("a", Sleep(10), "b", "c"))
    async with open_event_collector(chat_run_registry, "c") as tab:
        await tab.wait_for(1)  # the tab reads "a", then the connection drops
    rest = await collect_events(chat_run_registry, "c", after=tab.seqs[-1])
    assert [event.frame for event in rest] == ["b", "c"]
