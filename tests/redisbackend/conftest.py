"""Fixtures for the Redis backend's tests: a real ``redis-server`` per session
(never a mock), a coredis client per test, and a fresh key prefix per test so
tests never see each other's runs."""

from __future__ import annotations

import gc
import inspect
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from redis_server import REDIS_SERVER, RedisServer

coredis = pytest.importorskip("coredis")

from trio_chatruns import RegistryConfig, open_chat_run_registry  # noqa: E402
from trio_chatruns.redis import open_redis_chat_runs  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(
            "*** redis-server is not installed: the Redis backend is NOT tested. "
            "Install Debian's redis-server (.ci/run does). ***"
        )
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or restart it."""
    if REDIS_SERVER is None:
        pytest.skip("*** redis-server is not installed: the Redis backend is NOT tested. ***")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[object]:
    async with coredis.Redis.from_url(redis_server.url) as client:
        yield client


@pytest.fixture
def key_prefix() -> str:
    return f"test-{os.urandom(6).hex()}"


# coredis 6.9 leaves the anyio memory streams of a failed connection attempt
# (Redis down in the restart tests) unclosed: their __del__ warns. Only those
# warnings are ignored here (a mark outranks ``-W error``); nothing of ours.
_COREDIS_LEFTOVERS = r"ignore:Unclosed <MemoryObject(Send|Receive)Stream:ResourceWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(_COREDIS_LEFTOVERS))


@pytest.fixture(autouse=True)
def collect_coredis_leftovers() -> Iterator[None]:
    """Collect those leftovers after each test, with the same filter, so
    none is collected later under another test's (or the session's) filters."""
    yield
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"Unclosed <MemoryObject(Send|Receive)Stream",
            category=ResourceWarning,
        )
        gc.collect()


class Backend:
    """Awaitable calls over either backend (``await b.get(...)`` for both)."""

    def __init__(self, impl: Any, kind: str) -> None:
        self.impl = impl
        self.kind = kind

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.impl, name)
        if name in ("subscribe", "push_frame", "update"):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return call


@pytest.fixture(params=["memory", "redis"])
def open_backend(request, key_prefix):
    """``open_backend(config, on_run_end=None)``: an async context manager
    yielding a :class:`Backend` (the in-memory registry, or the Redis backend
    on the session's redis-server); ``backend.kind`` says which."""

    @asynccontextmanager
    async def opener(
        config: RegistryConfig | None = None, on_run_end: Any = None
    ) -> AsyncIterator[Backend]:
        if request.param == "memory":
            async with open_chat_run_registry(config, on_run_end=on_run_end) as registry:
                yield Backend(registry, "memory")
        else:
            server = request.getfixturevalue("redis_server")
            async with (
                coredis.Redis.from_url(server.url) as client,
                open_redis_chat_runs(
                    client, config, key_prefix=key_prefix, on_run_end=on_run_end
                ) as runs,
            ):
                yield Backend(runs, "redis")

    return opener
