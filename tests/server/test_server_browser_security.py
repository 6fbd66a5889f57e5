"""Headless Chromium: a page on another origin cannot drive the server, and the
real page works under its Content-Security-Policy and with an API key.

1. An attacker page, served by a second tiny server on another port (and
   opened as ``http://localhost:<port>``, another origin than the chat
   server's ``http://127.0.0.1:<port>``), tries what the issue found it
   could do: start a run with a ``text/plain`` ``no-cors`` fetch, with a
   JSON fetch, and with an HTML form; interrupt the user's run; list runs;
   read frames over WebSocket and EventSource. Every attempt must fail: no
   run started, the user's run still going, no stream opened, no frame read,
   and the server's log shows it refused each one. The same page against a
   server that lists the attacker's origin with ``--allow-origin`` succeeds,
   which shows the attacks are real and the refusals are what stops them.
2. The bundled page on a server with ``--api-key``: it asks for the key once
   (a dialog), keeps it for the tab, takes it from ``#token=`` when given,
   streams with a stream token through a dropped connection, and logs no CSP
   violation while an injected inline script is blocked.

Uses the DevTools helpers of ``test_server_browser.py``. Screenshots go to
``$CHATRUNS_SCREENSHOTS`` if set, else ``build/screenshots/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route
from test_server_browser import CHROMIUM, DevTools, evaluate, open_chromium
from trio_websocket import wrap_client_stream

from trio_chatruns.server import ScriptedModel
from trio_chatruns.server.producers import scripted_reply

from helpers import HeldModel

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)

SCREENSHOTS = Path(
    os.environ.get("CHATRUNS_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "build" / "screenshots"
)
VICTIM_MODEL = ScriptedModel(tokens_per_second=5.0, reply_tokens=300, pause_tokens=0)
PAGE_MODEL = ScriptedModel(tokens_per_second=40.0, reply_tokens=80, pause_tokens=2)
KEY = "browser-test-key-0123456789"

ATTACKER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Free prizes</title></head>
<body><h1>Nothing to see here</h1><pre id="log"></pre>
<iframe name="sink" hidden></iframe>
<script>
"use strict";
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };

function readWebSocket(url) {
  return new Promise((resolve) => {
    const frames = [];
    const ws = new WebSocket(url);
    ws.onmessage = (m) => { frames.push(m.data); if (frames.length >= 3) ws.close(); };
    ws.onclose = (e) => resolve({ frames, code: e.code });
  });
}

function readEventSource(url) {
  return new Promise((resolve) => {
    const frames = [];
    const es = new EventSource(url);
    const done = () => { es.close(); resolve({ frames }); };
    es.onmessage = (m) => { frames.push(m.data); if (frames.length >= 3) done(); };
    es.onerror = () => { if (es.readyState === EventSource.CLOSED || frames.length) done(); };
  });
}

function postForm(action) {
  // The classic CSRF: a text/plain form whose body happens to be JSON.
  const form = document.createElement("form");
  form.method = "POST";
  form.action = action;
  form.enctype = "text/plain";
  form.target = "sink";
  const input = document.createElement("input");
  input.name = '{"prompt": "form", "x": "';
  input.value = '"}';
  form.appendChild(input);
  document.body.appendChild(form);
  form.submit();
}

async function attempt(name, action) {
  try { return await action(); } catch (err) { return "failed: " + err; }
}

window.attack = async (target, cid) => {
  const api = `${target}/v1/chat/runs`;
  const body = JSON.stringify({ prompt: "spend the operator's API budget" });
  const results = {};
  results.startPlain = await attempt("startPlain", async () => (await fetch(`${api}/${cid}-plain`,
    { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body })).type);
  results.startJson = await attempt("startJson", async () => (await fetch(`${api}/${cid}-json`,
    { method: "POST", headers: { "Content-Type": "application/json" }, body })).status);
  results.interrupt = await attempt("interrupt", async () => (await fetch(
    `${api}/${cid}/interrupt`, { method: "POST", mode: "no-cors" })).type);
  results.list = await attempt("list", async () => await (await fetch(api)).text());
  postForm(`${api}/${cid}-form`);
  results.ws = await readWebSocket(`${target.replace("http", "ws")}/v1/chat/runs/${cid}/ws`);
  results.sse = await readEventSource(`${api}/${cid}/stream`);
  log(JSON.stringify(results));
  return results;
};
</script></body></html>
"""


class RecordingDevTools(DevTools):
    """The DevTools client of ``test_server_browser``, also keeping protocol events."""

    def __init__(self, ws):
        super().__init__(ws)
        self.events = []

    async def reader(self):
        while True:
            message = json.loads(await self._ws.get_message())
            if "id" not in message:
                self.events.append(message)
                continue
            waiter = self._waiting.pop(message["id"], None)
            if waiter is not None:
                waiter[1] = message
                waiter[0].set()


@asynccontextmanager
async def chromium():
    """A headless Chromium and a DevTools connection to it; both closed on exit."""
    user_data_dir = tempfile.mkdtemp(prefix="chatruns-chromium-")
    process = None
    try:
        async with trio.open_nursery() as nursery:
            process, browser_url = await open_chromium(nursery, user_data_dir)
            try:
                hostport, _, path = browser_url.removeprefix("ws://").partition("/")
                host, _, port = hostport.rpartition(":")
                async with (
                    await trio.open_tcp_stream(host, int(port)) as stream,
                    trio.open_nursery() as cdp,
                ):
                    ws = await wrap_client_stream(
                        cdp, stream, host, "/" + path, max_message_size=2**24
                    )
                    devtools = RecordingDevTools(ws)
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


async def settle(devtools, session, expression, seconds=20):
    """Evaluate ``expression`` until truthy, riding over page loads; return its value."""
    with trio.fail_after(seconds):
        while True:
            try:
                value = await evaluate(devtools, session, expression)
            except RuntimeError as exc:  # the page is (re)loading: no context yet
                if "context" not in str(exc):
                    raise
                value = None
            if value:
                return value
            await trio.sleep(0.05)


CSP_WATCH = (
    "window.cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', (e) =>"
    " window.cspViolations.push(e.effectiveDirective + ' ' + e.blockedURI));"
)


async def open_page(devtools, url):
    """A new tab that records CSP violations from its first script on; returns the session."""
    target = await devtools.call("Target.createTarget", url="about:blank")
    attached = await devtools.call(
        "Target.attachToTarget", targetId=target["targetId"], flatten=True
    )
    session = attached["sessionId"]
    await devtools.call("Page.enable", session)
    await devtools.call("Network.enable", session)
    await devtools.call("Page.addScriptToEvaluateOnNewDocument", session, source=CSP_WATCH)
    await devtools.call("Page.navigate", session, url=url)
    return session


async def screenshot(devtools, session, name):
    import base64

    shot = await devtools.call("Page.captureScreenshot", session, format="png")
    folder = trio.Path(SCREENSHOTS)
    await folder.mkdir(parents=True, exist_ok=True)
    await (folder / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


@asynccontextmanager
async def attacker_site():
    """The attacker's server: one page, on another port; yields its ``localhost`` URL."""

    async def page(request):
        return HTMLResponse(ATTACKER_PAGE)

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                Starlette(routes=[Route("/", page)]),
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        port = urls[0].rsplit(":", 1)[1]
        yield f"http://localhost:{port}"
        stop.set()


class Refusals(logging.Handler):
    """Collects ``(method, path, status)`` of each request the security layers refused."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen = set()
        self._changed = trio.Event()

    def emit(self, record):
        if record.getMessage().startswith("refused"):
            self.seen.add(tuple(record.args[:3]))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, refusal):
        while refusal not in self.seen:
            await self._changed.wait()


@pytest.fixture
def refusals():
    handler = Refusals()
    logger = logging.getLogger("trio_chatruns.server.security")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def run_attack(devtools, attacker, target):
    session = await open_page(devtools, attacker + "/")
    await settle(devtools, session, "typeof window.attack === 'function'")
    await evaluate(
        devtools,
        session,
        f"attack({json.dumps(target)}, 'victim').then((r) => {{ window.results = r; }}); true",
    )
    results = json.loads(
        await settle(devtools, session, "window.results && JSON.stringify(window.results)")
    )
    return session, results


async def test_a_page_on_another_origin_cannot_start_interrupt_or_read(start_server, refusals):
    guarded = await start_server(model=VICTIM_MODEL)
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        victim = (await client.post("/v1/chat/runs/victim", json={"prompt": "mine"})).json()

    async with chromium() as devtools, attacker_site() as attacker:
        session, results = await run_attack(devtools, attacker, guarded.url)
        # The form post is a navigation of the hidden frame: wait for its refusal.
        with trio.fail_after(10):
            await refusals.wait_for(("POST", "/v1/chat/runs/victim-form", 403))
        await screenshot(devtools, session, "attacker-page-refused")

    registry = guarded.server.registry
    # Nothing started, the user's run untouched, no stream opened, no frame read.
    for suffix in ("plain", "json", "form"):
        assert registry.get(f"victim-{suffix}") is None
    record = registry.get("victim")
    assert record.run_id == victim["run_id"]
    assert record.status.is_active
    assert guarded.server.stats().streams_opened == 0
    assert results["ws"]["frames"] == []
    assert results["ws"]["code"] == 1006  # the handshake failed
    assert results["sse"]["frames"] == []
    assert results["startJson"].startswith("failed")  # the preflight was refused
    assert results["list"].startswith("failed")
    # The server itself refused each attempt (the browser did not just drop it).
    assert {
        ("POST", "/v1/chat/runs/victim-plain", 403),
        ("OPTIONS", "/v1/chat/runs/victim-json", 403),
        ("POST", "/v1/chat/runs/victim/interrupt", 403),
        ("GET", "/v1/chat/runs", 403),
        ("POST", "/v1/chat/runs/victim-form", 403),
        ("WEBSOCKET", "/v1/chat/runs/victim/ws", 403),
        ("GET", "/v1/chat/runs/victim/stream", 403),
    } <= refusals.seen


async def test_the_same_attack_works_on_an_origin_the_operator_allowed(start_server, refusals):
    """The control: the attacker's origin listed with --allow-origin gets through (and
    the Content-Type check still stops the text/plain start)."""
    async with chromium() as devtools, attacker_site() as attacker:
        trusting = await start_server(model=VICTIM_MODEL, allowed_origins=[attacker])
        async with httpx.AsyncClient(base_url=trusting.url) as client:
            (await client.post("/v1/chat/runs/victim", json={"prompt": "mine"})).raise_for_status()
        _, results = await run_attack(devtools, attacker, trusting.url)
    registry = trusting.server.registry
    assert results["startJson"] == 202
    assert registry.get("victim-json") is not None
    assert registry.get("victim-plain") is None  # 415: not declared JSON
    assert ("POST", "/v1/chat/runs/victim-plain", 415) in refusals.seen
    assert registry.get("victim").status.value == "cancelled"  # interrupted
    assert json.loads(results["list"])["runs"]
    assert results["ws"]["frames"]
    assert results["sse"]["frames"]


STATE = (
    "JSON.stringify({text: chatState.text, status: chatState.status, ended: chatState.ended,"
    " opens: chatState.opens, duplicates: chatState.duplicates, runId: chatState.runId,"
    " dom: (Array.from(document.querySelectorAll('#transcript .msg.assistant .text')).pop()"
    " || {}).textContent,"
    " key: sessionStorage.getItem('trio-chatruns:api-key'), hash: location.hash,"
    " csp: window.cspViolations})"
)


async def state_of(devtools, session):
    return json.loads(await evaluate(devtools, session, STATE))


async def send_prompt(devtools, session, prompt):
    await evaluate(
        devtools,
        session,
        f"document.getElementById('prompt').value = {json.dumps(prompt)};"
        "document.getElementById('send').click(); true",
    )


async def test_the_page_asks_for_the_key_once_and_streams_under_its_csp(start_server):
    # The reply is held open until both cuts are done (never racing its pace).
    model = HeldModel(PAGE_MODEL, holds=1)
    running = await start_server(model=model, api_key=KEY, sse_retry_ms=100)
    async with chromium() as devtools:
        session = await open_page(devtools, f"{running.url}/#c=keyed-1")
        # The page's first API call gets 401: the dialog asks for the key.
        await settle(devtools, session, "!!document.querySelector('dialog#auth-dialog[open]')")
        await screenshot(devtools, session, "page-asks-for-the-key")
        # Cancel: the page stops asking (it keeps polling) and offers a button instead.
        await evaluate(
            devtools,
            session,
            "document.querySelector('dialog#auth-dialog[open] button[type=button]').click(); true",
        )
        seen = await evaluate(devtools, session, "chatAuth.unauthorized")
        await settle(devtools, session, f"chatAuth.unauthorized > {seen}")  # polled again
        assert await evaluate(devtools, session, "!document.querySelector('dialog')")
        await evaluate(devtools, session, "document.getElementById('auth-button').click(); true")
        await settle(devtools, session, "!!document.querySelector('dialog#auth-dialog[open]')")
        fill = (
            "(() => { const d = document.querySelector('dialog#auth-dialog[open]');"
            " d.querySelector('input').value = KEY;"
            " d.querySelector('form').requestSubmit(); return true; })()"
        )
        await evaluate(devtools, session, fill.replace("KEY", json.dumps("wrong-key")))
        await settle(
            devtools,
            session,
            "(document.querySelector('dialog#auth-dialog[open] p') || {}).textContent"
            "?.includes('refused')",
        )
        await evaluate(devtools, session, fill.replace("KEY", json.dumps(KEY)))
        await settle(devtools, session, "!document.querySelector('dialog#auth-dialog')")

        prompt = "a keyed hello"
        await send_prompt(devtools, session, prompt)
        expected = "".join(scripted_reply(prompt, PAGE_MODEL.reply_tokens))
        await settle(devtools, session, f"chatState.text.length > {len(expected) // 3}")
        assert running.server.disconnect_streams() >= 1  # EventSource resumes with its token
        await settle(devtools, session, f"chatState.text.length > {2 * len(expected) // 3}")
        # Past its token's life, a reconnect gets 401: the page gets a new token and
        # reopens from its last seq (rotate() stands in for the minute going by).
        running.server.stream_tokens.rotate()
        assert running.server.disconnect_streams() >= 1
        model.release()
        await settle(devtools, session, "chatState.ended && chatState.status === 'completed'")
        state = await state_of(devtools, session)
        assert state["text"] == expected
        assert state["dom"] == expected
        assert state["duplicates"] == 0
        assert state["opens"] >= 3
        refused_streams = [
            e["params"]["response"]["url"]
            for e in devtools.events
            if e.get("method") == "Network.responseReceived"
            and e["params"]["response"]["status"] == 401
            and "/stream?" in e["params"]["response"]["url"]
        ]
        assert refused_streams, "the reconnect with the old token was refused"
        assert state["key"] == KEY  # kept for the tab
        assert state["csp"] == []
        # The styles came from app.css (no inline style is allowed).
        max_width = "getComputedStyle(document.querySelector('.layout')).maxWidth"
        assert await evaluate(devtools, session, max_width) == "1152px"
        await screenshot(devtools, session, "page-with-key-completed")

        # The CSP is enforced: an injected inline script does not run, and is reported.
        await evaluate(
            devtools,
            session,
            "const s = document.createElement('script'); s.textContent = 'window.pwned = 1';"
            " document.body.appendChild(s); true",
        )
        await settle(devtools, session, "window.cspViolations.length > 0")
        assert await evaluate(devtools, session, "typeof window.pwned") == "undefined"

        # A URL carrying the key (what a generated key's log line shows) asks nothing.
        second = await open_page(devtools, f"{running.url}/#c=keyed-2&token={KEY}")
        await settle(devtools, second, "typeof window.chatState === 'object'")
        await send_prompt(devtools, second, "via the url")
        await settle(devtools, second, "chatState.ended && chatState.status === 'completed'")
        state = await state_of(devtools, second)
        assert state["key"] == KEY
        assert state["hash"] == "#c=keyed-2"  # the key left the address bar
        assert state["csp"] == []
        assert await evaluate(devtools, second, "!document.querySelector('dialog')")
        await screenshot(devtools, second, "page-key-from-url")
