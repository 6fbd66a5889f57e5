"""Fixtures for the server tests: a real server on 127.0.0.1, port 0.

``httpx.ASGITransport`` buffers whole bodies, so streams are tested against
hypercorn for real. Helpers are exposed as fixtures (this directory is not a
package).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio

pytest.importorskip("starlette")
pytest.importorskip("hypercorn")

from trio_chatruns import RegistryConfig
from trio_chatruns.server import RunningServer, ScriptedModel, ServerSettings, serve

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


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``await start_server(model=..., registry_config=..., **settings)`` → RunningServer."""

    async def start(
        model: Any = FAST, registry_config: RegistryConfig | None = None, **settings: Any
    ) -> RunningServer:
        settings.setdefault("port", 0)
        settings.setdefault("graceful_timeout", 2.0)
        running: RunningServer = await nursery.start(
            partial(serve, model, ServerSettings(**settings), registry_config, handle_signals=False)
        )
        return running

    return start


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
async def client(server: RunningServer) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c
