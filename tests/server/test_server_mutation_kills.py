"""Server boundaries pinned after the mutation run (``nox -s mutate``,
docs/testing.md): each test states one documented rule at its edge."""

from __future__ import annotations

import json

import trio


async def test_a_content_length_too_long_to_be_a_size_is_a_400_naming_it(start_server):
    """``_read_body``: a ``Content-Length`` of more than 18 digits (here 19) is a ``400``
    ("invalid Content-Length"), answered before any body byte is read."""
    running = await start_server(max_body_bytes=64, body_timeout=30)
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(
            b"POST /v1/chat/runs/big HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000000000000\r\n\r\n"
        )
        answer = b""
        with trio.fail_after(10):
            while b"}" not in answer:
                chunk = await stream.receive_some()
                assert chunk, answer
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body) == {"error": "invalid Content-Length"}
