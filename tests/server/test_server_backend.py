"""The run backend interface (server/backend.py): what the server relies on.

The in-memory backend hands streams the registry's own subscription (nothing
added to the hot path, no checkpoint in its reads), anything else is refused
with a clear error, and a backend that cannot reach its store mid-stream
tells the client to resume from its cursor instead of failing the response.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_chatruns import ChatRunSubscription, RegistryConfig, open_chat_run_registry
from trio_chatruns.server import ScriptedModel
from trio_chatruns.server.backend import BackendUnavailable
from trio_chatruns.server.memory_backend import MemoryBackend
from trio_chatruns.server.sse import Cursor
from trio_chatruns.server.state import ServerState, as_backend
from trio_chatruns.server.streams import StreamRefusal, pump, resolve_stream

from helpers import RecordingSink


async def producer(run):
    run.push_frame({"type": "token", "text": "a"})
    run.push_frame({"type": "token", "text": "b"})


async def test_memory_backend_is_the_registry_without_a_checkpoint():
    async with open_chat_run_registry(RegistryConfig()) as registry:
        backend = as_backend(registry)
        assert isinstance(backend, MemoryBackend)
        assert backend.on_run_end is None
        # Reading and starting through the backend never checkpoints: a route
        # that checks and then starts is one atomic step, as with the registry.
        with trio.testing.assert_no_checkpoints():
            assert await backend.get("c") is None
            run = await backend.try_start("c", producer)
            assert (await backend.get("c")).run_id == run.run_id
            assert [r.run_id for r in backend.active_here()] == [run.run_id]
            assert await backend.queued("c") == []
        await run.wait()
        async with backend.subscribe("c") as subscription:
            # The stream iterates the core's own subscription: no wrapper.
            assert type(subscription) is ChatRunSubscription
            assert [e.frame["text"] async for e in subscription] == ["a", "b"]


def test_anything_else_is_refused():
    with pytest.raises(TypeError, match="ChatRunRegistry"):
        as_backend(object())


class _Down:
    """A backend whose store is down once a stream subscribes."""

    name = "down"
    config = RegistryConfig()
    on_run_end = None

    def __init__(self, record):
        self.record = record

    async def get(self, conversation_id):
        return self.record

    async def queued(self, conversation_id):
        return []

    def subscribe(self, conversation_id, *, after=0, run_id=None):
        raise BackendUnavailable("subscribe", "Redis is unavailable for subscribe: down")

    def active_here(self):
        return []

    def interrupt_here(self, conversation_id):
        return False


async def test_a_store_down_when_subscribing_tells_the_client_to_resume():
    async with open_chat_run_registry() as registry:
        run = registry.try_start("c", producer)
        await run.wait()
        record = registry.get("c")
    server = ServerState(_Down(record), ScriptedModel())
    plan = await resolve_stream(server, "c", Cursor(run_id=record.run_id, after=1), True)
    assert not isinstance(plan, StreamRefusal)
    sink = RecordingSink()
    await pump(server, plan, sink)
    # The client's own cursor, so it reconnects from where it was; not counted as lag.
    assert sink.sent == [([("lagged", 1, record.run_id)], True)]
    assert server.stats().streams_lagged == 0


async def test_a_store_down_when_resolving_is_503():
    class _Unreachable(_Down):
        async def get(self, conversation_id):
            raise BackendUnavailable("get", "Redis is unavailable for get: down")

    server = ServerState(_Unreachable(None), ScriptedModel())
    refusal = await resolve_stream(server, "c", Cursor(run_id=None, after=0), False)
    assert refusal == StreamRefusal(503, "Redis is unavailable for get: down")


async def test_each_backend_reports_the_hook_its_registry_was_opened_with(redis_url):
    coredis = pytest.importorskip("coredis")
    from trio_chatruns.redis import open_redis_chat_runs
    from trio_chatruns.server.redis_backend import RedisBackend

    async def hook(record, events):
        pass

    async with open_chat_run_registry() as bare, open_chat_run_registry(on_run_end=hook) as hooked:
        assert MemoryBackend(bare).on_run_end is None
        assert MemoryBackend(hooked).on_run_end is hook
    async with coredis.Redis.from_url(redis_url) as client:
        async with open_redis_chat_runs(client) as bare:
            assert RedisBackend(bare).on_run_end is None
        async with open_redis_chat_runs(client, on_run_end=hook) as hooked:
            assert RedisBackend(hooked).on_run_end is hook
