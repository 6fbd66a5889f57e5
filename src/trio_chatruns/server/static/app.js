// trio-chatruns browser client: plain JS, no build step, no dependencies.
//
// Resume protocol (see docs/server.md): every SSE frame has `id: <run_id>:<seq>`,
// so when the connection drops EventSource reconnects by itself and sends the
// last id as Last-Event-ID; the server replays exactly the frames after it.
// `end` closes the stream; a reconnect after the end gets 204, which stops
// EventSource. The page also drops any frame whose seq it already has, so text
// is never doubled, and follows new runs started from other tabs by polling.
"use strict";

const $ = (id) => document.getElementById(id);
const API = "/v1/chat/runs";
// Every API call goes through auth.js (the API key, a 401 asks for it once).
const { apiFetch, streamQuery } = window.chatAuth;
let openings = 0;  // openStream() calls; a later call supersedes one still getting a token
const POLL_MS = 1500;

// Everything the page knows; exposed as window.chatState for tests and debugging.
const state = {
  conversationId: "",
  runId: null,      // the run shown
  lastSeq: 0,       // highest seq applied for that run
  text: "",         // the reply: concatenated token frames
  status: "idle",
  currentTool: null,
  ended: false,     // got `end` (or a 204) for runId
  opens: 0,         // stream connections opened (reconnects included)
  duplicates: 0,    // frames received twice and ignored (should stay 0)
  gaps: [],         // [from, to] ranges the server no longer had
  es: null,
};
window.chatState = state;

function randomId() {
  return "conv-" + Math.random().toString(36).slice(2, 10);
}

function setError(message) { $("error").textContent = message || ""; }

function render() {
  const status = $("status");
  status.textContent = state.status;
  status.className = "status-" + state.status;
  $("tool").textContent = state.currentTool || "—";
  $("seq").textContent = String(state.lastSeq);
  $("run-id").textContent = state.runId || "—";
  $("interrupt").disabled = state.ended || !state.runId;
}

function setConnection(text) { $("connection").textContent = text; }

function resetRun(runId) {
  state.runId = runId;
  state.lastSeq = 0;
  state.text = "";
  state.status = "running";
  state.currentTool = null;
  state.ended = false;
  state.gaps = [];
  $("reply").textContent = "";
  $("tools").textContent = "";
}

function addToolLine(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("tools").appendChild(li);
}

function applyFrame(frame) {
  switch (frame && frame.type) {
    case "token":
      state.text += frame.text;
      $("reply").append(frame.text);
      break;
    case "status":
      state.status = frame.status;
      state.currentTool = frame.current_tool;
      break;
    case "tool_call":
      addToolLine(`tool call ${frame.name}(${JSON.stringify(frame.arguments)})`);
      break;
    case "tool_call_delta":
      if (frame.name) state.currentTool = frame.name;
      break;
    case "tool_result":
      state.currentTool = null;
      addToolLine(`tool result ${frame.name}: ${JSON.stringify(frame.content)}`);
      break;
    case "done": state.status = "completed"; state.currentTool = null; break;
    case "error": state.status = "failed"; setError(frame.message); break;
    case "interrupted": state.status = "cancelled"; state.currentTool = null; break;
  }
}

function applyRecord(record) {
  if (!record || record.run_id !== state.runId) return;
  state.status = record.status;
  state.currentTool = record.current_tool;
  if (record.last_error) setError(record.last_error);
}

function closeStream() {
  if (state.es) { state.es.close(); state.es = null; }
}

// Open (or reopen) the stream of `runId`, resuming after what we already have.
async function openStream(runId) {
  closeStream();
  if (runId !== state.runId) resetRun(runId);
  const opening = ++openings;
  const query = new URLSearchParams({ run_id: runId });
  if (state.lastSeq) query.set("after", String(state.lastSeq));
  try {
    await streamQuery(state.conversationId, query);  // a stream token if the server needs a key
  } catch (err) {
    setError(String(err));
    return;
  }
  if (opening !== openings || runId !== state.runId) return;  // superseded meanwhile
  closeStream();
  const url = `${API}/${encodeURIComponent(state.conversationId)}/stream?${query}`;
  const es = new EventSource(url);
  state.es = es;
  setConnection("connecting");

  es.onopen = () => { state.opens += 1; setConnection("open"); };
  es.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.run_id !== state.runId) return;  // never mix runs
    if (event.seq <= state.lastSeq) { state.duplicates += 1; return; }
    state.lastSeq = event.seq;
    applyFrame(event.frame);
    render();
  };
  es.addEventListener("gap", (message) => {
    const gap = JSON.parse(message.data);
    state.gaps.push([gap.from, gap.to]);
    const mark = document.createElement("span");
    mark.className = "gap";
    mark.textContent = ` [frames ${gap.from}–${gap.to} no longer available] `;
    $("reply").append(mark);
    state.lastSeq = Math.max(state.lastSeq, gap.to);
  });
  es.addEventListener("end", (message) => {
    const end = JSON.parse(message.data);  // the final record and why the stream ends
    applyRecord(end);
    finish(end.reason === "shutdown" ? "ended: the server shut down" : "ended");
  });
  es.onerror = () => {
    if (es !== state.es) return;
    if (es.readyState === EventSource.CLOSED) {
      // A 204 (the run is over) or an HTTP error: EventSource gave up; check why.
      state.es = null;
      setConnection("closed");
      reconcile();
    } else {
      setConnection("reconnecting");  // EventSource retries with Last-Event-ID
    }
  };
  render();
}

function finish(connection) {
  closeStream();
  state.ended = true;
  state.currentTool = null;
  setConnection(connection);
  render();
  refreshRuns();
}

async function fetchRecord() {
  const response = await apiFetch(`${API}/${encodeURIComponent(state.conversationId)}`);
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`GET run: HTTP ${response.status}`);
  return response.json();
}

// The stream closed for good: find out whether the run is over, or resume by hand
// (e.g. the server restarted or refused us for a while).
async function reconcile() {
  try {
    const record = await fetchRecord();
    if (record && record.run_id === state.runId && record.status && !isTerminal(record.status)) {
      setTimeout(() => { if (!state.es) openStream(state.runId); }, 1000);
      return;
    }
    if (record && record.run_id === state.runId) applyRecord(record);
    finish("ended");
  } catch (err) {
    setError(String(err));
    setTimeout(reconcile, 2000);
  }
}

function isTerminal(status) {
  return status === "completed" || status === "failed" || status === "cancelled";
}

// Follow the conversation: when another tab (or this one) starts a run we are not
// streaming, show it. Runs while no stream is open.
async function poll() {
  if (!state.es && state.conversationId) {
    try {
      const record = await fetchRecord();
      if (record && record.run_id !== state.runId) {
        openStream(record.run_id);
      }
    } catch (err) { /* the server may be restarting; try again later */ }
  }
  setTimeout(poll, POLL_MS);
}

async function send(prompt) {
  setError("");
  const response = await apiFetch(`${API}/${encodeURIComponent(state.conversationId)}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt }),
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 202) {
    openStream(body.run_id);
    return body.run_id;
  }
  setError(body.error || `HTTP ${response.status}`);
  if (response.status === 409) {
    const record = await fetchRecord();
    if (record && record.run_id !== state.runId) openStream(record.run_id);
  }
  return null;
}

async function interrupt() {
  const response = await apiFetch(
    `${API}/${encodeURIComponent(state.conversationId)}/interrupt`, { method: "POST" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    setError(body.error || `HTTP ${response.status}`);
  }
}

async function refreshRuns() {
  try {
    const response = await apiFetch(API);
    const { runs } = await response.json();
    const tbody = $("runs");
    tbody.textContent = "";
    for (const run of runs) {
      const tr = document.createElement("tr");
      const cells = [run.conversation_id, run.run_id.slice(0, 12), run.status,
        String(run.latest_seq), run.current_tool || "", run.last_error || ""];
      cells.forEach((value, i) => {
        const td = document.createElement("td");
        td.textContent = value;
        if (i === 1) td.className = "run";
        if (i === 2) td.className = "status-" + value;
        tr.appendChild(td);
      });
      tr.addEventListener("click", () => selectConversation(run.conversation_id));
      tbody.appendChild(tr);
    }
  } catch (err) { /* shown on the next refresh */ }
}

function selectConversation(id) {
  if (!/^[A-Za-z0-9._:-]{1,128}$/.test(id)) { setError("invalid conversation id"); return; }
  closeStream();
  state.conversationId = id;
  state.runId = null;
  resetRun(null);
  state.status = "idle";
  $("conversation").value = id;
  history.replaceState(null, "", "#c=" + encodeURIComponent(id));
  setConnection("closed");
  render();
}

function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("c");
  selectConversation(fromHash || randomId());
  $("conversation").addEventListener("change", (e) => selectConversation(e.target.value.trim()));
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = $("prompt").value.trim();
    if (prompt) send(prompt);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("prompt-form").requestSubmit();
  });
  $("interrupt").addEventListener("click", interrupt);
  $("refresh").addEventListener("click", refreshRuns);
  refreshRuns();
  poll();  // picks up a run already going (e.g. after a reload)
}

init();
