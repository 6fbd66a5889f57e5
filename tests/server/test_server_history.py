"""Conversation history over HTTP on a real SQLite file, across server restarts.

Servers run in-process (``serve``) or as the ``trio-chatruns`` console script
(for SIGTERM); both on a ``--db`` file under the test's tmp directory.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess

import httpx
import pytest
import trio

from trio_chatruns.server import ScriptedModel, ServerSettings, serve
from trio_chatruns.server.producers import ChatMessage, scripted_reply

from helpers import SCRIPT, serve_process

FAST = ScriptedModel(tokens_per_second=250.0, reply_tokens=30, pause_tokens=2)
SLOW = ScriptedModel(tokens_per_second=40.0, reply_tokens=400, pause_tokens=2)


async def start(nursery, db, model=FAST, **settings):
    """Serve on ``db``; return (running, stopped) where ``stopped`` is set once serve() returns."""
    stopped = trio.Event()
    settings.setdefault("graceful_timeout", 2.0)

    async def run(*, task_status):
        try:
            await serve(
                model,
                ServerSettings(port=0, db=str(db), **settings),
                handle_signals=False,
                task_status=task_status,
            )
        finally:
            stopped.set()

    running = await nursery.start(run)
    return running, stopped


async def stop(running, stopped):
    running.shutdown()
    with trio.fail_after(10):
        await stopped.wait()


async def post(client, cid, prompt, **extra):
    answer = await client.post(f"/v1/chat/runs/{cid}", json={"prompt": prompt, **extra})
    assert answer.status_code == 202, answer.text
    return answer.json()


async def wait_saved(running, client, cid, run_id):
    """Wait until the reply of ``run_id`` is saved; return the conversation's messages."""
    with trio.fail_after(15):
        await running.server.history.wait_saved(run_id)
    messages = (await client.get(f"/v1/conversations/{cid}/messages")).json()["messages"]
    replies = [m for m in messages if m["role"] == "assistant" and m["run_id"] == run_id]
    assert replies and replies[0]["status"] in ("completed", "failed", "cancelled"), messages
    return messages


async def test_turns_reach_the_model_and_survive_a_restart(nursery, tmp_path):
    db = tmp_path / "history.db"
    seen = []

    async def recording(run, request):
        seen.append(request)
        await FAST(run, request)

    running, stopped = await start(nursery, db, recording)
    prompts = ["first question", "second one", "and a third"]
    async with httpx.AsyncClient(base_url=running.url) as client:
        for prompt in prompts:
            body = await post(client, "c1", prompt)
            assert body["status"] == "running"
            messages = await wait_saved(running, client, "c1", body["run_id"])
    replies = [
        "".join(scripted_reply(p, 30, turn=i + 1, history=2 * i)) for i, p in enumerate(prompts)
    ]
    assert [r.turn for r in seen] == [1, 2, 3]
    assert seen[2].history == (
        ChatMessage("user", prompts[0]),
        ChatMessage("assistant", replies[0]),
        ChatMessage("user", prompts[1]),
        ChatMessage("assistant", replies[1]),
    )
    assert replies[2].startswith("[turn 3, 4 earlier messages, 11 chars] ")
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", prompts[0], "sent"),
        ("assistant", replies[0], "completed"),
        ("user", prompts[1], "sent"),
        ("assistant", replies[1], "completed"),
        ("user", prompts[2], "sent"),
        ("assistant", replies[2], "completed"),
    ]
    assert all(m["created_at"].endswith("Z") for m in messages)
    assert messages[1]["tool_calls"][0]["name"] == "search"
    assert messages[1]["tool_calls"][0]["result"]
    await stop(running, stopped)

    # A new server on the same file has every turn, and continues the conversation.
    running, stopped = await start(nursery, db, recording)
    async with httpx.AsyncClient(base_url=running.url) as client:
        again = (await client.get("/v1/conversations/c1/messages")).json()["messages"]
        assert again == messages
        listed = (await client.get("/v1/conversations")).json()["conversations"]
        assert [(c["id"], c["title"], c["turns"]) for c in listed] == [("c1", prompts[0], 3)]
        body = await post(client, "c1", "fourth")
        await wait_saved(running, client, "c1", body["run_id"])
    assert seen[-1].turn == 4 and len(seen[-1].history) == 6
    await stop(running, stopped)


async def test_delete_interrupts_and_forgets(nursery, tmp_path):
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url) as client:
        done = await post(client, "gone", "one")
        running.server.registry.interrupt("gone")
        await wait_saved(running, client, "gone", done["run_id"])
        active = await post(client, "gone", "two")
        await post(client, "keep", "other")
        answer = await client.delete("/v1/conversations/gone")
        assert answer.status_code == 204
        with trio.fail_after(10):
            await running.server.history.wait_saved(active["run_id"])  # skipped: deleted
        assert not running.server.registry.get("gone").status.is_active
        assert running.server.registry.get("gone").run_id == active["run_id"]
        assert (await client.get("/v1/conversations/gone/messages")).json()["messages"] == []
        ids = [c["id"] for c in (await client.get("/v1/conversations")).json()["conversations"]]
        assert ids == ["keep"]
        assert (await client.delete("/v1/conversations/gone")).status_code == 404
        assert (await client.delete("/v1/conversations/bad%20id")).status_code == 400
        assert (await client.get("/v1/conversations?limit=0")).status_code == 400
        assert (await client.get("/v1/conversations?limit=x")).status_code == 400
    await stop(running, stopped)
    # Nothing came back from the interrupted run's hook after the delete.
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.get("/v1/conversations/gone/messages")).json()["messages"] == []
    await stop(running, stopped)


async def test_shutdown_saves_the_cut_reply(nursery, tmp_path):
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url) as client:
        body = await post(client, "cut", "a long answer please")
        with trio.fail_after(10):
            async with running.server.registry.subscribe("cut") as events:
                async for event in events:
                    if event.seq >= 20:
                        break
    await stop(running, stopped)
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url) as client:
        messages = (await client.get("/v1/conversations/cut/messages")).json()["messages"]
    reply = messages[1]
    assert reply["run_id"] == body["run_id"]
    assert reply["status"] == "cancelled"
    assert reply["error"] == "interrupted by a server shutdown"
    full = "".join(scripted_reply("a long answer please", 400))
    assert len(reply["content"]) > 10 and full.startswith(reply["content"])
    await stop(running, stopped)


async def test_sigterm_mid_reply_then_restart_shows_the_cut_reply(tmp_path):
    """The console script on its default --db: SIGTERM mid-reply, restart, the cut reply."""
    received = ""
    async with serve_process("--tokens-per-second", "40", cwd=tmp_path) as server:
        await server.wait_for_match(r"conversation history in [^\n]*\n")
        assert f"conversation history in {tmp_path / 'trio-chatruns.db'}" in server.text
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = await post(client, "term", "tell me everything")
            with trio.fail_after(10):
                async with client.stream("GET", "/v1/chat/runs/term/stream") as stream:
                    with trio.CancelScope() as reading:
                        async for line in stream.aiter_lines():
                            if '"type":"token"' in line:
                                received += line.split('"text":"')[1].split('"')[0]
                            if len(received) > 40:
                                server.terminate()  # once: stop() below must not send a second
                                reading.cancel()
        assert await server.stop() == 0
    async with serve_process(cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            messages = (await client.get("/v1/conversations/term/messages")).json()["messages"]
        assert await server.stop() == 0
    assert [m["role"] for m in messages] == ["user", "assistant"]
    reply = messages[1]
    assert reply["run_id"] == body["run_id"]
    assert reply["status"] == "cancelled"
    assert reply["content"].startswith(received)
    assert len(reply["content"]) < len("".join(scripted_reply("tell me everything")))


async def test_memory_db_keeps_nothing(nursery, tmp_path):
    running, stopped = await start(nursery, ":memory:")
    assert not running.server.history.store.persistent
    async with httpx.AsyncClient(base_url=running.url) as client:
        body = await post(client, "m", "hi")
        await wait_saved(running, client, "m", body["run_id"])
    await stop(running, stopped)
    assert list(tmp_path.iterdir()) == []


# -- start policies over HTTP ------------------------------------------------------


async def test_enqueue_runs_in_order_and_streams_before_it_starts(nursery, tmp_path):
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        first = await post(client, "q", "first")
        second = await post(client, "q", "second", if_active="enqueue")
        assert second["status"] == "queued"
        # The queued run streams by its run_id before it starts.
        async with client.stream(
            "GET", "/v1/chat/runs/q/stream", params={"run_id": second["run_id"]}
        ) as stream:
            assert stream.status_code == 200
            running.server.registry.interrupt("q")  # end the first: the second starts
            seen = []
            # Leave with a cancel scope, not break: httpx's generators finish in this task.
            with trio.CancelScope() as reading:
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and '"seq"' in line:
                        seen.append(line)
                        if len(seen) == 3:
                            reading.cancel()
        assert all(second["run_id"] in line for line in seen)
        messages = (await client.get("/v1/conversations/q/messages")).json()["messages"]
        assert [m["run_id"] for m in messages if m["role"] == "user"] == [
            first["run_id"],
            second["run_id"],
        ]
        bad = await client.post("/v1/chat/runs/q", json={"prompt": "x", "if_active": "later"})
        assert bad.status_code == 400 and "if_active" in bad.json()["error"]
        assert (await client.post("/v1/chat/runs/q", json={"prompt": "x"})).status_code == 409
    await stop(running, stopped)


async def test_two_clients_enqueue_at_once(nursery, tmp_path):
    running, stopped = await start(nursery, tmp_path / "h.db", FAST)
    answers = []
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=10) as a,
        httpx.AsyncClient(base_url=running.url, timeout=10) as b,
    ):
        await post(a, "both", "zero")
        async with trio.open_nursery() as posting:
            for client, prompt in ((a, "from a"), (b, "from b")):

                async def one(client=client, prompt=prompt):
                    answers.append(
                        (prompt, await post(client, "both", prompt, if_active="enqueue"))
                    )

                posting.start_soon(one)
        assert {body["status"] for _, body in answers} <= {"queued", "running"}
        assert sum(body["status"] == "queued" for _, body in answers) >= 1
        last = answers[-1][1]["run_id"]
        messages = await wait_saved(running, a, "both", last)
    # Every run ran, one at a time, in the order accepted; every reply completed.
    assert [m["status"] for m in messages if m["role"] == "assistant"] == ["completed"] * 3
    order = [m["content"] for m in messages if m["role"] == "user"]
    assert order == ["zero"] + [prompt for prompt, _ in answers]
    await stop(running, stopped)


async def test_two_clients_interrupt_at_once(nursery, tmp_path):
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    answers = []
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=10) as a,
        httpx.AsyncClient(base_url=running.url, timeout=10) as b,
    ):
        first = await post(a, "race", "zero")
        async with trio.open_nursery() as posting:
            for client, prompt in ((a, "from a"), (b, "from b")):

                async def one(client=client, prompt=prompt):
                    answers.append(
                        (prompt, await post(client, "race", prompt, if_active="interrupt"))
                    )

                posting.start_soon(one)
        winner = answers[-1][1]["run_id"]  # the later interrupt cancels the earlier one
        with trio.fail_after(10):
            async with running.server.registry.subscribe("race", run_id=winner) as events:
                async for _ in events:
                    running.server.registry.interrupt("race")  # once it has started
        messages = await wait_saved(running, a, "race", winner)
        messages = await wait_saved(running, a, "race", answers[0][1]["run_id"])
    statuses = {m["run_id"]: m["status"] for m in messages if m["role"] == "assistant"}
    assert statuses[first["run_id"]] == "cancelled"
    assert statuses[answers[0][1]["run_id"]] == "cancelled"  # never ran: interrupted while queued
    assert statuses[winner] == "cancelled"
    assert len(statuses) == 3
    await stop(running, stopped)


async def test_full_queue_is_429(nursery, tmp_path):
    from trio_chatruns import RegistryConfig

    stopped = trio.Event()

    async def run(*, task_status):
        try:
            await serve(
                SLOW,
                ServerSettings(port=0, db=str(tmp_path / "h.db"), graceful_timeout=2.0),
                RegistryConfig(max_queued_per_conversation=1),
                handle_signals=False,
                task_status=task_status,
            )
        finally:
            stopped.set()

    running = await nursery.start(run)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        await post(client, "full", "one")
        await post(client, "full", "two", if_active="enqueue")
        answer = await client.post(
            "/v1/chat/runs/full", json={"prompt": "three", "if_active": "enqueue"}
        )
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        messages = (await client.get("/v1/conversations/full/messages")).json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["one", "two"]
    await stop(running, stopped)


async def test_killed_mid_reply_lists_the_reply_as_lost(tmp_path):
    """SIGKILL saves nothing more: the prompt is kept, its reply is listed as lost."""
    async with serve_process("--tokens-per-second", "20", cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = await post(client, "killed", "never finished")
        await server.kill()
    async with serve_process(cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            messages = (await client.get("/v1/conversations/killed/messages")).json()["messages"]
        assert await server.stop() == 0
    assert [(m["role"], m["status"], m["run_id"]) for m in messages] == [
        ("user", "sent", body["run_id"]),
        ("assistant", "lost", body["run_id"]),
    ]
    assert messages[0]["content"] == "never finished"
    assert "stopped before this reply was saved" in messages[1]["error"]


def test_unusable_db_is_one_error_line_and_status_1(tmp_path):
    if not SCRIPT.exists():
        pytest.skip("the trio-chatruns console script is not installed next to python")
    (tmp_path / "not.db").write_bytes(b"definitely not sqlite" * 200)
    for db in (tmp_path / "missing" / "h.db", tmp_path / "not.db"):
        result = subprocess.run(
            [str(SCRIPT), "serve", "--port", "0", "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": ""},
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("trio-chatruns: error: cannot ")
        assert str(db) in lines[-1]
        assert "Traceback" not in result.stderr


async def test_shutdown_ends_streams_of_queued_runs_and_saves_them(nursery, tmp_path):
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        first = await post(client, "sq", "running one")
        queued = await post(client, "sq", "queued one", if_active="enqueue")
        assert queued["status"] == "queued"
        async with client.stream(
            "GET", "/v1/chat/runs/sq/stream", params={"run_id": queued["run_id"]}
        ) as stream:
            assert stream.status_code == 200
            running.shutdown()
            body = "".join([line async for line in stream.aiter_lines()])
    with trio.fail_after(10):
        await stopped.wait()
    # It ended (a queued run cancelled before it started was never the conversation's
    # current run, so the end carries no record: the history has its outcome).
    assert "event: end" in body
    assert running.server.stats().streams_dropped == 0  # it ended by itself, not cut
    running, stopped = await start(nursery, tmp_path / "h.db", SLOW)
    async with httpx.AsyncClient(base_url=running.url) as client:
        messages = (await client.get("/v1/conversations/sq/messages")).json()["messages"]
    replies = {m["run_id"]: m for m in messages if m["role"] == "assistant"}
    assert replies[first["run_id"]]["status"] == "cancelled"
    assert replies[queued["run_id"]]["status"] == "cancelled"
    assert replies[queued["run_id"]]["content"] == ""
    assert replies[queued["run_id"]]["error"] == "interrupted by a server shutdown"
    await stop(running, stopped)


async def test_a_prompt_the_store_cannot_write_is_503_and_the_run_stops(nursery, tmp_path):
    """A locked database (another writer holds it past the busy timeout) fails the
    prompt's write: the client gets 503 naming it, and the run does not go on
    producing a reply the history would never hold."""
    db = tmp_path / "locked.db"
    running, stopped = await start(nursery, db, model=SLOW)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock, held past busy_timeout
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            answer = await client.post("/v1/chat/runs/locked", json={"prompt": "hi"})
            assert answer.status_code == 503, answer.text
            assert "could not store the prompt" in answer.json()["error"]
            assert "locked" in answer.json()["error"]
            record = (await client.get("/v1/chat/runs/locked")).json()
            assert record["status"] in ("cancelled", "running")  # interrupted, ending
            with trio.fail_after(10):
                while record["status"] != "cancelled":
                    await trio.sleep(0.01)
                    record = (await client.get("/v1/chat/runs/locked")).json()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await stop(running, stopped)
