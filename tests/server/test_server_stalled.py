"""Clients that stop reading: real sockets with a tiny receive buffer, never read.

Hypercorn writes inside a shielded cancel scope, so such a client would pin
its stream (subscription, stream slot, socket, the run in memory) forever
and hold a shutdown; ``send_timeout`` closes the connection instead (see
``trio_chatruns.server.connections``). Each test here hangs (and fails on its
``fail_after``) without that.
"""

from __future__ import annotations

import base64
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap

import httpx
import pytest
import trio

from trio_chatruns import RegistryConfig
from trio_chatruns.server import connections
from trio_chatruns.server.config import ServerSettings
from trio_chatruns.server.runner import WEBSOCKET_MAX_MESSAGE_BYTES, hypercorn_config

FRAME_TEXT = "x" * 60_000
FRAMES = 160
"""About 10 MB per run: more than a loopback socket's send and receive buffers hold."""


class BigFrames:
    """Pushes ~10 MB of token frames at once, then stays active until ``release``."""

    def __init__(self, frames: int = FRAMES) -> None:
        self.frames = frames
        self.release = trio.Event()

    async def __call__(self, run, request):
        for _ in range(self.frames):
            run.push_frame({"type": "token", "text": FRAME_TEXT})
        await self.release.wait()


async def stalled_reader(url: str, path: str, *, websocket: bool = False) -> trio.socket.SocketType:
    """Open a connection with a tiny receive buffer, send the request, never read."""
    host, port = url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    else:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
    await sock.send(request.encode())
    return sock


async def read_to_eof(sock: trio.socket.SocketType) -> None:
    """Read what the server managed to send until the connection ends."""
    try:
        while await sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass


async def wait_for_streams(running, count: int) -> None:
    """Wait until ``count`` streams are open (polls the server's stats)."""
    while running.server.stats().open_streams < count:  # noqa: ASYNC110 - no event to wait on
        await trio.sleep(0.01)


@pytest.mark.parametrize("websocket", [False, True], ids=["sse", "websocket"])
async def test_a_stalled_reader_is_closed_after_send_timeout(start_server, websocket):
    model = BigFrames()
    running = await start_server(model=model, send_timeout=0.5, max_subscribers_per_run=1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        assert (await client.post("/v1/chat/runs/s", json={"prompt": "p"})).status_code == 202
        path = "/v1/chat/runs/s/ws" if websocket else "/v1/chat/runs/s/stream"
        sock = await stalled_reader(running.url, path, websocket=websocket)
        with sock, trio.fail_after(20):
            await wait_for_streams(running, 1)
            # The stream cannot finish its writes: after send_timeout its
            # connection is closed and everything it held is released.
            await running.server.wait_streams_closed()
            assert running.server.registry.stats().subscribers == 0
            await read_to_eof(sock)  # the socket was closed by the server
            # The run's only stream slot is free again: a healthy client gets 200.
            model.release.set()
            async with client.stream("GET", "/v1/chat/runs/s/stream") as response:
                assert response.status_code == 200
                body = b"".join([chunk async for chunk in response.aiter_bytes()])
            assert b"event: end" in body


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_waves_of_stalled_readers_on_evicted_runs_leave_rss_flat(start_server):
    model = BigFrames()
    running = await start_server(
        model=model,
        registry_config=RegistryConfig(terminal_retention=0.0),
        send_timeout=0.3,
    )
    rss = []
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        for wave in range(5):
            model.release = trio.Event()
            cid = f"wave{wave}"
            response = await client.post(f"/v1/chat/runs/{cid}", json={"prompt": "p"})
            assert response.status_code == 202
            socks = [
                await stalled_reader(running.url, f"/v1/chat/runs/{cid}/stream") for _ in range(6)
            ]
            with trio.fail_after(30):
                await wait_for_streams(running, 6)
                model.release.set()  # the run ends and is evicted at once
                await running.server.wait_streams_closed()
            for sock in socks:
                sock.close()
            assert running.server.registry.get(cid) is None
            # What is retained, not cyclic garbage waiting for the collector
            # (an abandoned write's traceback holds its data until then).
            gc.collect()
            rss.append(rss_bytes())
    # The first wave warms the allocator up; later ones reuse what it freed.
    # (Stalled streams that were never released grew RSS by ~45 MiB a wave.)
    assert max(rss[1:]) - rss[1] < 20 * 2**20, [r // 2**20 for r in rss]


def test_connections_patch_is_installed_and_scoped():
    config = hypercorn_config(ServerSettings(send_timeout=7.0, backlog=123))
    import hypercorn.trio.run

    assert vars(hypercorn.trio.run)["TCPServer"] is connections.DeadlineTCPServer
    assert config.write_deadlines is not None
    assert config.write_deadlines.send_timeout == 7.0
    assert config.backlog == 123
    assert config.websocket_max_message_size == WEBSOCKET_MAX_MESSAGE_BYTES
    connections.install()  # idempotent


async def test_websocket_client_messages_are_capped(start_server):
    running = await start_server(model=BigFrames(frames=1), max_subscribers_per_run=1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        assert (await client.post("/v1/chat/runs/w", json={"prompt": "p"})).status_code == 202
    sock = await stalled_reader(running.url, "/v1/chat/runs/w/ws", websocket=True)
    with sock, trio.fail_after(20):
        await wait_for_streams(running, 1)
        # One masked binary frame, FIN set, 64-bit length: four times the cap.
        size = WEBSOCKET_MAX_MESSAGE_BYTES * 4
        mask = os.urandom(4)
        await sock.send(bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big") + mask)
        await sock.send(bytes(b ^ mask[i % 4] for i, b in enumerate(b"y" * size)))
        # The server refuses it (close 1009, "message too big") and drops the
        # connection; with hypercorn's default cap (16 MiB) it would buffer the
        # message and keep the connection. (The close frame itself may be lost
        # to the reset that closing with unread data causes, so not asserted.)
        await read_to_eof(sock)
        await running.server.wait_streams_closed()


MODEL = textwrap.dedent(
    """
    import trio

    async def big(run, request):
        for _ in range(160):
            run.push_frame({"type": "token", "text": "x" * 60000})
        await trio.sleep_forever()
    """
)


@pytest.mark.parametrize("second_signal", [False, True], ids=["graceful", "second-signal"])
async def test_shutdown_is_bounded_with_stalled_sse_and_websocket_readers(tmp_path, second_signal):
    (tmp_path / "bigmodel.py").write_text(MODEL)
    graceful = 60 if second_signal else 2
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "trio_chatruns.server", "serve", "--port", "0"),
            *("--graceful-timeout", str(graceful), "--producer", "bigmodel:big"),
        ],
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    socks = []
    try:
        url = None
        buffer = b""
        with trio.fail_after(15):
            while url is None:
                chunk = await process.stderr.receive_some()
                assert chunk, buffer.decode()
                buffer += chunk
                for line in buffer.decode().splitlines():
                    if "serving on " in line:
                        url = line.split("serving on ")[1].split()[0]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.post("/v1/chat/runs/z", json={"prompt": "p"})).status_code == 202
            for websocket in (False, True, False, True):
                path = "/v1/chat/runs/z/" + ("ws" if websocket else "stream")
                socks.append(await stalled_reader(url, path, websocket=websocket))
            with trio.fail_after(15):
                while True:  # every frame pushed, four streams open: their writes are stuck
                    stats = (await client.get("/v1/stats")).json()
                    record = (await client.get("/v1/chat/runs/z")).json()
                    if stats["server"]["open_streams"] == 4 and record["latest_seq"] == 160:
                        break
                    await trio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        if second_signal:
            process.send_signal(signal.SIGINT)  # a distinct signal: never merged with the first
        # graceful: within the graceful timeout (the command's own deadline
        # exits 1 past 1.5 x graceful + 2 s); second signal: long before the
        # 60 s graceful timeout would cut anything.
        with trio.fail_after(10):
            code = await process.wait()
        assert code == 0, (await process.stderr.receive_some()).decode()
    finally:
        for sock in socks:
            sock.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
