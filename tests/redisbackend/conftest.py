"""Fixtures for the Redis backend's tests: a real ``redis-server`` per session
(never a mock), a coredis client per test, and a fresh key prefix per test so
tests never see each other's runs."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest

from redis_server import REDIS_SERVER, RedisServer

coredis = pytest.importorskip("coredis")


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
