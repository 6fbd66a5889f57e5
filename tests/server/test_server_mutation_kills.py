"""Server boundaries pinned after the mutation run (``nox -s mutate``,
docs/testing.md): each test states one documented rule at its edge."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio

from trio_chatruns.server import ServerSettings

from helpers import wait_until


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


class _Waits:
    """A model that pushes one frame and stays active until interrupted."""

    async def __call__(self, run, request):
        run.push_frame({"type": "token", "text": "…"})
        await trio.sleep_forever()


def _cut_records(caplog):
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_chatruns.server"]
    return [message for message in messages if message.startswith("shutdown: cut")]


async def test_step_2_of_a_shutdown_logs_how_many_streams_it_cut(start_server, sse, caplog):
    """``disconnect_streams`` while closing logs ``shutdown: cut N stream(s) still open``
    (docs/server.md, "Logs": step 2 of a shutdown); cutting streams on demand, or
    cutting none, logs nothing."""
    caplog.set_level(logging.INFO, logger="trio_chatruns.server")
    running = await start_server(model=_Waits())
    server = running.server
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).raise_for_status()
        for step in ("on demand", "shutdown"):
            async with client.stream("GET", "/v1/chat/runs/a/stream") as response:
                assert response.status_code == 200
                messages = sse(response)
                with trio.fail_after(10):
                    while (await messages.__anext__()).event != "message":
                        pass  # until the run's first frame: the stream is open
                if step == "shutdown":
                    server.begin_shutdown()  # synchronous: the stream is still open
                assert server.disconnect_streams() == 1
                with trio.fail_after(10):
                    assert [m.event async for m in messages] == []  # cut: no end message
            with trio.fail_after(10):
                await server.wait_streams_closed()
            if step == "on demand":
                assert _cut_records(caplog) == []
        assert _cut_records(caplog) == ["shutdown: cut 1 stream(s) still open"]
        assert server.disconnect_streams() == 0  # closing, nothing open: nothing logged
    assert _cut_records(caplog) == ["shutdown: cut 1 stream(s) still open"]


@pytest.mark.backends
async def test_a_shutdown_records_every_run_it_interrupted_queued_ones_included(
    start_server, backend_name, tmp_path
):
    """``begin_shutdown`` cancels the queued runs and interrupts the active one
    (docs/server.md, "Shutdown", step 1); ``ChatServer.shutdown_runs`` names each
    of them (``shutdown complete: N run(s) interrupted by the shutdown``)."""
    history = {} if backend_name == "redis" else {"db": str(tmp_path / "h.db")}
    running = await start_server(model=_Waits(), **history)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        answers = []
        for policy in ("reject", "enqueue", "enqueue"):
            answer = await client.post("/v1/chat/runs/q", json={"prompt": "p", "if_active": policy})
            assert answer.status_code == 202, answer.text
            answers.append(answer.json())
    assert [answer["status"] for answer in answers] == ["running", "queued", "queued"]
    assert running.server.begin_shutdown() == 3
    assert running.server.shutdown_runs == {answer["run_id"] for answer in answers}


def _shutdown_records(caplog):
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_chatruns.server"]
    return [message for message in messages if message.startswith("shutting down:")]


async def test_the_shutdown_log_names_the_runs_streams_and_bodies_it_cut(start_server, sse, caplog):
    """docs/server.md, "Logs": ``shutting down: interrupted N active run(s):
    <conversation>/<run>, …; M stream(s) open, K request body(ies) cut``; with no
    run to interrupt there is no list."""
    caplog.set_level(logging.INFO, logger="trio_chatruns.server")
    idle = await start_server(model=_Waits())
    assert idle.server.begin_shutdown() == 0
    assert _shutdown_records(caplog) == [
        "shutting down: interrupted 0 active run(s); 0 stream(s) open, 0 request body(ies) cut"
    ]
    caplog.clear()

    running = await start_server(model=_Waits(), body_timeout=30)
    server = running.server
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        run_ids = {}
        for cid in ("a", "b"):
            answer = await client.post(f"/v1/chat/runs/{cid}", json={"prompt": "p"})
            run_ids[cid] = answer.json()["run_id"]
        async with (
            client.stream("GET", "/v1/chat/runs/a/stream") as response,
            await trio.open_tcp_stream(host, int(port)) as upload,
        ):
            messages = sse(response)
            with trio.fail_after(10):
                while (await messages.__anext__()).event != "message":
                    pass  # the stream is open
            await upload.send_all(  # a body still being received: 10 of 100 bytes
                b"POST /v1/chat/runs/c HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
            )
            await wait_until(lambda: server.body_reads == 1)
            assert server.begin_shutdown() == 2
            with trio.fail_after(10):
                assert [m.event async for m in messages][-1] == "end"
                answer = b""
                while not answer.endswith(b"}"):  # the cut body's answer
                    chunk = await upload.receive_some()
                    assert chunk, answer
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "server is shutting down"}
    listed = [f"{cid}/{run_ids[cid]}" for cid in ("a", "b")]
    assert _shutdown_records(caplog) in (
        [
            f"shutting down: interrupted 2 active run(s): {', '.join(order)}; "
            "1 stream(s) open, 1 request body(ies) cut"
        ]
        for order in (listed, listed[::-1])
    )


async def test_a_cursor_naming_a_queued_run_is_answered_not_refused(start_server, tmp_path):
    """``check_cursor``: a ``run_id`` that is a run queued behind the active one is
    that run (the stream waits for it), not "a run that is over" (``204``)."""
    running = await start_server(model=_Waits(), db=str(tmp_path / "h.db"))
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/q", json={"prompt": "p"})).raise_for_status()
        queued = await client.post("/v1/chat/runs/q", json={"prompt": "p", "if_active": "enqueue"})
        run_id = queued.json()["run_id"]
        answer = await client.get(f"/v1/chat/runs/q/events?after=0&run_id={run_id}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["run_id"], answer.json()["status"]) == (run_id, "queued")


@pytest.mark.parametrize("key", ["", "has space", "x" * 513, "clé"])
def test_a_bad_api_key_is_refused_with_its_rule(key):
    """``ServerSettings(api_key=...)``: 1-512 visible ASCII characters (it travels in
    an ``Authorization`` header); anything else is a ``ValueError`` stating the rule."""
    with pytest.raises(ValueError) as caught:
        ServerSettings(api_key=key)
    assert str(caught.value) == "api_key must be 1-512 visible ASCII characters (no spaces)"
