"""GET /openapi.json: it names every route and only those, and a property-based
test drives every operation from it against a real server: no 5xx, only
documented statuses, and JSON bodies of the documented shape."""

from __future__ import annotations

import json
import queue
import threading
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.routing import Route, WebSocketRoute
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from trio_chatruns.server import ScriptedModel, ServerSettings, serve
from trio_chatruns.server.openapi import openapi_schema

HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}
GENERIC = {404, 405}  # unknown paths and wrong methods, for every path (info.description)
WS_CLOSE_CODES = {1000, 1001, 1013, 4400, 4404, 4429, 4503}


def schema_operations(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in schema["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def app_operations(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            found.add((route.path, "get"))
        elif isinstance(route, Route):
            found |= {(route.path, m.lower()) for m in route.methods if m != "HEAD"}
    return found


async def test_the_schema_documents_every_route_and_nothing_else(client, server):
    served = (await client.get("/openapi.json")).json()
    assert served == openapi_schema()
    assert served["openapi"].startswith("3.1")
    assert schema_operations(served) == app_operations(server.server.app)
    for path, item in served["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)
            assert all(code.isdigit() and len(code) == 3 for code in operation["responses"])
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(path.replace("}", "{").split("{")[1::2]), (path, method)
    # Every reference resolves.
    text = json.dumps(served)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in served["components"]["schemas"], name


# -- a mini JSON Schema checker (the subset the document uses) -------------------

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "boolean": bool,
    "null": type(None),
    "number": (int, float),
}


def conforms(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return conforms(value, root["components"]["schemas"][schema["$ref"].split("/")[-1]], root)
    if "oneOf" in schema:
        return sum(conforms(value, s, root) for s in schema["oneOf"]) == 1
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, _TYPES[k]) and not (k == "integer" and isinstance(value, bool))
            for k in kinds
        )
        if not ok:
            return False
    if isinstance(value, dict):
        if any(key not in value for key in schema.get("required", [])):
            return False
        properties = schema.get("properties", {})
        for key, item in value.items():
            sub = properties.get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict) and not conforms(item, sub, root):
                return False
    if isinstance(value, list) and "items" in schema:
        return all(conforms(item, schema["items"], root) for item in value)
    return not (isinstance(value, int) and "minimum" in schema and value < schema["minimum"])


def test_the_checker_rejects_what_it_should():
    root = openapi_schema()
    gap = {"$ref": "#/components/schemas/Gap"}
    assert conforms({"from": 1, "to": 2}, gap, root)
    assert not conforms({"from": 1}, gap, root)
    assert not conforms({"from": "1", "to": 2}, gap, root)
    assert not conforms({"from": True, "to": 2}, gap, root)
    events = {"$ref": "#/components/schemas/Events"}
    page = {"run_id": "r", "status": "running", "latest_seq": 0, "events": [], "gap": None}
    assert conforms(page, events, root)
    assert not conforms({**page, "status": "sleeping"}, events, root)
    assert not conforms({**page, "events": [{"seq": 1}]}, events, root)


# -- a real server in a thread, driven from the schema ------------------------------


@pytest.fixture(scope="module")
def live_server():
    """A real server in its own thread and ``trio.run``, with one finished run ``seed``."""
    handoff: queue.Queue[Any] = queue.Queue()
    model = ScriptedModel(tokens_per_second=500.0, reply_tokens=20, pause_tokens=1)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                partial(
                    serve,
                    model,
                    ServerSettings(port=0, graceful_timeout=2.0, max_active_runs=8),
                    handle_signals=False,
                )
            )
            handoff.put((running, trio.lowlevel.current_trio_token()))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # hand it to the test thread
            handoff.put(exc)

    thread = threading.Thread(target=run, name="live-server")
    thread.start()
    got = handoff.get(timeout=30)
    if isinstance(got, BaseException):
        raise got
    running, token = got
    with httpx.Client(base_url=running.url, timeout=10) as client:
        run_id = client.post("/v1/chat/runs/seed", json={"prompt": "seed"}).json()["run_id"]
        for _ in range(500):
            if client.get("/v1/chat/runs/seed").json()["status"] == "completed":
                break
            trio.from_thread.run(trio.sleep, 0.01, trio_token=token)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            yield running, run_id, client
    finally:
        trio.from_thread.run_sync(running.shutdown, trio_token=token)
        thread.join(30)
        assert not thread.is_alive()


SCHEMA = openapi_schema()
OPERATIONS = sorted(schema_operations(SCHEMA))

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_path_text = st.text(
    st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=30
).filter(lambda s: s not in (".", ".."))
# Printable ASCII without surrounding spaces: RFC 9110 (5.5) field values carry
# no leading or trailing whitespace, and h11 refuses to send such a value.
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)


def value_for(parameter: dict[str, Any], seed_run: str) -> st.SearchStrategy[Any]:
    """Valid values (from the schema), values the server knows, and anything."""
    schema = parameter["schema"]
    valid: st.SearchStrategy[Any]
    if parameter["in"] == "header":  # HTTP header values are printable ASCII here
        valid = _header_text
    elif "enum" in schema:
        valid = st.sampled_from(schema["enum"])
    elif "pattern" in schema:
        valid = st.from_regex(schema["pattern"], fullmatch=True)
    else:
        valid = st.text(max_size=30)
    name = parameter["name"]
    known: st.SearchStrategy[Any] = st.nothing()
    if name == "conversation_id":
        known = st.sampled_from(["seed", "fresh", "nobody"])
    elif name == "run_id":
        known = st.just(seed_run)
    elif name == "after":
        known = st.integers(0, 40).map(str)
    elif name == "Last-Event-ID":
        known = st.integers(0, 40).map(lambda n: f"{seed_run}:{n}")
    anything = _header_text if parameter["in"] == "header" else _path_text
    chosen = st.one_of(known, valid, anything)
    return chosen if parameter.get("required") else st.none() | chosen


def body_for(operation: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
    if "requestBody" not in operation:
        return st.none()
    prompt = st.text(min_size=1, max_size=200)
    return st.one_of(
        st.builds(lambda p: json.dumps({"prompt": p}).encode(), prompt),
        _json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=100),
    )


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), operation=st.sampled_from(OPERATIONS))
def test_every_operation_from_the_schema_never_5xx(live_server, data, operation):
    running, seed_run, client = live_server
    path, method = operation
    spec = SCHEMA["paths"][path][method]
    values = {
        p["name"]: (p["in"], data.draw(value_for(p, seed_run), label=p["name"]))
        for p in spec.get("parameters", [])
    }
    url_path = path
    query, headers = {}, {"Content-Type": "application/json"}
    for name, (where, value) in values.items():
        if value is None:
            continue
        if where == "path":
            url_path = url_path.replace("{" + name + "}", quote(value, safe=""))
        elif where == "query":
            query[name] = value
        else:
            headers[name] = value
    documented = {int(code) for code in spec["responses"]}

    if spec.get("x-websocket"):
        ws_url = running.url.replace("http://", "ws://") + url_path
        ws_url += "?" + httpx.QueryParams(query).__str__() if query else ""
        extra = {k: v for k, v in headers.items() if k != "Content-Type"}
        try:
            with connect(ws_url, open_timeout=10, additional_headers=extra) as websocket:
                try:
                    while True:
                        message = json.loads(websocket.recv(timeout=10))
                        assert message["type"] in {"event", "gap", "end", "lagged", "error", "ping"}
                except ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code in WS_CLOSE_CODES
        except InvalidStatus as refused:
            status = refused.response.status_code
            assert status in documented | GENERIC, status
        return

    body = data.draw(body_for(spec), label="body")
    with client.stream(
        method.upper(), url_path, params=query, headers=headers, content=body
    ) as response:
        status = response.status_code
        event(f"{method.upper()} {path} {status}")
        assert status < 500, (operation, values, status)
        assert status in documented | GENERIC, (operation, values, status)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return  # a live stream: its headers are the answer here
        payload = response.read()
    content = spec["responses"].get(str(status), {}).get("content", {})
    if "application/json" in content:
        assert conforms(json.loads(payload), content["application/json"]["schema"], SCHEMA), (
            operation,
            status,
            payload[:300],
        )
    elif status in GENERIC:
        assert "error" in json.loads(payload)
