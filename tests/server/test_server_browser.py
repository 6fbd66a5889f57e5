"""The browser page in headless Chromium, driven over the DevTools protocol.

The page starts a run; the test cuts every stream mid-reply (as a network drop
would); EventSource reconnects by itself with Last-Event-ID, and the page ends
with the complete reply exactly once. Then a reload mid-stream does the same.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it);
skipped with a reason when it is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile

import pytest
import trio
from trio_websocket import wrap_client_stream

from trio_chatruns.server import ScriptedModel
from trio_chatruns.server.producers import scripted_reply

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0",
]  # fmt: skip
MODEL = ScriptedModel(tokens_per_second=40.0, reply_tokens=100, pause_tokens=2)


class GatedModel:
    """The scripted reply's tokens, held halfway until the test lets the run
    finish: the cuts and the reload happen mid-reply however slow the machine
    (a loaded one makes the browser lag the server by seconds)."""

    def __init__(self) -> None:
        self.release = trio.Event()

    async def __call__(self, run, request):
        tokens = scripted_reply(request.prompt, MODEL.reply_tokens)
        for n, token in enumerate(tokens):
            if n == len(tokens) // 2:
                await self.release.wait()
            run.push_frame({"type": "token", "text": token})
            await trio.sleep(1 / MODEL.tokens_per_second)
        run.push_frame({"type": "done", "finish_reason": "stop"})


class DevTools:
    """A minimal Chrome DevTools Protocol client over trio-websocket (flat sessions)."""

    def __init__(self, ws):
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting = {}

    async def reader(self):
        while True:
            message = json.loads(await self._ws.get_message())
            waiter = self._waiting.pop(message.get("id"), None)
            if waiter is not None:
                waiter[1] = message
                waiter[0].set()

    async def call(self, method, session=None, **params):
        message_id = next(self._ids)
        waiter = [trio.Event(), None]
        self._waiting[message_id] = waiter
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self._ws.send_message(json.dumps(message))
        with trio.fail_after(10):
            await waiter[0].wait()
        reply = waiter[1]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


async def open_chromium(nursery, user_data_dir):
    process = await trio.lowlevel.open_process(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    buffer = b""
    with trio.fail_after(30):
        while b"DevTools listening on " not in buffer or not buffer.split(
            b"DevTools listening on "
        )[1].count(b"\n"):
            chunk = await process.stderr.receive_some()
            if not chunk:
                raise RuntimeError("chromium exited: " + buffer.decode(errors="replace"))
            buffer += chunk
    url = buffer.split(b"DevTools listening on ")[1].split(b"\n")[0].decode().strip()

    async def drain():  # keep chromium from blocking on a full stderr pipe
        while await process.stderr.receive_some():
            pass

    nursery.start_soon(drain)
    return process, url


async def evaluate(devtools, session, expression):
    result = await devtools.call(
        "Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True
    )
    if "exceptionDetails" in result:
        raise RuntimeError(f"JS error: {result['exceptionDetails']}")
    return result["result"].get("value")


async def wait_for(devtools, session, expression, seconds=20):
    with trio.fail_after(seconds):
        while True:
            value = await evaluate(devtools, session, expression)
            if value:
                return value
            await trio.sleep(0.05)


STATE = (
    "JSON.stringify({text: chatState.text, status: chatState.status, ended: chatState.ended, "
    "opens: chatState.opens, duplicates: chatState.duplicates, gaps: chatState.gaps, "
    "dom: document.getElementById('reply').textContent, runId: chatState.runId})"
)


async def page_state(devtools, session):
    return json.loads(await evaluate(devtools, session, STATE))


async def test_page_survives_drops_and_reloads(start_server):
    model = GatedModel()
    running = await start_server(model=model, sse_retry_ms=100)
    user_data_dir = tempfile.mkdtemp(prefix="chatruns-chromium-")
    process = None
    try:
        async with trio.open_nursery() as nursery:
            process, browser_url = await open_chromium(nursery, user_data_dir)
            try:
                rest = browser_url.removeprefix("ws://")
                hostport, _, path = rest.partition("/")
                host, _, port = hostport.rpartition(":")
                async with (
                    await trio.open_tcp_stream(host, int(port)) as stream,
                    trio.open_nursery() as cdp,
                ):
                    ws = await wrap_client_stream(
                        cdp, stream, host, "/" + path, max_message_size=2**24
                    )
                    devtools = DevTools(ws)
                    cdp.start_soon(devtools.reader)
                    await run_scenario(running, devtools, model)
                    cdp.cancel_scope.cancel()
            finally:
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if process is not None:
            await process.stderr.aclose()
        shutil.rmtree(user_data_dir, ignore_errors=True)


async def open_tab(devtools, url):
    """Open ``url`` in a new tab; return its session once the page script runs."""
    target = await devtools.call("Target.createTarget", url=url)
    attached = await devtools.call(
        "Target.attachToTarget", targetId=target["targetId"], flatten=True
    )
    session = attached["sessionId"]
    await wait_for(devtools, session, "typeof window.chatState === 'object'")
    return session


async def run_scenario(running, devtools, model):
    session = await open_tab(devtools, f"{running.url}/#c=browser-1")
    assert await evaluate(devtools, session, "chatState.conversationId") == "browser-1"

    # 1. Start a run from the page; cut every stream three times mid-reply.
    prompt = "hello from chromium"
    await evaluate(
        devtools,
        session,
        f"document.getElementById('prompt').value = {json.dumps(prompt)};"
        "document.getElementById('send').click(); true",
    )
    expected = "".join(scripted_reply(prompt, MODEL.reply_tokens))
    drops = 0
    second_tab = None
    # The model holds the run at half the reply. Each cut waits until the page
    # has reconnected since the last one (a loaded browser may still be reading
    # what the cut connection had delivered).
    for cuts, fraction in enumerate((0.15, 0.3, 0.45)):
        await wait_for(
            devtools,
            session,
            f"chatState.opens > {cuts} && chatState.text.length > {int(len(expected) * fraction)}",
        )
        drops += running.server.disconnect_streams()
        if second_tab is None:
            # A second tab on the same conversation joins mid-reply (and is cut too).
            second_tab = await open_tab(devtools, f"{running.url}/#c=browser-1")
    assert drops >= 3
    model.release.set()
    for tab in (session, second_tab):
        await wait_for(devtools, tab, "chatState.ended && chatState.status === 'completed'")
        state = await page_state(devtools, tab)
        assert state["text"] == expected
        assert state["dom"] == expected  # shown exactly once
        assert state["duplicates"] == 0
        assert state["gaps"] == []
    state = await page_state(devtools, session)
    assert state["opens"] >= 4  # the first connection and three automatic reconnects
    assert running.server.stats().streams_resumed >= 3

    # 2. A second run; reload the page mid-stream; it picks the run up again.
    prompt = "and now reload"
    first_run = state["runId"]
    model.release = trio.Event()
    await evaluate(
        devtools,
        session,
        f"document.getElementById('prompt').value = {json.dumps(prompt)};"
        "document.getElementById('send').click(); true",
    )
    expected = "".join(scripted_reply(prompt, MODEL.reply_tokens))
    await wait_for(
        devtools,
        session,
        f"chatState.runId !== {json.dumps(first_run)}"
        f" && chatState.text.length > {len(expected) // 3}",
    )
    run_id = (await page_state(devtools, session))["runId"]
    await devtools.call("Page.reload", session)
    await wait_for(devtools, session, "typeof window.chatState === 'object' && chatState.opens > 0")
    record = running.server.registry.get("browser-1")
    assert record.run_id == run_id
    assert record.status.is_active, "the reload happened mid-stream"
    model.release.set()
    await wait_for(devtools, session, "chatState.ended && chatState.status === 'completed'")
    state = await page_state(devtools, session)
    assert state["runId"] == run_id
    assert state["text"] == expected
    assert state["dom"] == expected
    assert state["duplicates"] == 0

    # 3. A server shutting down says so on the page, unlike an interrupt.
    await evaluate(
        devtools,
        session,
        "document.getElementById('prompt').value = 'and now shut down';"
        "document.getElementById('send').click(); true",
    )
    await wait_for(
        devtools, session, f"chatState.runId !== {json.dumps(run_id)} && chatState.text.length > 0"
    )
    running.server.begin_shutdown()
    await wait_for(
        devtools,
        session,
        "document.getElementById('connection').textContent === 'ended: the server shut down'",
    )
    shot = await devtools.call("Page.captureScreenshot", session)
    screenshot = trio.Path(tempfile.gettempdir()) / "chatruns-page-shutdown.png"
    await screenshot.write_bytes(base64.b64decode(shot["data"]))
