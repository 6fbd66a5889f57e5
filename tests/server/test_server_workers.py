"""Two ``trio-chatruns serve --redis`` worker processes on one real Redis.

What a deployment behind a load balancer relies on (docs/deploy.md): a run
started on worker A streams from worker B; a client that drops resumes on
whichever worker it lands on with ``Last-Event-ID``, with nothing missing or
doubled; an interrupt sent to B stops A's run; a SIGKILLed owner's run ends
``failed`` once its lease lapses and the conversation starts again through
B; Redis restarted mid-run gets 503s while it is down and the workers carry
on after; a worker stopped (a rolling restart) while it streams another's
run cuts that stream without an ``end``, and the client resumes elsewhere.
Real processes, real sockets, one real ``redis-server``
(tests/redis_server.py); the scripted model, so every reply is known. Every
request carries the API key, as a client of a deployment does. Skipped,
loudly, only when no ``redis-server`` is installed (the ``own_redis`` fixture).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio
from httpx_sse import aconnect_sse

from redis_server import RedisServer
from trio_chatruns.server.producers import scripted_reply

from helpers import ServeProcess, serve_processes

API_KEY = "workers-" + os.urandom(12).hex()
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
REPLY_TOKENS = 90  # the scripted model's default (the CLI sets only its rate)
LEASE = "2"  # seconds (--redis-lease): a killed owner's runs end soon after


def workers(redis: RedisServer, tmp_path, *args: str, count: int = 2):
    """``count`` workers on ``redis``, with the API key, in ``tmp_path``."""
    return serve_processes(
        count,
        "--redis",
        redis.url,
        "--redis-lease",
        LEASE,
        "--sse-retry-ms",
        "100",
        "--graceful-timeout",
        "1",
        *args,
        cwd=tmp_path,
        env={"TRIO_CHATRUNS_API_KEY": API_KEY},
    )


def client(worker: ServeProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=worker.url, headers=HEADERS, timeout=10)


@attrs.define
class Stream:
    """What one client read of a run across its connections."""

    seqs: list[int] = attrs.Factory(list)
    frames: list[dict[str, Any]] = attrs.Factory(list)
    last_event_id: str | None = None
    end: dict[str, Any] | None = None
    connections: int = 0
    lagged: int = 0
    on_frame: Callable[[], None] | None = None

    @property
    def text(self) -> str:
        return "".join(f["text"] for f in self.frames if f["type"] == "token")


async def read(http: httpx.AsyncClient, cid: str, into: Stream, frames: int | None = None) -> int:
    """One SSE connection from ``into``'s cursor: read into ``into`` until the
    run's ``end``, a ``lagged`` (the server asks for a reconnect) or, if
    ``frames`` is given, that many more frames (then drop it). Returns the
    status: 200, or 204 (nothing more to send) or 503 (Redis is down)."""
    headers = {} if into.last_event_id is None else {"Last-Event-ID": into.last_event_id}
    into.connections += 1
    with trio.fail_after(30), trio.CancelScope() as connection:
        path = f"/v1/chat/runs/{cid}/stream"
        async with aconnect_sse(http, "GET", path, headers=headers) as source:
            status = source.response.status_code
            assert status in (200, 204, 503), (status, await source.response.aread())
            if status != 200:
                await source.response.aread()
                return status
            got = 0
            # Stop reading with cancel(), not break: httpx's generators end in this task.
            async for message in source.aiter_sse():
                if message.event in ("end", "lagged"):
                    if message.event == "end":
                        into.end = message.json()
                    else:
                        into.lagged += 1
                    connection.cancel()
                    continue
                assert message.event == "message", (message.event, message.data)
                event = message.json()
                into.seqs.append(event["seq"])
                into.frames.append(event["frame"])
                into.last_event_id = message.id
                if into.on_frame is not None:
                    into.on_frame()
                got += 1
                if frames is not None and got >= frames:
                    connection.cancel()  # a drop, mid-run
    return 200


async def follow(http: httpx.AsyncClient, cid: str, into: Stream) -> int:
    """Read as a client does: reconnect from the cursor after a drop (a
    ``lagged``, a 503 while Redis is down) until the end, or a 204."""
    with trio.fail_after(30):
        while True:
            status = await read(http, cid, into)
            if into.end is not None or status == 204:
                return status
            if status == 503:
                await trio.sleep(0.05)  # a client's retry delay (SSE ``retry:``)


async def read_to_end(http: httpx.AsyncClient, cid: str, into: Stream) -> dict[str, Any]:
    """Resume ``into`` until the run's end; the run's final record. (A resume
    right after the last frame, the run over, gets 204 and no ``end``.)"""
    await follow(http, cid, into)
    record: dict[str, Any] = (await http.get(f"/v1/chat/runs/{cid}")).json()
    assert record["latest_seq"] == into.seqs[-1]
    if into.end is not None:
        assert into.end["run_id"] == record["run_id"]
        assert into.end["status"] == record["status"]
    return record


async def start_when_available(http: httpx.AsyncClient, cid: str, prompt: str) -> str:
    """:func:`start`, retrying while the worker answers 503 (Redis coming back)."""
    path = f"/v1/chat/runs/{cid}"
    with trio.fail_after(20):
        while (response := await http.post(path, json={"prompt": prompt})).status_code == 503:  # noqa: ASYNC110
            await trio.sleep(0.05)  # a client's pause before retrying (Retry-After)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def start(http: httpx.AsyncClient, cid: str, prompt: str) -> str:
    response = await http.post(f"/v1/chat/runs/{cid}", json={"prompt": prompt})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def poll(http: httpx.AsyncClient, path: str, done) -> Any:
    """GET ``path`` until ``done(response)``: another process's state, nothing to wait on."""
    with trio.fail_after(20):
        while not done(response := await http.get(path)):  # noqa: ASYNC110
            await trio.sleep(0.02)
    return response


async def test_any_worker_serves_any_run_and_a_killed_owner_fails_within_its_lease(
    own_redis, tmp_path
):
    async with (
        workers(own_redis, tmp_path, "--tokens-per-second", "100") as (a, b),
        client(a) as on_a,
        client(b) as on_b,
    ):
        # 1. Started on A, read from B first, dropped every 12 frames and
        # resumed on the other worker with Last-Event-ID.
        prompt = "tell me about worker processes"
        run_id = await start(on_a, "c1", prompt)
        stream = Stream()
        for http in itertools.cycle([on_b, on_a]):
            # 204: a drop came right after the last frame, and the run is over.
            if await read(http, "c1", stream, frames=12) == 204 or stream.end is not None:
                break
        assert stream.connections >= 4  # B, A, B, A at least: the reply has > 90 frames
        assert stream.seqs == list(range(1, len(stream.seqs) + 1))  # no gap, no duplicate
        assert stream.text == "".join(scripted_reply(prompt, REPLY_TOKENS))
        assert stream.frames[-1] == {"type": "done", "finish_reason": "stop"}
        record = (await on_a.get("/v1/chat/runs/c1")).json()
        assert (record["run_id"], record["status"]) == (run_id, "completed")
        assert record["latest_seq"] == stream.seqs[-1]
        if stream.end is not None:
            assert (stream.end["reason"], stream.end["run_id"]) == ("completed", run_id)
        # A resume after the end gets 204 on either worker.
        for http in (on_a, on_b):
            after = await http.get(
                "/v1/chat/runs/c1/stream", headers={"Last-Event-ID": stream.last_event_id}
            )
            assert after.status_code == 204
        # The history is shared too: B lists the reply A's run saved.
        saved = await poll(
            on_b,
            "/v1/conversations/c1/messages",
            lambda r: [m["status"] for m in r.json()["messages"]] == ["sent", "completed"],
        )
        assert saved.json()["messages"][1]["content"] == stream.text

        # 2. Interrupt through B a run A owns: it ends `cancelled`, `interrupted`.
        second = await start(on_a, "c2", "a reply to stop")
        seen = Stream()
        await read(on_b, "c2", seen, frames=3)
        response = await on_b.post("/v1/chat/runs/c2/interrupt")
        assert response.status_code == 200, response.text
        assert response.json() == {"interrupted": True, "run_id": second}
        await read(on_a, "c2", seen)
        assert seen.frames[-1] == {"type": "interrupted"}
        assert seen.end["reason"] == "interrupted"
        assert seen.end["status"] == "cancelled"
        assert seen.seqs == list(range(1, len(seen.seqs) + 1))
        for http in (on_a, on_b):
            record = (await http.get("/v1/chat/runs/c2")).json()
            assert (record["run_id"], record["status"]) == (second, "cancelled")

        # 3. One active run per conversation across workers: B refuses (409).
        prompt = "the owner dies"
        doomed = await start(on_a, "k", prompt)
        assert (await on_b.post("/v1/chat/runs/k", json={"prompt": "x"})).status_code == 409

        # 4. A is SIGKILLed mid-run (no shutdown, no last write: its lease just
        # stops being renewed); the stream on B ends `failed` once it lapses.
        stream = Stream()
        await read(on_b, "k", stream, frames=4)
        await a.kill()
        record = await read_to_end(on_b, "k", stream)
        assert (record["run_id"], record["status"]) == (doomed, "failed")
        assert "lease" in record["last_error"]
        assert stream.end is None or stream.end["reason"] == "failed"
        assert stream.seqs == list(range(1, len(stream.seqs) + 1))
        assert stream.text == "".join(scripted_reply(prompt, REPLY_TOKENS))[: len(stream.text)]
        # The conversation starts again, through B, and that run completes.
        prompt = "again, on B"
        again_id = await start(on_b, "k", prompt)
        again = Stream()
        await read(on_b, "k", again)
        assert again.end["reason"] == "completed"
        assert again.end["run_id"] == again_id
        assert again.text == "".join(scripted_reply(prompt, REPLY_TOKENS, turn=2, history=2))
        assert await b.stop() == 0
        assert "Traceback" not in b.text


async def test_redis_restarted_mid_run_then_a_rolling_restart(own_redis, tmp_path):
    async with (
        workers(own_redis, tmp_path, "--tokens-per-second", "100") as (a, b),
        client(a) as on_a,
        client(b) as on_b,
    ):
        await start(on_a, "r1", "redis goes away")
        stream = Stream()
        await read(on_b, "r1", stream, frames=3)  # under way, and followed on B
        async with trio.open_nursery() as nursery:
            ended = trio.Event()

            async def client_of_r1():
                await follow(on_b, "r1", stream)  # reconnects across the restart
                ended.set()

            nursery.start_soon(client_of_r1)
            await trio.to_thread.run_sync(own_redis.stop)
            # While Redis is down, what needs it is refused with a clear 503.
            for http in (on_a, on_b):
                refused = await http.post("/v1/chat/runs/r2", json={"prompt": "now?"})
                assert refused.status_code == 503, refused.text
                assert "redis" in refused.json()["error"].lower()
                assert (await http.get("/v1/chat/runs/r1")).status_code == 503
            await trio.to_thread.run_sync(own_redis.start)  # same port, empty (no persistence)
            # The workers reconnect by themselves: a new run starts and completes.
            # (A pooled connection that died with Redis may still answer one
            # request 503; a client retries after Retry-After, as here.)
            prompt = "after the restart"
            run_id = await start_when_available(on_b, "r2", prompt)
            again = Stream()
            await follow(on_a, "r2", again)
            assert again.end["reason"] == "completed"
            assert again.end["run_id"] == run_id
            assert again.text == "".join(scripted_reply(prompt, REPLY_TOKENS))
            with trio.fail_after(20):
                await ended.wait()
        # The run in flight was lost with Redis's data (no persistence): its
        # client was told (an end, or 204 on a reconnect), after the frames it
        # had, none twice; no worker serves it as running any more.
        assert stream.end is None or stream.end["reason"] in ("unavailable", "failed")
        assert stream.seqs == list(range(1, len(stream.seqs) + 1))
        for http in (on_a, on_b):
            lost = await poll(http, "/v1/chat/runs/r1", lambda r: r.status_code != 503)
            assert lost.status_code == 404 or lost.json()["status"] == "failed", lost.text
        # Nobody crashed.
        assert [a.process.returncode, b.process.returncode] == [None, None]

        # A rolling restart: B stops (SIGTERM) while it streams a run A owns.
        # The run goes on: B cuts the stream without an `end`, and the client
        # resumes through A with nothing lost or doubled.
        prompt = "one worker restarts"
        run_id = await start_when_available(on_a, "r3", prompt)
        rolling = Stream(on_frame=b.terminate)  # once B's stream is flowing
        # Read on B until B cuts the stream (a 503 first: a pooled connection that
        # died with Redis; retry, as above).
        while await read(on_b, "r3", rolling) == 503:  # noqa: ASYNC110
            await trio.sleep(0.05)
        assert rolling.end is None  # cut, without an `end`: the run is not over
        assert rolling.seqs  # what B sent before
        assert await b.stop() == 0
        record = await read_to_end(on_a, "r3", rolling)
        assert (record["run_id"], record["status"]) == (run_id, "completed")
        assert rolling.seqs == list(range(1, len(rolling.seqs) + 1))
        assert rolling.text == "".join(scripted_reply(prompt, REPLY_TOKENS))
        assert await a.stop() == 0
        assert "Traceback" not in a.text + b.text
