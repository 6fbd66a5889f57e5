"""Honest answers: /events like the stream, one gap per resume, ISO times,
the reason a stream ends, and a model that raises KeyboardInterrupt."""

from __future__ import annotations

import datetime
import json
import logging

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_client_stream

from trio_chatruns import ChatRunStatus, RegistryConfig
from trio_chatruns.server.failures import ModelFailure
from trio_chatruns.server.wallclock import iso_from_trio, iso_from_unix

# -- helpers --------------------------------------------------------------------


class Waits:
    """Pushes one frame, then stays active until interrupted."""

    async def __call__(self, run, request):
        run.push_frame({"type": "token", "text": "…"})
        await trio.sleep_forever()


async def finished(client, registry, conversation_id, prompt="p"):
    """Start a run and wait until it is over; return its run id."""
    response = await client.post(f"/v1/chat/runs/{conversation_id}", json={"prompt": prompt})
    assert response.status_code == 202, response.text
    with trio.fail_after(10):
        async with registry.subscribe(conversation_id) as subscription:
            async for _ in subscription:
                pass
    return response.json()["run_id"]


async def sse_messages(client, sse, path, **kwargs):
    async with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200, response.status_code
        return [m async for m in sse(response)]


async def ws_messages(url):
    """Every message of a WebSocket stream and its close (code, reason)."""
    rest = url.removeprefix("http://")
    hostport, _, resource = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    messages = []
    async with (
        await trio.open_tcp_stream(host, int(port)) as stream,
        trio.open_nursery() as nursery,
    ):
        ws = await wrap_client_stream(nursery, stream, host, "/" + resource)
        try:
            while True:
                messages.append(json.loads(await ws.get_message()))
        except ConnectionClosed as closed:
            code = (closed.reason.code, closed.reason.reason)
        nursery.cancel_scope.cancel()
    return messages, code


async def until(predicate):
    """Wait until ``predicate()`` holds: for counters that have no event to wait on."""
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - a counter, no event
            await trio.sleep(0.005)


def parse_iso(text):
    assert text.endswith("Z"), text
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.tzinfo is not None and moment.utcoffset() == datetime.timedelta(0)
    return moment


# -- GET .../events answers as the stream does ----------------------------------


async def test_events_route_has_the_stream_answers_for_every_cursor(start_server):
    running = await start_server(registry_config=RegistryConfig(max_events_per_run=10))
    registry = running.server.registry
    async with httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.get("/v1/chat/runs/none/events")).status_code == 404
        run_id = await finished(client, registry, "ev")
        latest = registry.get("ev").latest_seq
        assert latest > 20

        page = (await client.get("/v1/chat/runs/ev/events", params={"after": latest - 3})).json()
        assert set(page) == {"run_id", "status", "latest_seq", "events", "gap"}
        assert page["run_id"] == run_id
        assert page["latest_seq"] == latest
        assert page["gap"] is None
        assert [e["seq"] for e in page["events"]] == [latest - 2, latest - 1, latest]

        # A trimmed cursor: the gap, then what is buffered.
        page = (await client.get("/v1/chat/runs/ev/events", params={"after": 3})).json()
        assert page["gap"] == {"from": 4, "to": latest - 10}
        assert [e["seq"] for e in page["events"]] == list(range(latest - 9, latest + 1))

        # The same cursors answer alike on both routes.
        cursors = [
            ({"run_id": run_id, "after": latest}, 204),  # over and fully delivered
            ({"run_id": "some-older-run"}, 204),  # not the current run: over
            ({"after": latest + 1}, 400),  # past latest_seq
            ({"after": "-1"}, 400),
            ({"run_id": "bad id!"}, 400),
            ({"run_id": run_id}, 200),
        ]
        for params, status in cursors:
            events = await client.get("/v1/chat/runs/ev/events", params=params)
            stream = await client.get("/v1/chat/runs/ev/stream", params=params)
            assert events.status_code == stream.status_code == status, params
        header = {"Last-Event-ID": f"{run_id}:{latest}"}
        assert (await client.get("/v1/chat/runs/ev/events", headers=header)).status_code == 204

        # A newer run: a cursor of the old one is over, the new one answers.
        new_run = await finished(client, registry, "ev", prompt="again")
        old = await client.get("/v1/chat/runs/ev/events", params={"run_id": run_id, "after": 1})
        assert old.status_code == 204
        new = await client.get("/v1/chat/runs/ev/events", params={"run_id": new_run})
        assert new.json()["run_id"] == new_run


async def test_events_of_an_active_run_at_its_end_is_an_empty_page(start_server):
    running = await start_server(model=Waits())
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/a", json={"prompt": "p"})).json()["run_id"]
        await until(lambda: running.server.registry.get("a").latest_seq >= 1)
        page = await client.get("/v1/chat/runs/a/events", params={"run_id": run_id, "after": 1})
        assert page.status_code == 200
        assert page.json()["events"] == [] and page.json()["gap"] is None


# -- one gap per resume ---------------------------------------------------------


class Firehose:
    """Pushes ``total`` frames in bursts of 25, yielding between bursts: the buffer
    of 5 frames is trimmed over and over while a client resumes."""

    def __init__(self, started: trio.Event, total: int = 3000) -> None:
        self.started = started
        self.total = total

    async def __call__(self, run, request):
        run.push_frame({"type": "token", "text": "0"})
        await self.started.wait()
        for n in range(1, self.total):
            run.push_frame({"type": "token", "text": str(n)})
            if n % 25 == 0:
                await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_resume_from_a_trimmed_cursor_gets_one_gap(start_server, sse, transport):
    go = trio.Event()
    running = await start_server(
        model=Firehose(go),
        registry_config=RegistryConfig(max_events_per_run=5, subscriber_buffer=10_000),
    )
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
        run_id = (await client.post("/v1/chat/runs/fh", json={"prompt": "p"})).json()["run_id"]
        await until(lambda: running.server.registry.get("fh").latest_seq >= 1)
        go.set()
        await until(lambda: running.server.registry.get("fh").latest_seq >= 100)
        # Resume from seq 1 while the run keeps producing and trimming.
        if transport == "sse":
            messages = await sse_messages(
                client, sse, "/v1/chat/runs/fh/stream", params={"run_id": run_id, "after": 1}
            )
            gaps = [m.json() for m in messages if m.event == "gap"]
            seqs = [m.json()["seq"] for m in messages if m.event == "message"]
        else:
            url = f"{running.url}/v1/chat/runs/fh/ws?run_id={run_id}&after=1"
            found, _ = await ws_messages(url)
            gaps = [m for m in found if m["type"] == "gap"]
            seqs = [m["seq"] for m in found if m["type"] == "event"]
    assert len(gaps) == 1, gaps
    assert gaps[0]["from"] == 2
    assert seqs[0] == gaps[0]["to"] + 1
    assert seqs == list(range(seqs[0], 3001)), "after the gap: every frame, in order"


# -- ISO 8601 UTC times -----------------------------------------------------------


async def test_every_time_is_iso_8601_utc_wall_clock(start_server, sse):
    running = await start_server()
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    async with httpx.AsyncClient(base_url=running.url) as client:
        await finished(client, running.server.registry, "t")
        after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        record = (await client.get("/v1/chat/runs/t")).json()
        listed = (await client.get("/v1/chat/runs")).json()["runs"][0]
        events = (await client.get("/v1/chat/runs/t/events")).json()["events"]
        streamed = await sse_messages(client, sse, "/v1/chat/runs/t/stream")
    ws, _ = await ws_messages(f"{running.url}/v1/chat/runs/t/ws")
    assert listed == record
    times = [parse_iso(record[k]) for k in ("started_at", "updated_at", "terminated_at")]
    assert before <= times[0] <= times[1] <= times[2] <= after
    stamps = [parse_iso(e["timestamp"]) for e in events]
    assert all(before <= s <= after for s in stamps)
    assert stamps == sorted(stamps)
    assert [m.json()["timestamp"] for m in streamed if m.event == "message"] == [
        e["timestamp"] for e in events
    ]
    assert streamed[-1].json()["terminated_at"] == record["terminated_at"]
    assert ws[-1]["record"]["terminated_at"] == record["terminated_at"]
    assert ws[0]["timestamp"] == events[0]["timestamp"]


def test_wall_clock_conversion_uses_one_anchor_per_run():
    async def main():
        clock_now = trio.current_time()
        first = iso_from_trio(clock_now)
        await trio.sleep(5)  # the mock clock jumps; the anchor stays
        assert iso_from_trio(clock_now) == first
        later = parse_iso(iso_from_trio(trio.current_time())) - parse_iso(first)
        assert later == datetime.timedelta(seconds=5)
        assert abs(parse_iso(first).timestamp() - datetime.datetime.now().timestamp()) < 60

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert iso_from_unix(0) == "1970-01-01T00:00:00.000Z"
    assert iso_from_unix(1.2345) == "1970-01-01T00:00:01.234Z"


# -- why a stream ends --------------------------------------------------------------


async def test_an_interrupt_and_a_finished_run_say_so(start_server, sse):
    running = await start_server(model=Waits())
    async with httpx.AsyncClient(base_url=running.url) as client:
        await client.post("/v1/chat/runs/i", json={"prompt": "p"})
        async with trio.open_nursery() as nursery:
            got = {}

            async def read_sse():
                got["sse"] = await sse_messages(client, sse, "/v1/chat/runs/i/stream")

            async def read_ws():
                got["ws"] = await ws_messages(f"{running.url}/v1/chat/runs/i/ws")

            nursery.start_soon(read_sse)
            nursery.start_soon(read_ws)
            await until(lambda: running.server.stats().open_streams >= 2)
            assert (await client.post("/v1/chat/runs/i/interrupt")).status_code == 200
    end = got["sse"][-1]
    assert end.event == "end"
    assert end.json()["reason"] == "interrupted"
    assert end.json()["status"] == "cancelled"
    messages, (code, _) = got["ws"]
    assert messages[-1]["reason"] == "interrupted"
    assert code == 1000


async def test_streams_cut_by_a_shutdown_close_going_away(start_server):
    release = trio.Event()

    async def stubborn(run, request):
        run.push_frame({"type": "token", "text": "x"})
        with trio.CancelScope(shield=True):
            await release.wait()

    running = await start_server(model=stubborn)
    async with httpx.AsyncClient(base_url=running.url) as client:
        await client.post("/v1/chat/runs/s", json={"prompt": "p"})
    async with trio.open_nursery() as nursery:
        got = {}

        async def read_ws():
            got["ws"] = await ws_messages(f"{running.url}/v1/chat/runs/s/ws")

        nursery.start_soon(read_ws)
        await until(lambda: running.server.stats().open_streams >= 1)
        running.server.begin_shutdown()  # the run cannot end: it shields itself
        assert running.server.disconnect_streams() == 1
    release.set()
    _, (code, reason) = got["ws"]
    assert code == 1001
    assert reason == "server shutting down"


# -- failures: what clients see, what the log gets ------------------------------------


async def test_a_model_failure_message_and_expose_errors(start_server):
    async def leaky(run, request):
        if request.prompt == "chosen":
            raise ModelFailure("the search backend is down", kind="model")
        raise RuntimeError("password=hunter2 in /etc/secret")

    for expose, wanted in [
        (False, "the chat model failed"),
        (True, "RuntimeError: password=hunter2 in /etc/secret"),
    ]:
        running = await start_server(model=leaky, expose_errors=expose)
        async with httpx.AsyncClient(base_url=running.url) as client:
            await finished(client, running.server.registry, "x")
            frames = (await client.get("/v1/chat/runs/x/events")).json()["events"]
            assert frames[-1]["frame"] == {
                "type": "error",
                "error_type": "RuntimeError",
                "message": wanted,
            }
            await finished(client, running.server.registry, "x", prompt="chosen")
            record = (await client.get("/v1/chat/runs/x")).json()
            assert record["last_error"] == "ModelFailure: the search backend is down"
        running.shutdown()


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
async def test_a_model_raising_keyboard_interrupt_shuts_down_gracefully(
    nursery, start_server, sse, caplog, fatal
):
    async def model(run, request):
        run.push_frame({"type": "token", "text": "a"})
        if request.prompt == "boom":
            raise fatal
        await trio.sleep_forever()

    running = await start_server(model=model)
    got = {}
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        await client.post("/v1/chat/runs/other", json={"prompt": "p"})
        async with trio.open_nursery() as readers:

            async def read_sse():
                got["sse"] = await sse_messages(client, sse, "/v1/chat/runs/other/stream")

            async def read_ws():
                got["ws"] = await ws_messages(f"{running.url}/v1/chat/runs/other/ws")

            readers.start_soon(read_sse)
            readers.start_soon(read_ws)
            await until(lambda: running.server.stats().open_streams >= 2)
            await client.post("/v1/chat/runs/boom", json={"prompt": "boom"})
    # Every other stream got its end, saying why.
    assert got["sse"][-1].event == "end"
    assert got["sse"][-1].json()["reason"] == "shutdown"
    messages, (code, _) = got["ws"]
    assert messages[-1]["reason"] == "shutdown" and code == 1001
    with trio.fail_after(10):
        await running.wait_shutdown_requested()
    boom = running.server.registry.get("boom")
    assert boom.status is ChatRunStatus.FAILED
    assert boom.last_error.startswith(f"{fatal.__name__}: ")
    assert any(
        r.levelno == logging.ERROR and fatal.__name__ in r.getMessage() for r in caplog.records
    )
