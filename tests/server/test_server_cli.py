"""The ``trio-chatruns`` command: bind errors, user producers, bounded shutdown."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import httpx
import pytest
import trio

from trio_chatruns.server import ServerSettings, serve
from trio_chatruns.server.cli import parser

from helpers import serve_process

USER_MODULE = textwrap.dedent(
    """
    import trio
    from trio_chatruns import ChatRunStatus


    async def echo(run, request):
        run.push_frame({"type": "token", "text": request.prompt[::-1]})
        run.push_frame({"type": "done", "finish_reason": "stop"}, status=ChatRunStatus.COMPLETED)


    async def stubborn(run, request):
        run.push_frame({"type": "token", "text": "never stopping"})
        with trio.CancelScope(shield=True):
            await trio.sleep(1000)
    """
)


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_is_one_error_line_and_status_1(busy_port):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_chatruns.server",
            "serve",
            "--port",
            str(busy_port),
            "--db",
            ":memory:",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-chatruns: error: ")
    assert "in use" in lines[0]
    assert f"127.0.0.1:{busy_port}" in lines[0]


async def test_serve_raises_a_plain_oserror(busy_port):
    with pytest.raises(OSError) as caught:
        await serve(None, ServerSettings(port=busy_port), handle_signals=False)  # type: ignore[arg-type]
    assert "in use" in str(caught.value)  # the OSError itself, not a group of it


def test_bad_log_level_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["serve", "--log-level", "bogus"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert parser().parse_args(["serve", "--log-level", "debug"]).log_level == "DEBUG"


async def wait_status(client, conversation_id, wanted):
    with trio.fail_after(10):
        while True:
            record = (await client.get(f"/v1/chat/runs/{conversation_id}")).json()
            if record["status"] in wanted:
                return record
            await trio.sleep(0.02)


async def test_console_script_loads_a_producer_from_the_current_directory(tmp_path):
    (tmp_path / "cwd_user_models.py").write_text(USER_MODULE)
    async with serve_process("--producer", "cwd_user_models:echo", cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/v1/chat/runs/e", json={"prompt": "abc"})).status_code == 202
            await wait_status(client, "e", {"completed"})
            events = (await client.get("/v1/chat/runs/e/events")).json()["events"]
        assert events[0]["frame"] == {"type": "token", "text": "cba"}
        assert await server.stop() == 0


async def test_shutdown_is_bounded_when_a_producer_shields_cancellation(tmp_path):
    (tmp_path / "cwd_user_models.py").write_text(USER_MODULE)
    graceful = 0.4
    async with serve_process(
        "--producer", "cwd_user_models:stubborn", "--graceful-timeout", str(graceful), cwd=tmp_path
    ) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/v1/chat/runs/s", json={"prompt": "p"})).status_code == 202
            with trio.fail_after(10):  # polling another process: no event to wait on
                while not (await client.get("/v1/chat/runs/s/events")).json()["events"]:  # noqa: ASYNC110
                    await trio.sleep(0.02)
        code = await server.stop()
        stderr = server.text
    assert code == 1
    # serve() names the stuck run, then the command gives up a second later.
    assert "graceful shutdown did not finish" in stderr
    assert "s/" in stderr
    # ... after the documented deadline (1.5 x graceful + 1 s), not a timed guess.
    deadline = 1.5 * graceful + 1
    assert f"graceful shutdown did not finish within {deadline:.1f} s" in stderr
    assert f"trio-chatruns: error: shutdown did not finish within {deadline + 1:.1f} s" in stderr
    assert stderr.index("graceful shutdown did not finish") < stderr.index("trio-chatruns: error")
