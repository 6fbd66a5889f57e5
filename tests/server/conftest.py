"""Fixtures for the server tests: a real server on 127.0.0.1, port 0.

``httpx.ASGITransport`` buffers whole bodies, so streams are tested against
hypercorn for real. Helpers are exposed as fixtures (this directory is not a
package).
"""

from __future__ import annotations

import gc
import json
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest
import trio

pytest.importorskip("starlette")
pytest.importorskip("hypercorn")

from trio_chatruns import RegistryConfig
from trio_chatruns.server import RunningServer, ScriptedModel, ServerSettings

from helpers import start_serving

FAST = ScriptedModel(tokens_per_second=250.0, reply_tokens=60, pause_tokens=3)
"""A quick scripted model: a reply in about a third of a second."""


@attrs.define
class SSEMessage:
    """One dispatched SSE message as a client sees it."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def read_sse(response: httpx.Response) -> Any:
    """Yield :class:`SSEMessage` from a streaming httpx response (comments skipped).

    Follows the WHATWG parsing rules the tests need: ``field: value`` lines, a
    blank line dispatches, multi-line data joined with ``\\n``.
    """
    message = SSEMessage()
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data or message.id is not None or message.retry is not None:
                message.data = "\n".join(data)
                if not data:
                    message.event = ""  # nothing to dispatch (e.g. a retry-only message)
                yield message
            message, data = SSEMessage(), []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value
        elif name == "retry":
            message.retry = int(value)


@pytest.fixture
def sse() -> Callable[[httpx.Response], Any]:
    return read_sse


StartServer = Callable[..., Awaitable[RunningServer]]


# -- the run backend: in memory, or Redis ----------------------------------------
#
# A test marked ``@pytest.mark.backends`` runs twice: on the in-memory registry
# and on a real redis-server (``serve --redis``); its ``start_server`` (and
# ``server``) then use that backend. Every other test runs in memory only.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends: run the test on the in-memory and on the Redis run backend"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (
        metafunc.definition.get_closest_marker("backends") is not None
        and "backend_name" in metafunc.fixturenames
    ):
        metafunc.parametrize("backend_name", ["memory", "redis"], indirect=True)


# coredis 6.9 leaves the anyio memory streams of a failed connection attempt
# (Redis stopped by a test) unclosed: their __del__ warns. Only those warnings
# are ignored, and only in tests that use Redis; nothing of ours.
_COREDIS_LEFTOVERS = r"ignore:Unclosed <MemoryObject(Send|Receive)Stream:ResourceWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_redis = callspec is not None and callspec.params.get("backend_name") == "redis"
        if on_redis or "redis" in item.path.name:
            item.add_marker(pytest.mark.filterwarnings(_COREDIS_LEFTOVERS))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real redis-server for the session (tests/redis_server.py), never a mock."""
    from redis_server import REDIS_SERVER, RedisServer

    pytest.importorskip("coredis")
    if REDIS_SERVER is None:
        pytest.skip(
            "*** redis-server is not installed: the server on Redis is NOT tested. "
            "Install Debian's redis-server (.ci/run does). ***"
        )
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_redis() -> Iterator[Any]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    from redis_server import REDIS_SERVER, RedisServer

    pytest.importorskip("coredis")
    if REDIS_SERVER is None:
        pytest.skip("*** redis-server is not installed: the server on Redis is NOT tested. ***")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"Unclosed <MemoryObject", category=ResourceWarning
            )
            gc.collect()


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    """The session's Redis, emptied for this test (tests run one at a time)."""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=10) as sock:
        sock.sendall(b"FLUSHALL\r\n")  # an inline command (RESP)
        assert sock.recv(16).startswith(b"+OK")
    yield redis_server.url
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Unclosed <MemoryObject", category=ResourceWarning
        )
        gc.collect()


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    """``"memory"``, or ``"redis"`` in the second run of a ``backends`` test."""
    return getattr(request, "param", "memory")


@pytest.fixture
def redis_for_backend(request: pytest.FixtureRequest, backend_name: str) -> str | None:
    """The test's Redis URL on the Redis backend, else ``None``."""
    return request.getfixturevalue("redis_url") if backend_name == "redis" else None


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, redis_for_backend: str | None
) -> AsyncIterator[StartServer]:
    """``await start_server(model=..., registry_config=..., **settings)`` → RunningServer.

    On the Redis backend (``backend_name == "redis"``), every server a test
    starts shares the test's Redis, as workers of one deployment do, and is
    shut down gracefully when the test ends (a worker's Redis connections
    are not cancelled from under it).
    """
    redis = redis_for_backend
    stopped: list[tuple[RunningServer, trio.Event]] = []

    async def start(
        model: Any = FAST, registry_config: RegistryConfig | None = None, **settings: Any
    ) -> RunningServer:
        settings.setdefault("port", 0)
        settings.setdefault("graceful_timeout", 2.0)
        if redis is not None:
            settings.setdefault("redis", redis)
        running: RunningServer
        running, done = await start_serving(
            nursery, model, ServerSettings(**settings), registry_config
        )
        if settings.get("redis") is not None:
            stopped.append((running, done))
        return running

    yield start
    for running, _ in stopped:
        running.shutdown()
    with trio.move_on_after(30):
        for _, done in stopped:
            await done.wait()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
async def client(server: RunningServer) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c
