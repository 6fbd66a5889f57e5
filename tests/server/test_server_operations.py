"""What an operator needs: the access log, failure and lifecycle logs, /metrics,
and the command line (--version, plain help, --timeout, TRIO_CHATRUNS_* variables)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_chatruns import RegistryConfig
from trio_chatruns.server import OpenAIChatModel
from trio_chatruns.server.cli import build_model, main, parser, serve_parser
from trio_chatruns.server.envopts import apply_environment, env_name
from trio_chatruns.server.failures import FAILURE_KINDS
from trio_chatruns.server.metrics import METRICS

DOCS = Path(__file__).parents[2] / "docs" / "server.md"
SCRIPT = Path(sys.executable).with_name("trio-chatruns")


async def finished(client, registry, conversation_id, prompt="p"):
    response = await client.post(f"/v1/chat/runs/{conversation_id}", json={"prompt": prompt})
    assert response.status_code == 202, response.text
    with trio.fail_after(10):
        async with registry.subscribe(conversation_id) as subscription:
            async for _ in subscription:
                pass
    return response.json()["run_id"]


def access_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "trio_chatruns.access"]


# -- logs ---------------------------------------------------------------------------


async def test_access_log_names_method_path_status_bytes_and_duration(start_server, caplog):
    caplog.set_level(logging.INFO)
    running = await start_server()
    async with httpx.AsyncClient(base_url=running.url) as client:
        stats = await client.get("/v1/stats", params={"secret": "token"})
        await client.get("/v1/chat/runs/nobody")
        await finished(client, running.server.registry, "al")
        async with client.stream("GET", "/v1/chat/runs/al/stream") as stream:
            body = await stream.aread()
    # The stream's line is written once its response has ended on the server.
    with trio.fail_after(10):
        while not any("/al/stream" in x for x in access_lines(caplog)):  # noqa: ASYNC110 - a log record, no event
            await trio.sleep(0.01)
    lines = access_lines(caplog)
    pattern = r'127\.0\.0\.1:\d+ "GET /v1/stats" 200 (\d+) B \d+\.\d ms'
    [match] = [m for line in lines if (m := re.fullmatch(pattern, line))]
    assert int(match.group(1)) == len(stats.content)
    assert "token" not in "".join(lines)  # no query strings in the log
    assert any(re.fullmatch(r'\S+ "GET /v1/chat/runs/nobody" 404 \d+ B .*', x) for x in lines)
    assert any(re.fullmatch(r'\S+ "POST /v1/chat/runs/al" 202 \d+ B .*', x) for x in lines)
    assert any(f'"GET /v1/chat/runs/al/stream" 200 {len(body)} B' in x for x in lines), (
        len(body),
        lines,
    )
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.endswith("access"))


async def test_access_log_can_be_turned_off_and_counts_websockets(start_server, caplog):
    caplog.set_level(logging.INFO)
    running = await start_server(access_log=False)
    async with httpx.AsyncClient(base_url=running.url) as client:
        await client.get("/v1/stats")
    assert access_lines(caplog) == []
    # Metrics still count what the log leaves out.
    assert sample(await scrape(running), "trio_chatruns_http_requests_total", route="/v1/stats")


async def test_failures_startup_and_shutdown_are_logged(start_server, caplog):
    caplog.set_level(logging.INFO)
    model = OpenAIChatModel(base_url="http://127.0.0.1:9/v1", model="m-name", timeout=2.5)
    running = await start_server(model=model, registry_config=RegistryConfig(max_events_per_run=77))
    [startup] = [r.getMessage() for r in caplog.records if "listening on" in r.getMessage()]
    assert running.url in startup
    assert "openai model 'm-name' at http://127.0.0.1:9/v1 (timeout 2.5 s)" in startup
    assert "max_active_runs=64" in startup and "max_events_per_run=77" in startup
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = await finished(client, running.server.registry, "unreachable")
    [failure] = [
        r for r in caplog.records if r.levelno == logging.WARNING and run_id in r.msg % r.args
    ]
    message = failure.getMessage()
    assert "'unreachable'" in message and "endpoint_unreachable" in message
    assert "cannot connect to 127.0.0.1:9" in message


async def test_shutdown_logs_what_it_ended(start_server, caplog):
    caplog.set_level(logging.INFO)

    async def waits(run, request):
        await trio.sleep_forever()

    running = await start_server(model=waits)
    async with httpx.AsyncClient(base_url=running.url) as client:
        run_id = (await client.post("/v1/chat/runs/w", json={"prompt": "p"})).json()["run_id"]
    running.shutdown()
    with trio.fail_after(10):
        while not any("shutdown complete" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - a log record, no event
            await trio.sleep(0.01)
    messages = [r.getMessage() for r in caplog.records]
    [begin] = [m for m in messages if m.startswith("shutting down:")]
    assert f"interrupted 1 active run(s): w/{run_id}" in begin
    [done] = [m for m in messages if m.startswith("shutdown complete")]
    assert "1 run(s) interrupted by the shutdown" in done


# -- /metrics --------------------------------------------------------------------------


async def scrape(running):
    async with httpx.AsyncClient(base_url=running.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def sample(families, name, **labels):
    """The value of sample ``name`` with ``labels`` (0.0 when there is none)."""
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_metrics_expose_registry_server_requests_and_failures(start_server, sse):
    running = await start_server(registry_config=RegistryConfig(max_events_per_run=5))
    async with httpx.AsyncClient(base_url=running.url) as client:
        await finished(client, running.server.registry, "m1")
        await finished(client, running.server.registry, "m2", prompt="/fail now")
        async with client.stream("GET", "/v1/chat/runs/m1/stream") as response:
            [m async for m in sse(response)]
        await client.get("/v1/chat/runs/m1")
        await client.get("/no/such/path")
    families = await scrape(running)
    stats = running.server.registry.stats()
    assert sample(families, "trio_chatruns_runs_active") == 0
    assert sample(families, "trio_chatruns_runs_retained_terminal") == 2
    assert sample(families, "trio_chatruns_frames_pushed_total") == stats.frames_pushed > 0
    assert sample(families, "trio_chatruns_streams_opened_total") == 1
    assert sample(families, "trio_chatruns_streams_open") == 0
    assert sample(families, "trio_chatruns_model_failures_total", kind="reported") == 1
    assert sample(families, "trio_chatruns_model_failures_total", kind="exception") == 0
    assert running.server.stats().run_failures == 1  # ServerStats, as GET /v1/stats reports it
    route = "/v1/chat/runs/{conversation_id}"
    assert (
        sample(
            families, "trio_chatruns_http_requests_total", method="GET", route=route, status="200"
        )
        == 1
    )
    assert (
        sample(
            families, "trio_chatruns_http_requests_total", method="POST", route=route, status="202"
        )
        == 2
    )
    assert sample(families, "trio_chatruns_http_requests_total", route="unmatched", status="404")
    assert (
        sample(
            families, "trio_chatruns_http_request_duration_seconds_count", method="GET", route=route
        )
        == 1
    )
    # Every documented metric is there (buffered_bytes only with a byte budget).
    names = {s.name for f in families.values() for s in f.samples}
    for name, kind, _ in METRICS:
        if name.endswith("buffered_bytes") or (
            name.endswith(("runs_queued", "run_end_failures_total"))
            and not hasattr(stats, "queued")
        ):
            continue
        wanted = name + ("_count" if kind == "histogram" else "")
        assert wanted in names, name
    assert {s.labels["kind"] for s in families["trio_chatruns_model_failures"].samples} >= set(
        FAILURE_KINDS
    )


async def test_each_server_has_its_own_metrics(start_server):
    first = await start_server()
    second = await start_server()
    async with httpx.AsyncClient(base_url=first.url) as client:
        for _ in range(3):
            await client.get("/v1/stats")
    assert sample(await scrape(first), "trio_chatruns_http_requests_total", route="/v1/stats") == 3
    assert sample(await scrape(second), "trio_chatruns_http_requests_total", route="/v1/stats") == 0


def test_every_metric_and_failure_kind_is_documented():
    docs = DOCS.read_text()
    for name, _, _ in METRICS:
        assert f"`{name}`" in docs, name
    for kind in FAILURE_KINDS:
        assert f"`{kind}`" in docs, kind


# -- the command line -----------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"trio-chatruns \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_is_plain_text(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert "usage: trio-chatruns" in text
    for markup in ("``", ":class:", ":func:", ":meth:", ":mod:"):
        assert markup not in text
    assert not re.search(r"^\s*\.\. [\w-]+::", text, re.MULTILINE)  # no reST directives


def test_timeout_reaches_the_openai_model():
    args = parser().parse_args(["serve", "--producer", "openai", "--model", "m", "--timeout", "7"])
    model = build_model(args)
    assert isinstance(model, OpenAIChatModel)
    assert model.timeout == 7.0


def parse_with_env(environ, argv=("serve",)):
    root = parser()
    apply_environment(serve_parser(root), environ)
    return root.parse_args(list(argv))


def test_every_option_reads_an_environment_variable_and_the_cli_wins():
    env = {
        "TRIO_CHATRUNS_MAX_EVENTS": "50",
        "TRIO_CHATRUNS_HOST": "127.0.0.2",
        "TRIO_CHATRUNS_TIMEOUT": "3.5",
        "TRIO_CHATRUNS_LOG_LEVEL": "debug",
        "TRIO_CHATRUNS_EXPOSE_ERRORS": "yes",
        "TRIO_CHATRUNS_NO_ACCESS_LOG": "off",
    }
    args = parse_with_env(env)
    assert (args.max_events, args.host, args.timeout, args.log_level) == (
        50,
        "127.0.0.2",
        3.5,
        "DEBUG",
    )
    assert args.expose_errors is True and args.no_access_log is False
    args = parse_with_env(env, ["serve", "--max-events", "7", "--no-access-log"])
    assert args.max_events == 7 and args.no_access_log is True
    # Every long option has its variable, and the docs list each one.
    docs = DOCS.read_text()
    for action in serve_parser(parser())._actions:
        option = next((o for o in action.option_strings if o.startswith("--")), None)
        if option in (None, "--help"):
            continue
        assert f"`{env_name(option)}`" in docs, option


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRIO_CHATRUNS_PORT", "eighty"),
        ("TRIO_CHATRUNS_LOG_LEVEL", "LOUD"),
        ("TRIO_CHATRUNS_EXPOSE_ERRORS", "maybe"),
    ],
)
def test_a_bad_environment_value_is_an_error_naming_the_variable(capsys, name, value):
    with pytest.raises(SystemExit) as exit_:
        parse_with_env({name: value})
    assert exit_.value.code == 2
    assert name in capsys.readouterr().err


async def test_a_model_raising_system_exit_ends_the_command_gracefully_with_its_status(tmp_path):
    if not SCRIPT.exists():
        pytest.skip("the trio-chatruns console script is not installed next to python")
    (tmp_path / "exiting_models.py").write_text(
        textwrap.dedent(
            """
            import trio

            async def model(run, request):
                run.push_frame({"type": "token", "text": "bye"})
                if request.prompt == "exit":
                    raise SystemExit(3)
                await trio.sleep_forever()
            """
        )
    )
    process = await trio.lowlevel.open_process(
        [str(SCRIPT), "serve", "--port", "0", "--producer", "exiting_models:model"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": ""},
    )
    buffer = bytearray()
    try:
        with trio.fail_after(15):
            while b"open it in a browser" not in buffer:
                chunk = await process.stderr.receive_some()
                assert chunk, buffer.decode()
                buffer += chunk
        url = buffer.decode().split("serving on ")[1].split()[0]
        async with httpx.AsyncClient(base_url=url) as client:
            await client.post("/v1/chat/runs/other", json={"prompt": "stay"})
            await client.post("/v1/chat/runs/x", json={"prompt": "exit"})
        with trio.fail_after(15):
            while chunk := await process.stderr.receive_some():
                buffer += chunk
            assert await process.wait() == 3
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    log = buffer.decode()
    assert "a chat model raised SystemExit: shutting the server down gracefully" in log
    assert "shutting down: interrupted 1 active run(s): other/" in log
    assert "Traceback" in log  # the failure's whole story is in the log, at WARNING
