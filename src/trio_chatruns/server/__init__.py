"""``trio_chatruns.server`` — the chat server: HTTP API, resumable SSE and
WebSocket streams, a browser page, and chat models (scripted and OpenAI).

Needs the ``server`` extra (``pip install "trio-chatruns[server]"``); the core
package imports without it. Run it with ``trio-chatruns serve``, or embed it::

    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, ScriptedModel())
        print(running.url)

See ``docs/server.md`` for the HTTP API and the resume protocol.
"""

from __future__ import annotations

try:
    import hypercorn  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_chatruns.server needs the 'server' extra: pip install 'trio-chatruns[server]'"
    ) from exc

from .app import ChatServer, ServerStats
from .config import ServerSettings
from .failures import ModelFailure
from .producers import ChatModel, ChatRequest, OpenAIChatModel, ScriptedModel, load_model
from .runner import RunningServer, serve

__all__ = [
    "ChatModel",
    "ChatRequest",
    "ChatServer",
    "ModelFailure",
    "OpenAIChatModel",
    "RunningServer",
    "ScriptedModel",
    "ServerSettings",
    "ServerStats",
    "load_model",
    "serve",
]
