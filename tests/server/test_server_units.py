"""Pure parts of the server: SSE encoding, cursors, settings, the CLI and model loading."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from decimal import Decimal

import pytest

from trio_chatruns.server import OpenAIChatModel, ScriptedModel, ServerSettings, load_model
from trio_chatruns.server.cli import build_model, main, parser
from trio_chatruns.server.config import valid_conversation_id
from trio_chatruns.server.producers import scripted_reply
from trio_chatruns.server.sse import (
    Cursor,
    encode_comment,
    encode_sse,
    format_cursor,
    parse_cursor,
    parse_seq,
    to_json,
)
from trio_chatruns.server.streams import cursor_from_request


def test_encode_sse_fields_and_multiline_data():
    assert encode_sse("x", id="r:1") == b"id: r:1\ndata: x\n\n"
    assert encode_sse("a\nb\r\nc", event="end") == b"event: end\ndata: a\ndata: b\ndata: c\n\n"
    assert encode_sse(retry_ms=250) == b"retry: 250\n\n"
    assert encode_comment("ping") == b": ping\n\n"
    with pytest.raises(ValueError):
        encode_sse("x", id="bad\nid")


def test_cursor_round_trip_and_errors():
    assert parse_cursor(format_cursor("run:with:colons", 7)) == Cursor("run:with:colons", 7)
    for bad in ("", "abc", ":3", "r:-1", "r:x", "r:", "r:²", "r:1" + "0" * 18, "bad id:1"):
        with pytest.raises(ValueError):
            parse_cursor(bad)
    assert parse_cursor("r:" + "9" * 18) == Cursor("r", 10**18 - 1)


def test_parse_seq_is_ascii_and_bounded():
    assert parse_seq("0") == 0
    assert parse_seq("007") == 7
    for bad in ("", "-1", "+1", " 1", "1 ", "1\n", "²", "\u0661", "1_000", "9" * 19):
        with pytest.raises(ValueError, match="at most 18 digits") as caught:
            parse_seq(bad)
        assert str(caught.value).isascii()
    with pytest.raises(ValueError) as caught:
        parse_seq("9" * 5000)
    assert len(str(caught.value)) < 150


def test_to_json_is_strict_with_a_fallback():
    assert to_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert to_json({"x": float("nan"), "y": float("-inf")}) == '{"x":null,"y":null}'
    assert to_json({"d": Decimal("1.5"), (1,): 2}) == '{"d":"1.5","(1,)":2}'
    assert to_json("\ud800") == '"\\ud800"'
    assert json.loads(to_json(10**5000)) == "<int of 16610 bits>"
    deep: list = [float("nan")]  # deep *and* needing the fallback
    for _ in range(150):
        deep = [deep]
    assert "<nested too deep>" in to_json(deep)
    cyclic: dict = {}
    cyclic["self"] = cyclic
    assert to_json(cyclic) == '{"self":"<circular reference>"}'


def test_cursor_from_request_prefers_the_header():
    assert cursor_from_request({"last-event-id": "r:5"}, {"after": "1"}) == (Cursor("r", 5), True)
    assert cursor_from_request({}, {"after": "3", "run_id": "r"}) == (Cursor("r", 3), True)
    assert cursor_from_request({}, {}) == (Cursor(None, 0), False)
    with pytest.raises(ValueError):
        cursor_from_request({}, {"after": "-2"})
    with pytest.raises(ValueError):
        cursor_from_request({}, {"after": "²"})
    with pytest.raises(ValueError):
        cursor_from_request({}, {"run_id": "no spaces"})


def test_conversation_ids():
    assert valid_conversation_id("a")
    assert valid_conversation_id("Ab.9_:-" * 18 + "xx")  # 128 chars
    assert not valid_conversation_id("x" * 129)
    for bad in ("", "a b", "a/b", "é", "a\n"):
        assert not valid_conversation_id(bad)


def test_settings_validate():
    assert ServerSettings().host == "127.0.0.1"
    assert ServerSettings().max_body_bytes == 64 * 1024
    with pytest.raises(ValueError):
        ServerSettings(max_active_runs=0)
    with pytest.raises(TypeError):
        ServerSettings(port="80")
    with pytest.raises(ValueError):
        ScriptedModel(tokens_per_second=0)


def test_scripted_reply_is_deterministic():
    assert scripted_reply("p") == scripted_reply("p")
    assert scripted_reply("p") != scripted_reply("q")
    assert len(scripted_reply("p", 10)) == 10


def _args(*argv):
    return parser().parse_args(["serve", *argv])


def test_cli_defaults_and_models(monkeypatch):
    args = _args()
    assert (args.host, args.port, args.producer) == ("127.0.0.1", 8000, "scripted")
    assert isinstance(build_model(args), ScriptedModel)
    monkeypatch.setenv("MY_KEY", "sk-1")
    model = build_model(
        _args(
            "--producer",
            "openai",
            "--base-url",
            "http://x/v1",
            "--model",
            "m",
            "--api-key-env",
            "MY_KEY",
        )
    )
    assert isinstance(model, OpenAIChatModel)
    assert (model.url, model.model, model.api_key) == ("http://x/v1/chat/completions", "m", "sk-1")
    with pytest.raises(ValueError):
        build_model(_args("--producer", "nonsense"))
    with pytest.raises(ValueError, match="needs --model"):
        build_model(_args("--producer", "openai"))


def test_load_model_from_module_function(monkeypatch):
    module = types.ModuleType("my_models")

    async def echo(run, request):
        run.push_frame({"type": "token", "text": request.prompt})

    class Factory:
        async def __call__(self, run, request):
            pass

    module.echo = echo
    module.Factory = Factory
    module.not_async = lambda: 3
    monkeypatch.setitem(sys.modules, "my_models", module)
    assert load_model("my_models:echo") is echo
    assert isinstance(load_model("my_models:Factory"), Factory)
    assert isinstance(build_model(_args("--producer", "my_models:echo")), types.FunctionType)
    with pytest.raises(ValueError):
        load_model("my_models:not_async")
    with pytest.raises(ValueError):
        load_model("no_colon")
    with pytest.raises(AttributeError):
        load_model("my_models:missing")


def test_cli_reports_bad_options(capsys):
    assert main(["serve", "--max-active-runs", "0"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    assert isinstance(parser(), argparse.ArgumentParser)


def test_core_imports_without_the_server_extra():
    """With starlette/hypercorn missing, the core imports and the server says what to install."""
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "sys.modules['hypercorn'] = None\n"
        "import trio_chatruns\n"
        "try:\n"
        "    import trio_chatruns.server\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'trio-chatruns[server]'" in result.stdout
