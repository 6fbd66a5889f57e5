"""Graceful shutdown with open streams: in process, and the CLI under SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream

from trio_chatruns.server import ScriptedModel, ServerSettings, serve

SLOW = ScriptedModel(tokens_per_second=40.0, reply_tokens=400)


async def test_shutdown_ends_every_stream_and_returns(sse):
    graceful = 2.0
    results = {}
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            partial(
                serve, SLOW, ServerSettings(port=0, graceful_timeout=graceful), handle_signals=False
            )
        )
        async with httpx.AsyncClient(base_url=running.url) as client:
            for cid in ("s1", "s2"):
                assert (
                    await client.post(f"/v1/chat/runs/{cid}", json={"prompt": "p"})
                ).status_code == 202

            async def read_sse_stream(task_status):
                async with client.stream("GET", "/v1/chat/runs/s1/stream") as response:
                    messages = []
                    async for message in sse(response):
                        messages.append(message)
                        if message.event == "message" and len(messages) == 2:
                            task_status.started()  # mid-reply: the first frame is in
                    results["sse"] = messages

            async def read_ws_stream(task_status):
                host, port = running.url.removeprefix("http://").rsplit(":", 1)
                async with (
                    await trio.open_tcp_stream(host, int(port)) as stream,
                    trio.open_nursery() as n,
                ):
                    ws = await wrap_client_stream(n, stream, host, "/v1/chat/runs/s2/ws")
                    messages = []
                    try:
                        while True:
                            messages.append(json.loads(await ws.get_message()))
                            if len(messages) == 1:
                                task_status.started()  # mid-reply: the first frame is in
                    except ConnectionClosed as closed:
                        results["ws"] = (messages, closed.reason.code)
                    n.cancel_scope.cancel()

            async with trio.open_nursery() as readers:
                await readers.start(read_sse_stream)
                await readers.start(read_ws_stream)
                assert running.server.stats().open_streams == 2
                running.shutdown()
        # serve() returns: the outer nursery would hang otherwise.
    # Every stream ended by itself with its run (none had to be cut at half the
    # graceful timeout, which would show as dropped, with no end message).
    assert running.server.stats().streams_dropped == 0
    end = results["sse"][-1]
    assert end.event == "end"
    assert end.json()["status"] == "cancelled"
    assert end.json()["reason"] == "shutdown"  # not a user's interrupt
    sse_frames = [m.json()["frame"] for m in results["sse"] if m.event == "message"]
    assert sse_frames[-1] == {"type": "interrupted"}
    messages, code = results["ws"]
    assert code == 1001  # going away
    assert messages[-1]["type"] == "end"
    assert messages[-1]["reason"] == "shutdown"
    assert messages[-1]["record"]["status"] == "cancelled"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_exits_cleanly_on_signal(signum, sse):
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "trio_chatruns.server",
            "serve",
            "--port",
            "0",
            "--graceful-timeout",
            "3",
            "--tokens-per-second",
            "40",
            "--db",
            ":memory:",
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stderr = bytearray()
    serving = trio.Event()

    async def drain_stderr():
        # Read the child's log until it closes stderr: a child writing to a
        # full pipe nobody reads would block (and never exit).
        while chunk := await process.stderr.receive_some():
            stderr.extend(chunk)
            if b"serving on " in stderr:
                serving.set()
        serving.set()  # the child is gone: the test reads why from its log

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_stderr)
            with trio.fail_after(15):
                await serving.wait()
            assert b"serving on " in stderr, stderr.decode()
            url = stderr.decode().split("serving on ")[1].split()[0]
            async with httpx.AsyncClient(base_url=url) as client:
                assert (
                    await client.post("/v1/chat/runs/sig", json={"prompt": "p"})
                ).status_code == 202
                async with client.stream("GET", "/v1/chat/runs/sig/stream") as response:
                    process.send_signal(signum)
                    with trio.fail_after(5):
                        messages = [m async for m in sse(response)]
            assert messages[-1].event == "end", stderr.decode()
            assert messages[-1].json()["status"] == "cancelled"
            with trio.fail_after(5):
                code = await process.wait()
            assert code == 0, stderr.decode()
            # the drain task ends with the child's stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
