"""``serve --redis``: workers sharing one real redis-server (never a mock).

Two servers in this process stand for two workers: a run started on one is
streamed, resumed and interrupted through the other; the conversation
history is continued from either; Redis stopped and restarted gives 503s
(not crashes), a producer whose frames cannot be written ends ``failed``,
and the workers serve again once Redis is back. (Two-process tests and the
browser behind a proxy are in the deployment tests.)
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import httpx
import pytest
import trio

from trio_chatruns import open_chat_run_registry
from trio_chatruns.server import ChatServer, ScriptedModel, ServerSettings
from trio_chatruns.server.conversations import open_conversation_history

from helpers import start_serving, wait_until

coredis = pytest.importorskip("coredis")

SLOW = ScriptedModel(tokens_per_second=40.0, reply_tokens=400, pause_tokens=0)


async def read_stream(client, path, *, headers=None, stop_after=None):
    """SSE data lines as JSON, the end message last; stops after ``stop_after`` events."""
    events = []
    end = None
    with trio.CancelScope() as scope:
        async with client.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200, response.status_code
            kind = "message"
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if kind == "end":
                        end = data
                    elif kind == "message":
                        events.append(data)
                        if stop_after is not None and len(events) >= stop_after:
                            scope.cancel()
                elif line == "":
                    kind = "message"
    return events, end


def tokens(events):
    return "".join(e["frame"]["text"] for e in events if e["frame"]["type"] == "token")


async def test_two_workers_share_runs_and_history(start_server, redis_url):
    a = await start_server(redis=redis_url)
    b = await start_server(redis=redis_url)
    async with httpx.AsyncClient(timeout=10) as client:
        started = await client.post(a.url + "/v1/chat/runs/conv", json={"prompt": "hi there"})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        # One active run per conversation across the cluster.
        busy = await client.post(b.url + "/v1/chat/runs/conv", json={"prompt": "again"})
        assert busy.status_code == 409
        # Stream from B, drop, resume on A with Last-Event-ID: no gap, no duplicate.
        first, _ = await read_stream(client, b.url + "/v1/chat/runs/conv/stream", stop_after=5)
        last = f"{run_id}:{first[-1]['seq']}"
        rest, end = await read_stream(
            client, a.url + "/v1/chat/runs/conv/stream", headers={"Last-Event-ID": last}
        )
        seqs = [e["seq"] for e in first + rest]
        assert seqs == list(range(1, len(seqs) + 1))
        assert end["status"] == "completed" and end["reason"] == "completed"
        assert end["latest_seq"] == seqs[-1]
        # The history is in Redis: B shows the turn A ran, once A's hook saved it.
        reply = tokens(first + rest)

        async def saved():
            messages = (await client.get(b.url + "/v1/conversations/conv/messages")).json()
            return messages["messages"]

        # Saved by A's run-end hook: nothing here signals it, so poll the route.
        with trio.fail_after(10):
            messages = await saved()
            while len(messages) < 2 or messages[1]["status"] != "completed":
                await trio.sleep(0.02)
                messages = await saved()
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == "hi there"
        assert messages[1]["content"] == reply
        # B continues the conversation: its model gets turn 2 with A's turn as history.
        second = await client.post(b.url + "/v1/chat/runs/conv", json={"prompt": "more"})
        assert second.status_code == 202
        events, end = await read_stream(client, a.url + "/v1/chat/runs/conv/stream")
        assert "[turn 2," in tokens(events)
        listed = (await client.get(a.url + "/v1/conversations")).json()["conversations"]
        assert [(c["id"], c["title"], c["turns"]) for c in listed] == [("conv", "hi there", 2)]
        # Deleting through either worker forgets it everywhere.
        assert (await client.delete(a.url + "/v1/conversations/conv")).status_code == 204
        assert (await client.get(b.url + "/v1/conversations/conv/messages")).json()[
            "messages"
        ] == []


async def test_interrupt_through_the_other_worker(start_server, redis_url):
    a = await start_server(model=SLOW, redis=redis_url)
    b = await start_server(model=SLOW, redis=redis_url)
    async with httpx.AsyncClient(timeout=10) as client:
        run_id = (await client.post(a.url + "/v1/chat/runs/stop", json={"prompt": "x"})).json()[
            "run_id"
        ]
        await read_stream(client, b.url + "/v1/chat/runs/stop/stream", stop_after=3)
        answer = await client.post(b.url + "/v1/chat/runs/stop/interrupt")
        assert answer.status_code == 200
        assert answer.json() == {"interrupted": True, "run_id": run_id}
        events, end = await read_stream(client, b.url + "/v1/chat/runs/stop/stream")
        assert events[-1]["frame"] == {"type": "interrupted"}
        assert end["status"] == "cancelled" and end["reason"] == "interrupted"
        # The run ran on A: B's stats count no active run of its own.
        stats = (await client.get(b.url + "/v1/stats")).json()
        assert stats["registry"]["active"] == 0


async def test_start_policies_are_passed_to_the_backend(start_server, redis_url):
    a = await start_server(model=SLOW, redis=redis_url)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as client:
        assert (await client.post("/v1/chat/runs/p", json={"prompt": "x"})).status_code == 202
        answer = await client.post("/v1/chat/runs/p", json={"prompt": "y", "if_active": "enqueue"})
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        queued_id = answer.json()["run_id"]
        assert (await client.get("/v1/chat/runs/p")).json()["status"] == "running"
        # "interrupt" cancels the queued run and queues this one behind the interrupted run.
        answer = await client.post(
            "/v1/chat/runs/p", json={"prompt": "z", "if_active": "interrupt"}
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["run_id"] != queued_id


async def test_redis_down_is_503_and_the_workers_recover(start_server, own_redis, caplog):
    caplog.set_level(logging.WARNING)
    a = await start_server(model=SLOW, redis=own_redis.url)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as client:
        (await client.post("/v1/chat/runs/live", json={"prompt": "x"})).raise_for_status()
        await read_stream(client, "/v1/chat/runs/live/stream", stop_after=2)
        own_redis.stop()
        for method, path, body in [
            ("POST", "/v1/chat/runs/other", {"prompt": "y"}),
            ("GET", "/v1/chat/runs/live", None),
            ("GET", "/v1/chat/runs/live/stream", None),
            ("GET", "/v1/chat/runs/live/events", None),
            ("GET", "/v1/conversations", None),
        ]:
            answer = await client.request(method, path, json=body)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"].startswith("Redis is unavailable for "), answer.text
        # The worker stays up: /metrics still answers (without the run metrics).
        assert (await client.get("/metrics")).status_code == 200
        # The producer whose frames cannot be written ends failed, saying why.
        await wait_until(lambda: not a.server.backend.active_here())
        assert any("could not be written to Redis" in r.getMessage() for r in caplog.records)
        own_redis.start()
        # Back: the worker serves again without a restart (the old run was lost
        # with the Redis that had no persistence).
        with trio.fail_after(20):
            while True:
                answer = await client.post("/v1/chat/runs/again", json={"prompt": "z"})
                if answer.status_code == 202:
                    break
                assert answer.status_code == 503, answer.text
                await trio.sleep(0.05)
        events, _ = await read_stream(client, "/v1/chat/runs/again/stream", stop_after=3)
        assert [e["seq"] for e in events] == [1, 2, 3]
        await client.post("/v1/chat/runs/again/interrupt")


async def test_a_history_without_its_hook_is_refused_at_construction():
    async with (
        open_conversation_history(":memory:") as history,
        open_chat_run_registry() as registry,
    ):
        with pytest.raises(ValueError, match=r"on_run_end=history\.on_run_end"):
            ChatServer(registry, ScriptedModel(), ServerSettings(), history=history)
    async with (
        open_conversation_history(":memory:") as history,
        open_chat_run_registry(on_run_end=history.on_run_end) as registry,
    ):
        server = ChatServer(registry, ScriptedModel(), ServerSettings(), history=history)
        assert server.backend.name == "memory"


def test_redis_option_without_coredis_names_the_extra():
    code = (
        "import sys; sys.modules['coredis'] = None\n"
        "from trio_chatruns.server.cli import main\n"
        "sys.exit(main(['serve', '--redis', 'redis://127.0.0.1:1/0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "[redis] extra" in done.stderr and "pip install" in done.stderr


def test_redis_unreachable_at_start_is_one_error_line():
    env_code = (
        "import sys\n"
        "from trio_chatruns.server.cli import main\n"
        "sys.exit(main(['serve', '--port', '0', '--redis', 'redis://127.0.0.1:1/0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", env_code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("trio-chatruns: error: cannot reach Redis at redis://127.0.0.1:1/0")


def test_bad_redis_url_is_refused():
    with pytest.raises(ValueError, match="redis://"):
        ServerSettings(redis="localhost:6379")


async def test_a_reply_cut_by_a_shutdown_is_saved_in_redis(start_server, redis_url):
    async with trio.open_nursery() as nursery:
        a, done = await start_serving(
            nursery, SLOW, ServerSettings(port=0, redis=redis_url, graceful_timeout=2.0)
        )
        async with httpx.AsyncClient(timeout=10) as client:
            started = await client.post(a.url + "/v1/chat/runs/cut", json={"prompt": "long"})
            run_id = started.json()["run_id"]
            await read_stream(client, a.url + "/v1/chat/runs/cut/stream", stop_after=3)
            a.shutdown()
            with trio.fail_after(20):
                await done.wait()
            # The worker is gone; another one reads the saved, cut reply.
            b = await start_server(redis=redis_url)
            messages = (await client.get(b.url + "/v1/conversations/cut/messages")).json()
    reply = messages["messages"][1]
    assert reply["run_id"] == run_id
    assert reply["status"] == "cancelled"
    assert reply["error"] == "interrupted by a server shutdown"
    assert reply["content"]


async def test_a_reply_never_saved_is_stored_as_lost_once(start_server, redis_url, monkeypatch):
    from trio_chatruns.server import conversations

    monkeypatch.setattr(conversations, "REPLY_WAIT", 0.3)
    a = await start_server(redis=redis_url)
    # A turn whose worker died before its reply was saved (and Redis had no
    # run left to reap): only its prompt is stored.
    async with coredis.Redis.from_url(redis_url) as client:
        from trio_chatruns.server.redis_history import RedisConversationStore

        store = RedisConversationStore(client, "trio_chatruns", "test")
        await store.add_turn("orphan", "0" * 32, 0, "never answered", 1.0)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        assert (await http.post("/v1/chat/runs/orphan", json={"prompt": "p"})).status_code == 202
        events, end = await read_stream(http, "/v1/chat/runs/orphan/stream")
        assert end["status"] == "completed"
        assert "[turn 2," in tokens(events)  # the model saw the earlier turn
        messages = (await http.get("/v1/conversations/orphan/messages")).json()["messages"]
    assert messages[1]["status"] == "lost"
    assert messages[1]["error"] == "the server stopped before this reply was saved"
