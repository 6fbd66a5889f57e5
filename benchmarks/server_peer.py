"""The peer of the server benchmark: Starlette + sse-starlette on uvicorn (asyncio).

``python -m benchmarks.server_peer PORT h11|uvloop`` serves on
``127.0.0.1:PORT`` the same routes the load client uses, written the way an
asyncio application usually is: runs in a dict, one ``asyncio.Queue`` per
subscriber, ``EventSourceResponse`` over an async generator that encodes each
event as it goes out. ``h11`` runs uvicorn with ``loop="asyncio",
http="h11"``; ``uvloop`` with ``loop="uvloop", http="httptools"``.

The bytes on the wire are those of ``trio-chatruns serve``: ``retry: 1000``
first, then ``id: <run_id>:<seq>`` and ``data: <event JSON>`` per frame, an
``event: end`` message with the final record, then the end of the body. The
model obeys the same orders as :mod:`benchmarks.server_ours`. Needs the
``bench`` extra (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .server_ours import token

_SEP = (",", ":")


class Run:
    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.run_id = os.urandom(16).hex()
        self.events: list[dict[str, Any]] = []
        self.queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.status = "running"
        self.started_at = time.monotonic()
        self.terminated_at: float | None = None

    def push(self, frame: dict[str, Any], status: str | None = None) -> None:
        event = {
            "conversation_id": self.conversation_id,
            "run_id": self.run_id,
            "seq": len(self.events) + 1,
            "timestamp": time.time(),
            "frame": frame,
        }
        self.events.append(event)
        for q in self.queues:
            q.put_nowait(event)
        if status is not None:
            self.status = status
            self.terminated_at = time.monotonic()
            for q in self.queues:
                q.put_nowait(None)

    def record(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "run_id": self.run_id,
            "status": self.status,
            "started_at": self.started_at,
            "updated_at": self.terminated_at or self.started_at,
            "terminated_at": self.terminated_at,
            "latest_seq": len(self.events),
            "current_tool": None,
            "last_error": None,
        }


RUNS: dict[str, Run] = {}
GO: dict[str, asyncio.Event] = {}
TASKS: set[asyncio.Task[None]] = set()


async def produce(run: Run, cmd: dict[str, Any]) -> None:
    op = cmd["op"]
    if op == "go":
        GO.setdefault(cmd["key"], asyncio.Event()).set()
    elif op == "gc":
        run.push({"type": "gc", "young": gc.get_stats()[0]["collections"]})
    else:
        run.push({"type": "status", "status": "running", "current_tool": None})
        await GO.setdefault(cmd["key"], asyncio.Event()).wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(cmd["frames"]):
            if cmd["rate"]:
                await asyncio.sleep(max(0.0, start + i / cmd["rate"] - loop.time()))
            else:
                await asyncio.sleep(0)
            run.push(token(i))
    run.push({"type": "done", "finish_reason": "stop"}, status="completed")


async def start_run(request: Request) -> JSONResponse:
    cid = request.path_params["conversation_id"]
    cmd = json.loads((await request.json())["prompt"])
    run = RUNS[cid] = Run(cid)
    task = asyncio.create_task(produce(run, cmd))
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    return JSONResponse({"run_id": run.run_id, "conversation_id": cid}, status_code=202)


async def stream(request: Request) -> EventSourceResponse:
    run = RUNS[request.path_params["conversation_id"]]
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    backlog = list(run.events)
    if run.terminated_at is None:
        run.queues.add(queue)
    else:
        queue.put_nowait(None)

    def message(event: dict[str, Any]) -> ServerSentEvent:
        data = json.dumps(event, separators=_SEP, ensure_ascii=False)
        return ServerSentEvent(data=data, id=f"{event['run_id']}:{event['seq']}", sep="\n")

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(retry=1000, sep="\n")
            for event in backlog:
                yield message(event)
            while (event := await queue.get()) is not None:
                yield message(event)
            record = run.record()
            yield ServerSentEvent(
                data=json.dumps(record, separators=_SEP),
                event="end",
                id=f"{run.run_id}:{record['latest_seq']}",
                sep="\n",
            )
        finally:
            run.queues.discard(queue)

    return EventSourceResponse(events(), ping=15, sep="\n")


app = Starlette(
    routes=[
        Route("/v1/chat/runs/{conversation_id}", start_run, methods=["POST"]),
        Route("/v1/chat/runs/{conversation_id}/stream", stream),
    ]
)


if __name__ == "__main__":
    port, variant = int(sys.argv[1]), sys.argv[2]
    loop, http = ("uvloop", "httptools") if variant == "uvloop" else ("asyncio", "h11")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop=loop,
        http=http,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
