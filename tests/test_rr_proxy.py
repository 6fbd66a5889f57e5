"""The round-robin proxy of the multi-worker tests (tests/rr_proxy.py), on real sockets."""

from __future__ import annotations

import contextlib
import socket
from functools import partial

import trio

from rr_proxy import RoundRobinProxy


async def upstream(nursery: trio.Nursery, handler) -> tuple[str, int]:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return ("127.0.0.1", listeners[0].socket.getsockname()[1])


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, data
        data += chunk
    return data


async def test_each_connection_goes_to_the_next_worker(nursery):
    def named(name: bytes):
        async def handler(stream):
            await stream.send_all(name)

        return handler

    a = await upstream(nursery, named(b"A"))
    b = await upstream(nursery, named(b"B"))
    proxy = RoundRobinProxy([a, b])
    port = await nursery.start(proxy.serve)
    seen = []
    for _ in range(5):
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            seen.append(await receive_exactly(client, 1))
    assert seen == [b"A", b"B", b"A", b"B", b"A"]
    assert proxy.routed == [a, b, a, b, a]


async def test_bytes_stream_through_at_once_and_half_close_passes(nursery):
    go_on = trio.Event()

    async def streaming(stream):
        await stream.send_all(b"data: 1\n\n")
        await go_on.wait()  # the second frame only once the client has the first
        await stream.send_all(b"data: 2\n\n")
        request = b""
        while chunk := await stream.receive_some():  # until the client's EOF
            request += chunk
        await stream.send_all(b"got " + request)

    proxy = RoundRobinProxy([await upstream(nursery, streaming)])
    port = await nursery.start(proxy.serve)
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        assert await receive_exactly(client, 9) == b"data: 1\n\n"
        go_on.set()
        assert await receive_exactly(client, 9) == b"data: 2\n\n"
        await client.send_all(b"hello")
        await client.send_eof()
        assert await receive_exactly(client, 9) == b"got hello"
        assert await client.receive_some() == b""


async def test_cut_all_drops_open_connections(nursery):
    async def silent(stream):
        await trio.sleep_forever()

    proxy = RoundRobinProxy([await upstream(nursery, silent)])
    port = await nursery.start(proxy.serve)
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(b"x")
        with trio.fail_after(10):
            while proxy.open_connections == 0:  # noqa: ASYNC110 - another task's state
                await trio.sleep(0.001)
        assert proxy.cut_all() == 1
        with contextlib.suppress(trio.BrokenResourceError):  # a reset is a drop too
            assert await client.receive_some() == b""


async def test_a_worker_that_is_down_closes_the_connection(nursery):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        down = ("127.0.0.1", sock.getsockname()[1])
    proxy = RoundRobinProxy([down])
    port = await nursery.start(proxy.serve)
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        with contextlib.suppress(trio.BrokenResourceError):
            assert await client.receive_some() == b""
