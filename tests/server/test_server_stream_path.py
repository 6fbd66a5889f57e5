"""The SSE streaming path past the middleware: what a client and the operator see.

Body chunks of a stream skip the middleware layers that only touch the
response start (``accesslog.BODY_SEND``) and a run's last frames go out with
its ``end`` in one write; these tests hold the visible behaviour: every
byte is counted in the access log, the security headers are on the stream,
and the body is the documented sequence of messages, ending after ``end``.
"""

from __future__ import annotations

import logging
import re

import httpx
import trio

from trio_chatruns.server.security_headers import CONTENT_SECURITY_POLICY


def access_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "trio_chatruns.access"]


async def test_a_live_stream_is_counted_whole_and_carries_the_headers(start_server, caplog):
    caplog.set_level(logging.INFO)
    running = await start_server()
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        started = await client.post("/v1/chat/runs/live", json={"prompt": "p"})
        assert started.status_code == 202
        async with client.stream("GET", "/v1/chat/runs/live/stream") as stream:
            headers = stream.headers
            body = await stream.aread()
    record = running.server.registry.get("live")
    assert record is not None and record.status.is_terminal
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    # Every frame once, in order, then end as the last message.
    text = body.decode()
    ids = re.findall(r"^id: (\S+)$", text, flags=re.MULTILINE)
    run_id = record.run_id
    assert ids == [f"{run_id}:{seq}" for seq in range(1, record.latest_seq + 1)] + [
        f"{run_id}:{record.latest_seq}"
    ]
    assert text.startswith("retry: ")
    assert text.endswith("\n\n") and text.rpartition("event: ")[2].startswith("end\n")
    # The access line counts every byte of the body, the chunks that skip the
    # inner middleware included.
    with trio.fail_after(10):
        while not any("/live/stream" in x for x in access_lines(caplog)):  # noqa: ASYNC110 - a log record, no event
            await trio.sleep(0.01)
    line = f'"GET /v1/chat/runs/live/stream" 200 {len(body)} B'
    assert any(line in x for x in access_lines(caplog)), (len(body), access_lines(caplog))
