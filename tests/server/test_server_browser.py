"""The chat page in headless Chromium, driven over the DevTools protocol.

- Streams cut mid-reply (as a network drop would): EventSource reconnects by
  itself with Last-Event-ID; the reply ends complete, shown exactly once.
- Two turns, then a reload mid-reply of the second: both turns shown once, the
  second completes.
- Sending while a reply streams offers the policies; "Queue it" shows the
  queued turn, which then runs.
- The server restarted mid-reply on the same --db: the page says the server is
  unreachable while it is down, then that the run was lost, with the history
  intact.
- A bad ``#c=`` is refused with a message and nothing can be sent.
- 390 px wide, light and dark: nothing overflows.
- Two ``trio-chatruns serve --redis`` workers behind a round-robin proxy,
  with an API key: a turn cut mid-reply resumes through the other worker, a
  second turn continues the conversation and survives a reload mid-reply.

Every scenario saves screenshots: in ``$CHATRUNS_SCREENSHOTS`` if set, else in
the test's tmp directory (``pytest --basetemp=DIR`` keeps them in a known
place); the path is printed. Needs Debian's ``chromium`` at /usr/bin/chromium
(``.ci/run`` installs it); skipped with a reason when it is missing.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio
from trio_websocket import wrap_client_stream

from rr_proxy import RoundRobinProxy
from trio_chatruns.server import ScriptedModel, ServerSettings
from trio_chatruns.server.producers import scripted_reply

from helpers import HeldModel, held_producer_module, serve_processes, start_serving, stop_all

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-port=0",
]  # fmt: skip
MODEL = ScriptedModel(tokens_per_second=40.0, reply_tokens=100, pause_tokens=2)
# Slower, so three cuts and a second tab fit in one reply on a loaded machine.
DROPS_MODEL = ScriptedModel(tokens_per_second=25.0, reply_tokens=100, pause_tokens=2)


class DevTools:
    """A minimal Chrome DevTools Protocol client over trio-websocket (flat sessions)."""

    def __init__(self, ws):
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting = {}
        self.exceptions = []  # Runtime.exceptionThrown: uncaught errors in a page

    async def reader(self):
        while True:
            message = json.loads(await self._ws.get_message())
            if message.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(message["params"]["exceptionDetails"])
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
        with trio.fail_after(15):
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


@contextlib.asynccontextmanager
async def browser():
    """Yield a :class:`DevTools` connected to a fresh headless Chromium."""
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
                        cdp, stream, host, "/" + path, max_message_size=2**26
                    )
                    devtools = DevTools(ws)
                    cdp.start_soon(devtools.reader)
                    yield devtools
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


async def evaluate(devtools, session, expression):
    result = await devtools.call(
        "Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True
    )
    if "exceptionDetails" in result:
        raise RuntimeError(f"JS error: {result['exceptionDetails']}")
    return result["result"].get("value")


async def wait_for(devtools, session, expression, seconds=20):
    # Polling the page: it runs in another process, there is no event to wait on.
    with trio.fail_after(seconds):
        while True:
            value = await evaluate(devtools, session, expression)
            if value:
                return value
            await trio.sleep(0.05)


async def open_tab(devtools, url, width=None):
    """Open ``url`` in a new tab; return its session once the page script runs."""
    target = await devtools.call("Target.createTarget", url="about:blank")
    attached = await devtools.call(
        "Target.attachToTarget", targetId=target["targetId"], flatten=True
    )
    session = attached["sessionId"]
    await devtools.call("Runtime.enable", session)
    await devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width or 1100,
        height=844 if width else 760,
        deviceScaleFactor=1,
        mobile=bool(width),
    )
    await devtools.call("Page.navigate", session, url=url)
    await wait_for(devtools, session, "typeof window.chatState === 'object'")
    return session


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("CHATRUNS_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


async def screenshot(devtools, session, path, dark=False):
    features = [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]
    await devtools.call("Emulation.setEmulatedMedia", session, features=features)
    shot = await devtools.call("Page.captureScreenshot", session, format="png")
    path.write_bytes(base64.b64decode(shot["data"]))


TURNS = """JSON.stringify(Array.from(document.querySelectorAll('#transcript > li')).map(li => ({
  run: li.dataset.runId,
  user: li.querySelector('.msg.user').textContent,
  reply: li.querySelector('.msg.assistant .text').textContent,
  badge: li.querySelector('.badge').textContent,
  note: li.querySelector('.note').textContent,
})))"""

STATE = (
    "JSON.stringify({text: chatState.text, status: chatState.status, ended: chatState.ended, "
    "opens: chatState.opens, duplicates: chatState.duplicates, gaps: chatState.gaps, "
    "runId: chatState.runId, errors: chatState.errors, lost: chatState.lost, "
    "unreachable: chatState.unreachable, banner: document.getElementById('banner').hidden ? '' "
    ": document.getElementById('banner').textContent, "
    "error: document.getElementById('error').textContent})"
)


async def page_state(devtools, session):
    return json.loads(await evaluate(devtools, session, STATE))


async def turns(devtools, session):
    return json.loads(await evaluate(devtools, session, TURNS))


async def type_and_send(devtools, session, prompt, button="send"):
    await evaluate(
        devtools,
        session,
        f"document.getElementById('prompt').value = {json.dumps(prompt)};"
        f"document.getElementById({json.dumps(button)}).click(); true",
    )


def no_errors(devtools, state):
    assert state["errors"] == []
    assert devtools.exceptions == []


async def test_page_survives_drops_and_reloads(start_server, shots):
    # The first two replies are held open until their cuts and reload are done.
    model = HeldModel(DROPS_MODEL, holds=2)
    running = await start_server(model=model, sse_retry_ms=100)
    async with browser() as devtools:
        session = await open_tab(devtools, f"{running.url}/#c=browser-1")
        assert await evaluate(devtools, session, "chatState.conversationId") == "browser-1"

        # 1. A turn from the page; every stream is cut three times mid-reply.
        first_prompt = "hello from chromium"
        await type_and_send(devtools, session, first_prompt)
        first = "".join(scripted_reply(first_prompt, DROPS_MODEL.reply_tokens))
        drops = 0
        second_tab = None
        for fraction in (0.15, 0.4, 0.7):
            await wait_for(
                devtools,
                session,
                f"chatState.text.length > {int(len(first) * fraction)}"
                " && chatState.connection === 'open'",
            )
            opens = await evaluate(devtools, session, "chatState.opens")
            drops += running.server.disconnect_streams()
            # EventSource reconnects by itself (Last-Event-ID) before the next cut.
            await wait_for(devtools, session, f"chatState.opens > {opens}")
            if fraction == 0.15:
                await wait_for(devtools, session, "chatState.resumedFrom !== null")
                await screenshot(devtools, session, shots / "reconnected.png")
            if second_tab is None:
                # A second tab on the same conversation joins mid-reply (and is cut too).
                second_tab = await open_tab(devtools, f"{running.url}/#c=browser-1")
        assert drops >= 3
        model.release()
        for tab in (session, second_tab):
            await wait_for(devtools, tab, "chatState.ended && chatState.status === 'completed'")
            state = await page_state(devtools, tab)
            assert state["text"] == first
            assert state["duplicates"] == 0
            assert state["gaps"] == []
            shown = await turns(devtools, tab)
            assert [(t["user"], t["reply"]) for t in shown] == [(first_prompt, first)]
        state = await page_state(devtools, session)
        assert state["opens"] >= 4  # the first connection and three automatic reconnects
        assert running.server.stats().streams_resumed >= 3

        # 2. A second turn; reload the page mid-reply: both turns shown once, it completes.
        second_prompt = "and now reload"
        await type_and_send(devtools, session, second_prompt)
        second = "".join(scripted_reply(second_prompt, DROPS_MODEL.reply_tokens, turn=2, history=2))
        await wait_for(
            devtools,
            session,
            f"chatState.turns.length === 2 && chatState.text.length > {len(second) // 3}",
        )
        run_id = (await page_state(devtools, session))["runId"]
        await devtools.call("Page.reload", session)
        await wait_for(
            devtools, session, "typeof window.chatState === 'object' && chatState.opens > 0"
        )
        record = running.server.registry.get("browser-1")
        assert record.run_id == run_id
        assert record.status.is_active, "the reload happened mid-stream"
        model.release()
        await wait_for(devtools, session, "chatState.ended && chatState.status === 'completed'")
        shown = await turns(devtools, session)
        assert [(t["user"], t["reply"]) for t in shown] == [
            (first_prompt, first),
            (second_prompt, second),
        ]
        assert shown[1]["run"] == run_id
        state = await page_state(devtools, session)
        assert state["duplicates"] == 0
        await screenshot(devtools, session, shots / "two-turns.png")

        # 3. Sending while a reply streams offers the policies; "Queue it" queues it.
        await type_and_send(devtools, session, "third, streaming")
        await wait_for(devtools, session, "chatState.turns.length === 3 && !chatState.ended")
        await type_and_send(devtools, session, "fourth, queued")
        await wait_for(devtools, session, "!document.getElementById('busy-choice').hidden")
        await screenshot(devtools, session, shots / "policy-choice.png")
        await evaluate(devtools, session, "document.getElementById('send-enqueue').click(); true")
        await wait_for(
            devtools,
            session,
            "chatState.turns.length === 4 && chatState.turns[3].status === 'queued'",
        )
        await screenshot(devtools, session, shots / "queued.png")
        await wait_for(devtools, session, "chatState.turns[3].status === 'completed'", 30)
        shown = await turns(devtools, session)
        assert [t["user"] for t in shown] == [
            first_prompt,
            second_prompt,
            "third, streaming",
            "fourth, queued",
        ]
        assert shown[3]["reply"].startswith("[turn 4, 6 earlier messages")
        no_errors(devtools, await page_state(devtools, session))


async def test_page_restart_unreachable_bad_id_and_narrow(nursery, tmp_path, shots):
    db = tmp_path / "history.db"
    # The first reply is held open: the server's stop always cuts it mid-reply.
    model = HeldModel(MODEL, holds=1)

    async def start(port):
        settings = ServerSettings(port=port, db=str(db), graceful_timeout=2.0, sse_retry_ms=200)
        return await start_serving(nursery, model, settings)

    running, stopped = await start(0)
    port = int(running.url.rsplit(":", 1)[1])
    async with browser() as devtools:
        session = await open_tab(devtools, f"{running.url}/#c=restart-1")
        prompt = "cut me off"
        await type_and_send(devtools, session, prompt)
        await wait_for(devtools, session, "chatState.text.length > 60")
        await screenshot(devtools, session, shots / "streaming.png")

        # The server stops mid-reply: the page says it is unreachable.
        running.shutdown()
        with trio.fail_after(15):
            await stopped.wait()
        await wait_for(devtools, session, "chatState.unreachable")
        state = await page_state(devtools, session)
        assert "unreachable" in state["banner"]
        await screenshot(devtools, session, shots / "server-down.png")

        # It comes back on the same --db: the run was lost, the history is intact.
        running, stopped = await start(port)
        await wait_for(devtools, session, "chatState.lost.length === 1 && !chatState.unreachable")
        shown = await turns(devtools, session)
        assert len(shown) == 1 and shown[0]["user"] == prompt
        assert "the run was lost" in shown[0]["note"]
        assert shown[0]["badge"] == "stopped"
        full = "".join(scripted_reply(prompt, MODEL.reply_tokens))
        assert len(shown[0]["reply"]) > 60 and full.startswith(shown[0]["reply"])
        stored = running.server.history
        saved = await stored.store.turns("restart-1")
        assert saved[0].reply.text == shown[0]["reply"]
        assert saved[0].reply.status == "cancelled"
        await screenshot(devtools, session, shots / "run-lost.png")
        no_errors(devtools, await page_state(devtools, session))

        # A bad #c= is refused with a message; nothing can be sent.
        bad = await open_tab(devtools, f"{running.url}/#c=" + "bad%20id%3Cb%3E!")
        state = await page_state(devtools, bad)
        assert "is not a valid conversation id" in state["error"]
        assert "bad id<b>!" in state["error"]  # shown as text, not markup
        assert await evaluate(devtools, bad, "document.getElementById('send').disabled")
        assert await evaluate(devtools, bad, "chatState.conversationId") == ""
        await screenshot(devtools, bad, shots / "bad-id.png")
        # The field: a valid id opens that conversation; a bad one is refused the same way.
        set_field = (
            "(v, kind) => { const f = document.getElementById('conversation'); f.value = v;"
            " f.dispatchEvent(new Event(kind)); return true; }"
        )
        await evaluate(devtools, bad, f"({set_field})('restart-1', 'change')")
        await wait_for(devtools, bad, "chatState.turns.length === 1")
        assert not await evaluate(devtools, bad, "document.getElementById('send').disabled")
        await evaluate(devtools, bad, f"({set_field})('no spaces', 'input')")
        assert await evaluate(devtools, bad, "document.getElementById('send').disabled")
        await evaluate(devtools, bad, f"({set_field})('no spaces', 'change')")
        state = await page_state(devtools, bad)
        assert "“no spaces” is not a valid conversation id" in state["error"]
        assert await evaluate(devtools, bad, "chatState.conversationId") == ""
        assert await evaluate(devtools, bad, "document.getElementById('send').disabled")

        # 390 px wide, light and dark: the layout does not overflow.
        narrow = await open_tab(devtools, f"{running.url}/#c=narrow-1", width=390)
        await type_and_send(devtools, narrow, "a narrow screen " + "with_a_very_long_word" * 6)
        await wait_for(devtools, narrow, "chatState.ended && chatState.status === 'completed'")
        await evaluate(devtools, narrow, "refreshConversations(); true")
        await wait_for(devtools, narrow, "document.querySelectorAll('#conversations li').length")
        for dark in (False, True):
            await screenshot(
                devtools, narrow, shots / f"narrow-{'dark' if dark else 'light'}.png", dark
            )
            width = await evaluate(
                devtools,
                narrow,
                "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)",
            )
            assert width <= 390
        await evaluate(devtools, narrow, "document.getElementById('toggle-list').click(); true")
        await screenshot(devtools, narrow, shots / "narrow-list.png", dark=True)
        assert await evaluate(devtools, narrow, "document.documentElement.scrollWidth") <= 390
        no_errors(devtools, await page_state(devtools, narrow))
    running.shutdown()
    with trio.fail_after(15):
        await stopped.wait()


async def test_page_on_two_workers_behind_a_round_robin_proxy(nursery, tmp_path, shots, own_redis):
    """The page served by two ``trio-chatruns serve --redis`` workers A and B
    behind a round-robin proxy (tests/rr_proxy.py, nginx's stand-in), with an
    API key, as docs/deploy.md sets it up: a full turn cut mid-reply, a
    second turn continuing the conversation, reloaded mid-reply.

    Which worker a request reaches depends on which connection the browser
    reuses, so the test steers the proxy: each cut or reload happens as the
    worker serving the page leaves the proxy's list (as in a rolling
    restart), which forces the resume onto the other worker."""
    proxy = RoundRobinProxy()
    port = await nursery.start(proxy.serve)
    key = "browser-" + os.urandom(12).hex()
    # The scripted model at 25 tokens/s, each reply held open (in whichever
    # worker runs it) until its cut and reload are done.
    release = held_producer_module(tmp_path, holds=1, tokens_per_second=25.0)
    async with serve_processes(
        2,
        "--redis", own_redis.url,
        "--allowed-host", f"127.0.0.1:{port}",  # the Host the page sends: the proxy's
        "--producer", "held_replies:model",
        "--sse-retry-ms", "100",
        "--graceful-timeout", "1",
        cwd=tmp_path,
        env={"TRIO_CHATRUNS_API_KEY": key},
    ) as (a, b):  # fmt: skip
        await _two_workers_scenario(proxy, port, key, a, b, shots, release)
        assert await stop_all([a, b]) == [0, 0]


STREAM_LOGGED = re.escape('"GET /v1/chat/runs/workers-1/stream" 200')


async def _streamed(worker, times=1):
    """Wait until ``worker`` has logged ``times`` streams of the conversation
    (its access log line comes once a stream closes)."""
    await worker.wait_for_match(f"(?s)(?:{STREAM_LOGGED}.*){{{times}}}")


def _streams_of(worker):
    return len(re.findall(STREAM_LOGGED, worker.text))


async def _two_workers_scenario(proxy, port, key, a, b, shots, release):
    only = {worker: [("127.0.0.1", worker.port)] for worker in (a, b)}
    proxy.upstreams = only[a]
    async with browser() as devtools:
        session = await open_tab(devtools, f"http://127.0.0.1:{port}/#c=workers-1&token={key}")
        assert await evaluate(devtools, session, "chatState.conversationId") == "workers-1"

        # 1. A turn, started and streamed through A; mid-reply A leaves the
        # proxy and every connection is cut: the page resumes through B.
        first_prompt = "hello, two workers"
        await type_and_send(devtools, session, first_prompt)
        first = "".join(scripted_reply(first_prompt, 90))
        await wait_for(
            devtools,
            session,
            f"chatState.text.length > {len(first) // 4} && chatState.connection === 'open'",
        )
        opens = await evaluate(devtools, session, "chatState.opens")
        proxy.upstreams = only[b]
        assert proxy.cut_all() >= 1
        await wait_for(devtools, session, f"chatState.opens > {opens}")
        await screenshot(devtools, session, shots / "workers-resumed.png")
        release()
        await wait_for(devtools, session, "chatState.ended && chatState.status === 'completed'")
        state = await page_state(devtools, session)
        assert state["text"] == first
        assert state["duplicates"] == 0
        assert state["gaps"] == []
        await _streamed(a)
        await _streamed(b)
        await screenshot(devtools, session, shots / "workers-first-turn.png")

        # 2. A second turn, sent through B: the model gets the first turn (A's
        # run saved it in the history in Redis). Mid-reply B leaves the proxy
        # and the page is reloaded: it comes back through A and resumes.
        second_prompt = "and a second turn"
        await type_and_send(devtools, session, second_prompt)
        second = "".join(scripted_reply(second_prompt, 90, turn=2, history=2))
        await wait_for(
            devtools,
            session,
            f"chatState.turns.length === 2 && chatState.text.length > {len(second) // 4}",
        )
        run_id = (await page_state(devtools, session))["runId"]
        streams_on_a = _streams_of(a)
        proxy.upstreams = only[a]
        proxy.cut_all()
        await devtools.call("Page.reload", session)
        await wait_for(
            devtools, session, "typeof window.chatState === 'object' && chatState.opens > 0"
        )
        await wait_for(devtools, session, "chatState.text.length > 0")
        assert not await evaluate(devtools, session, "chatState.ended"), "reloaded mid-reply"
        await screenshot(devtools, session, shots / "workers-reloaded.png")
        release()
        await wait_for(devtools, session, "chatState.ended && chatState.status === 'completed'")
        shown = await turns(devtools, session)
        assert [(t["user"], t["reply"]) for t in shown] == [
            (first_prompt, first),
            (second_prompt, second),
        ]
        assert shown[1]["run"] == run_id
        no_errors(devtools, await page_state(devtools, session))
        await screenshot(devtools, session, shots / "workers-two-turns.png")
    await _streamed(a, streams_on_a + 1)  # the reloaded page streamed from A
    # Stream tokens from one worker opened streams on the other: no 401 anywhere.
    assert '" 401 ' not in a.text + b.text
