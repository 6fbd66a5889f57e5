"""The openai_chat producer against a local fake OpenAI-compatible endpoint."""

from __future__ import annotations

import json
from functools import partial

import httpx
import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from trio_chatruns.server import OpenAIChatModel


def chunk(delta=None, finish=None):
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


SCRIPTS = {
    "ok": [
        chunk({"role": "assistant"}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo, "}),
        chunk({"content": "world"}),
        chunk(finish="stop"),
        "[DONE]",
    ],
    "tools": [
        chunk({"content": "Looking. "}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(finish="tool_calls"),
        "[DONE]",
    ],
    "stream-error": [chunk({"content": "par"}), {"error": {"message": "model overloaded"}}],
    "no-done": [chunk({"content": "cut "}), chunk({"content": "short"})],
    "garbage": [chunk({"content": "x"}), "{not json"],
    # Valid JSON of the wrong shape.
    "choices-object": [chunk({"content": "x"}), {"choices": {"0": {}}}],
    "delta-string": [chunk({"content": "x"}), {"choices": [{"delta": "hi"}]}],
    "content-number": [chunk({"content": "x"}), chunk({"content": 5})],
    "index-string": [
        chunk({"content": "x"}),
        chunk({"tool_calls": [{"index": "a", "function": {"name": "f", "arguments": ""}}]}),
    ],
    "arguments-object": [
        chunk({"content": "x"}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {}}}]}),
    ],
    "choice-not-object": [chunk({"content": "x"}), {"choices": ["hi"]}],
    # n > 1: only the choice with index 0 is followed, wherever it is in the list.
    "two-choices": [
        {
            "choices": [
                {"index": 1, "delta": {"content": "NO"}, "finish_reason": None},
                {"index": 0, "delta": {"content": "yes"}, "finish_reason": None},
            ]
        },
        {"choices": [{"index": 1, "delta": {"content": "NO"}, "finish_reason": "stop"}]},
        chunk(finish="stop"),
        "[DONE]",
    ],
}


@pytest.fixture
async def fake_openai(nursery):
    seen = []

    async def completions(request: Request):
        body = await request.json()
        seen.append((dict(request.headers), body))
        model = body["model"]
        if model == "http500":
            return JSONResponse({"error": {"message": "upstream exploded"}}, status_code=500)
        if model == "hang":

            async def silence():
                yield 'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
                await trio.sleep_forever()

            return StreamingResponse(silence(), media_type="text/event-stream")

        async def lines():
            for item in SCRIPTS[model]:
                payload = item if isinstance(item, str) else json.dumps(item)
                yield f"data: {payload}\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    urls = await nursery.start(partial(hypercorn.trio.serve, app, config))
    return urls[0] + "/v1", seen


async def run_to_end(start_server, model, prompt="hi"):
    running = await start_server(model=model)
    async with httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.post("/v1/chat/runs/oa", json={"prompt": prompt})).status_code == 202
        with trio.fail_after(10):
            async with running.server.registry.subscribe("oa") as subscription:
                async for _ in subscription:
                    pass  # the subscription ends when the run does
        record = (await client.get("/v1/chat/runs/oa")).json()
        events = (await client.get("/v1/chat/runs/oa/events")).json()["events"]
    return record, [e["frame"] for e in events]


def text(frames):
    return "".join(f["text"] for f in frames if f["type"] == "token")


async def test_streams_content_and_completes(start_server, fake_openai):
    base_url, seen = fake_openai
    model = OpenAIChatModel(
        base_url=base_url, model="ok", api_key="sk-test", system_prompt="be brief"
    )
    record, frames = await run_to_end(start_server, model, prompt="say hello")
    assert record["status"] == "completed"
    assert text(frames) == "Hello, world"
    assert frames[-1] == {"type": "done", "finish_reason": "stop"}
    headers, body = seen[0]
    assert headers["authorization"] == "Bearer sk-test"
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say hello"},
    ]


async def test_tool_call_deltas_set_and_clear_current_tool(start_server, fake_openai):
    base_url, _ = fake_openai
    record, frames = await run_to_end(
        start_server, OpenAIChatModel(base_url=base_url, model="tools")
    )
    assert record["status"] == "completed"
    assert record["current_tool"] is None
    deltas = [f for f in frames if f["type"] == "tool_call_delta"]
    assert "".join(d["arguments_delta"] for d in deltas) == '{"city": "Paris"}'
    assert {d["name"] for d in deltas} == {"get_weather"}
    calls = [f for f in frames if f["type"] == "tool_call"]
    assert calls == [
        {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    ]
    assert frames[-1] == {"type": "done", "finish_reason": "tool_calls"}


async def test_current_tool_is_visible_while_the_call_streams(start_server):
    """Mid-stream, the record names the tool (checked with a model we can pause)."""
    gate = trio.Event()

    # The parsing step is synchronous, so drive it directly on a real run.
    seen_tool = []

    async def producer_model(run, request):
        calls = {}
        m = OpenAIChatModel(base_url="http://unused", model="x")
        m._handle_chunk(
            run,
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c", "function": {"name": "lookup", "arguments": "{"}}
                    ]
                }
            ),
            calls,
        )
        seen_tool.append(run.record.current_tool)
        m._handle_chunk(run, chunk(finish="tool_calls"), calls)
        seen_tool.append(run.record.current_tool)
        gate.set()

    running = await start_server(model=producer_model)
    async with httpx.AsyncClient(base_url=running.url) as client:
        await client.post("/v1/chat/runs/t", json={"prompt": "p"})
    with trio.fail_after(5):
        await gate.wait()
    assert seen_tool == ["lookup", None]


def host_of(base_url):
    return base_url.removeprefix("http://").split("/")[0]


@pytest.mark.parametrize(
    ("name", "message", "partial_text"),
    [
        ("http500", "answered HTTP 500: upstream exploded", ""),
        ("stream-error", "reported an error: model overloaded", "par"),
        ("no-done", "closed the stream before [DONE]", "cut short"),
        ("garbage", "sent a malformed chunk (not JSON): '{not json'", "x"),
    ],
)
async def test_endpoint_errors_fail_the_run(start_server, fake_openai, name, message, partial_text):
    base_url, _ = fake_openai
    record, frames = await run_to_end(start_server, OpenAIChatModel(base_url=base_url, model=name))
    message = f"{host_of(base_url)} {message}"  # status, endpoint host, short reason
    assert record["status"] == "failed"
    assert record["last_error"] == f"EndpointError: {message}"
    assert frames[-1] == {"type": "error", "error_type": "EndpointError", "message": message}
    assert text(frames) == partial_text


async def test_a_hung_endpoint_fails_after_timeout_naming_it(start_server, fake_openai, caplog):
    base_url, _ = fake_openai
    model = OpenAIChatModel(base_url=base_url, model="hang", timeout=0.3)
    record, frames = await run_to_end(start_server, model)
    message = f"{host_of(base_url)} sent nothing for 0.3 s (read timeout, --timeout)"
    assert record["last_error"] == f"EndpointError: {message}"
    assert frames[-1]["message"] == message
    assert text(frames) == "x"
    [warning] = [r for r in caplog.records if "failed (endpoint_timeout)" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert "oa" in warning.getMessage() and record["run_id"] in warning.getMessage()


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("choices-object", "chunk.choices is not an array"),
        ("delta-string", "choices[0].delta is not an object"),
        ("content-number", "choices[0].delta.content is not a string: 5"),
        ("index-string", 'choices[0].delta.tool_calls[0].index is not an integer: "a"'),
        ("arguments-object", "tool_calls[0].function.arguments is not a string"),
        ("choice-not-object", "choices[0] is not an object"),
    ],
)
async def test_chunks_of_the_wrong_shape_fail_the_run_with_an_error_frame(
    start_server, fake_openai, name, detail
):
    base_url, _ = fake_openai
    record, frames = await run_to_end(start_server, OpenAIChatModel(base_url=base_url, model=name))
    assert record["status"] == "failed"
    message = record["last_error"].removeprefix("EndpointError: ")
    assert message.startswith(f"{host_of(base_url)} sent a malformed chunk: ")
    assert detail in message
    assert frames[-1] == {"type": "error", "error_type": "EndpointError", "message": message}
    assert text(frames) == "x"


async def test_only_the_choice_with_index_0_is_followed(start_server, fake_openai):
    base_url, _ = fake_openai
    record, frames = await run_to_end(
        start_server, OpenAIChatModel(base_url=base_url, model="two-choices")
    )
    assert record["status"] == "completed"
    assert text(frames) == "yes"


async def test_unreachable_endpoint_fails_the_run(start_server):
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    record, _frames = await run_to_end(
        start_server, OpenAIChatModel(base_url="http://127.0.0.1:9/v1", model="m")
    )
    assert record["status"] == "failed"
    assert record["last_error"].startswith("EndpointError: cannot connect to 127.0.0.1:9 (")
