"""The server side of the server benchmark: ``trio-chatruns serve`` with a bench model.

``python -m benchmarks.server_ours PORT`` serves the real :func:`serve` (the
same code path as ``trio-chatruns serve``) on ``127.0.0.1:PORT`` with caps
raised for the load (thousands of streams and chats) and prints ``ready``.
SIGTERM shuts it down gracefully.

The model reads its orders from the prompt, a JSON object (the peer in
:mod:`benchmarks.server_peer` reads the same ones):

- ``{"op": "stream", "key", "frames", "rate"}``: push a ``status`` frame at
  once (so a stream that received one event is attached), wait for ``go`` on
  ``key``, then push ``frames`` ``token`` frames (``rate`` per second, or as
  fast as possible with one checkpoint per frame when ``0``), each carrying
  ``"t"``, the ``time.monotonic()`` of its push, then ``done``;
- ``{"op": "go", "key"}``: release every run waiting on ``key``;
- ``{"op": "gc"}``: push one frame with the young-generation collection
  count of this process, then ``done``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

import trio

from trio_chatruns import ChatRunStatus, RegistryConfig
from trio_chatruns.server import ServerSettings, serve

_GO: dict[str, trio.Event] = {}


def _event(key: str) -> trio.Event:
    return _GO.setdefault(key, trio.Event())


def token(seq: int) -> dict[str, Any]:
    """The token frame both servers push (``t`` is filled in at push time)."""
    return {"type": "token", "text": f"tok{seq % 10} ", "t": time.monotonic()}


async def bench_model(run: Any, request: Any) -> None:
    cmd = json.loads(request.prompt)
    op = cmd["op"]
    if op == "go":
        _event(cmd["key"]).set()
    elif op == "gc":
        run.push_frame({"type": "gc", "young": gc.get_stats()[0]["collections"]})
    else:
        run.push_frame({"type": "status", "status": "running", "current_tool": None})
        await _event(cmd["key"]).wait()
        frames, rate = cmd["frames"], cmd["rate"]
        start = trio.current_time()
        for i in range(frames):
            if rate:
                await trio.sleep_until(start + i / rate)
            else:
                await trio.lowlevel.checkpoint()
            run.push_frame(token(i))
    run.push_frame({"type": "done", "finish_reason": "stop"}, status=ChatRunStatus.COMPLETED)


async def main(port: int) -> None:
    settings = ServerSettings(
        port=port,
        max_active_runs=10_000,
        max_subscribers_per_run=10_000,
        max_body_bytes=4096,
        tune_gc=True,  # as ``trio-chatruns serve`` does (without --gc-defaults)
    )
    config = RegistryConfig(
        max_events_per_run=200_000, subscriber_buffer=200_000, max_retained_terminal=4096
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, bench_model, settings, config)
        print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
