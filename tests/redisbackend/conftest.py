"""Fixtures for the Redis backend's tests: a real ``redis-server`` per session
(never a mock), a coredis client per test, and a fresh key prefix per test so
tests never see each other's runs."""

from __future__ import annotations

import os
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
