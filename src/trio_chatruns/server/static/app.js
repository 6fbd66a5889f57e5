// trio-chatruns chat page: plain JS, no build step, no dependencies, nothing from a CDN.
//
// The transcript comes from the history API (GET /v1/conversations/{id}/messages);
// replies stream over Server-Sent Events, one run at a time, pinned by run_id.
// Resume protocol (docs/server.md): every SSE frame has `id: <run_id>:<seq>`, so when
// the connection drops EventSource reconnects by itself with Last-Event-ID and the
// server replays exactly the frames after it. `end` closes the stream; a stream that
// closes without it (a 204 for a run the server no longer holds, an HTTP error) is
// reconciled against the history: the reply was saved, is still running, or was lost.
//
// Text from the server is only ever inserted with textContent / text nodes, never as
// HTML. Every request goes through apiFetch() and every stream URL through
// streamUrl(), so authentication is added in one place.
"use strict";

const $ = (id) => document.getElementById(id);
const ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
const ID_RULE = "1–128 characters of A–Z a–z 0–9 . _ : -";
const ACTIVE = new Set(["queued", "running", "waiting_approval", "waiting_hitl"]);
const POLL_MS = 2500;
const LIST_MS = 10000;

// ---------------------------------------------------------------- requests

// The one function that talks to the API: auth.js's apiFetch (the API key; a 401
// asks for it once), plus JSON bodies. Throws a TypeError when the server cannot be
// reached (fetch's network error); marks the page reachable otherwise.
async function apiFetch(path, options = {}) {
  const init = { ...options, headers: { ...(options.headers || {}) } };
  if ("json" in init) {
    init.body = JSON.stringify(init.json);
    init.headers["Content-Type"] = "application/json";
    delete init.json;
  }
  let response;
  try {
    response = await window.chatAuth.apiFetch(path, init);
  } catch (err) {
    setUnreachable(true);
    throw err;
  }
  setUnreachable(false);
  return response;
}

// apiFetch, then the JSON body ({} when there is none): {status, ok, body}.
async function apiJson(path, options) {
  const response = await apiFetch(path, options);
  const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
  return { status: response.status, ok: response.ok, body };
}

// The one function that builds stream URLs. EventSource cannot send headers, so
// auth.js adds a short-lived stream token when the server needs a key.
async function streamUrl(conversationId, params) {
  const query = new URLSearchParams(params);
  await window.chatAuth.streamQuery(conversationId, query);
  return `/v1/chat/runs/${encodeURIComponent(conversationId)}/stream?${query}`;
}

const runPath = (cid) => `/v1/chat/runs/${encodeURIComponent(cid)}`;
const conversationPath = (cid) => `/v1/conversations/${encodeURIComponent(cid)}`;

// ---------------------------------------------------------------- state

// Everything the page knows; exposed as window.chatState for tests and debugging.
const state = {
  conversationId: "",  // the conversation shown ("" when none: a bad id was refused)
  turns: [],           // oldest first: {runId, prompt, text, status, lastSeq, ended, ...}
  byRun: new Map(),
  streaming: null,     // the turn whose stream is open
  es: null,
  connection: "closed",
  reconnecting: false,
  unreachable: false,
  opens: 0,            // stream connections opened (reconnects included)
  duplicates: 0,       // frames received twice and ignored (should stay 0)
  gaps: [],            // [from, to] ranges the server no longer had
  resumedFrom: null,   // the seq the last reconnect resumed after
  lost: [],            // run ids the server no longer knew (e.g. after a restart)
  errors: [],          // unexpected errors caught (should stay empty)
  loadToken: 0,        // bumped on every conversation switch: late answers are dropped
  pendingPrompt: null, // the prompt waiting for a policy choice
};
window.chatState = state;
// Shortcuts to the newest turn, for tests and the status line.
for (const key of ["text", "status", "ended", "runId", "lastSeq"]) {
  Object.defineProperty(state, key, {
    get() {
      const last = state.turns[state.turns.length - 1];
      if (!last) return { text: "", status: "idle", ended: true, runId: null, lastSeq: 0 }[key];
      return last[key];
    },
  });
}

function note(err) {
  state.errors.push(String(err && err.stack ? err.stack : err));
}

// ---------------------------------------------------------------- banner, errors

let bannerTimer = null;
let bannerReconnecting = false;  // the banner says "reconnecting": clear it once that is over
function showBanner(text, kind = "", hideAfterMs = 0) {
  const banner = $("banner");
  clearTimeout(bannerTimer);
  bannerReconnecting = false;
  banner.textContent = text;
  banner.className = kind;
  banner.hidden = !text;
  if (hideAfterMs) bannerTimer = setTimeout(() => { banner.hidden = true; }, hideAfterMs);
}

function setError(message) { $("error").textContent = message || ""; }

function setUnreachable(value) {
  if (value === state.unreachable) return;
  state.unreachable = value;
  if (value) {
    showBanner("The server is unreachable. Retrying…", "bad");
  } else {
    showBanner("The server is back.", "ok", 3000);
    schedulePoll(0);  // catch up: the transcript may have changed meanwhile
  }
}

// ---------------------------------------------------------------- rendering

const STATUS_TEXT = {
  queued: "queued",
  running: "streaming…",
  waiting_approval: "waiting for approval",
  waiting_hitl: "waiting for you",
  completed: "done",
  failed: "failed",
  cancelled: "stopped",
  lost: "lost",
};

// Keep the newest text in view, unless the reader scrolled up to read.
function nearBottom() {
  const box = $("transcript");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}
function scrollToEnd() { const box = $("transcript"); box.scrollTop = box.scrollHeight; }

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function addTurn(runId, prompt, status) {
  const turn = {
    runId, prompt, status, text: "", lastSeq: 0, ended: !ACTIVE.has(status),
    currentTool: null, error: null, gap: null, lostNote: null, tools: [],
  };
  const li = element("li", "turn");
  li.dataset.runId = runId;
  const user = element("div", "msg user", prompt);
  const reply = element("div", "msg assistant");
  const text = element("div", "text");
  const tools = element("ul", "tools");
  const noteEl = element("div", "note");
  const meta = element("div", "meta");
  const badge = element("span", "badge");
  meta.append(badge);
  reply.append(text, tools, noteEl, meta);
  li.append(user, reply);
  turn.els = { li, reply, text, tools, note: noteEl, badge };
  state.turns.push(turn);
  state.byRun.set(runId, turn);
  const follow = nearBottom();
  $("transcript").append(li);  // appended below the last turn; nothing is wiped
  renderTurn(turn);
  if (follow || state.turns.length === 1) scrollToEnd();
  return turn;
}

function renderTurn(turn) {
  const { badge, note: noteEl, reply, tools } = turn.els;
  let label = STATUS_TEXT[turn.status] || turn.status;
  if (turn.currentTool && !turn.ended) label += ` · ${turn.currentTool}`;
  badge.textContent = label;
  badge.className = "badge " + turn.status;
  reply.classList.toggle("pending", !turn.ended);
  tools.hidden = turn.tools.length === 0;
  let text = "";
  let bad = false;
  if (turn.lostNote) { text = turn.lostNote; bad = true; }
  else if (turn.status === "failed") { text = turn.error || "The reply failed."; bad = true; }
  else if (turn.status === "cancelled" && turn.error) text = turn.error;
  else if (turn.status === "queued") text = "Queued: it starts when the reply before it ends.";
  if (turn.gap) text += (text ? " " : "") + `Frames ${turn.gap.from}–${turn.gap.to} were no longer available.`;
  noteEl.textContent = text;
  noteEl.className = bad ? "note bad" : "note";
  noteEl.hidden = !text;
}

function setText(turn, text) {
  turn.text = text;
  turn.els.text.textContent = text;
}

function setTools(turn, calls) {
  turn.tools = [];
  turn.els.tools.textContent = "";
  for (const call of calls || []) {
    addToolLine(turn, `${call.name}(${JSON.stringify(call.arguments)})`);
    if (call.result !== undefined) addToolLine(turn, `→ ${JSON.stringify(call.result)}`);
  }
}

function addToolLine(turn, text) {
  turn.tools.push(text);
  turn.els.tools.append(element("li", "", text));
}

function renderStatusLine() {
  const turn = state.streaming || state.turns[state.turns.length - 1];
  const status = $("status");
  status.textContent = turn ? turn.status : "idle";
  $("tool").textContent = (turn && !turn.ended && turn.currentTool) || "—";
  $("seq").textContent = String(turn ? turn.lastSeq : 0);
  $("connection").textContent = state.connection;
  $("interrupt").disabled = !activeTurn();
  $("send").disabled = !state.conversationId || fieldDirty();
  $("delete-chat").disabled = !state.conversationId;
  $("empty").hidden = state.turns.length > 0 || !state.conversationId;
}

function activeTurn() { return state.turns.find((t) => !t.ended) || null; }

function fieldDirty() { return $("conversation").value.trim() !== state.conversationId; }

// ---------------------------------------------------------------- frames

function applyFrame(turn, frame) {
  switch (frame && frame.type) {
    case "token":
      turn.text += frame.text;
      turn.els.text.append(frame.text);  // a text node: never parsed as HTML
      break;
    case "status":
      turn.status = frame.status;
      turn.currentTool = frame.current_tool;
      break;
    case "tool_call":
      addToolLine(turn, `${frame.name}(${JSON.stringify(frame.arguments)})`);
      break;
    case "tool_call_delta":
      if (frame.name) turn.currentTool = frame.name;
      break;
    case "tool_result":
      turn.currentTool = null;
      addToolLine(turn, `→ ${JSON.stringify(frame.content)}`);
      break;
    case "done": turn.status = "completed"; turn.currentTool = null; break;
    case "error": turn.status = "failed"; turn.error = frame.message; break;
    case "interrupted": turn.status = "cancelled"; turn.currentTool = null; break;
  }
  renderTurn(turn);
}

// ---------------------------------------------------------------- streams

function closeStream() {
  if (state.es) { state.es.close(); state.es = null; }
  state.streaming = null;
  state.connection = "closed";
  state.reconnecting = false;
}

// Stream the oldest turn that has not ended (one stream at a time; queued runs
// wait on the server until they start).
function pump() {
  if (!state.es && !state.streaming) {
    const next = state.turns.find((t) => !t.ended);
    if (next) openStream(next);
  }
  renderStatusLine();
}

let openings = 0;  // openStream() calls: a later one supersedes one still getting a token

async function openStream(turn) {
  closeStream();
  const cid = state.conversationId;
  const token = state.loadToken;
  const opening = ++openings;
  const params = { run_id: turn.runId };
  if (turn.lastSeq) params.after = String(turn.lastSeq);
  state.streaming = turn;  // reserved: pump() opens nothing else meanwhile
  state.connection = "connecting";
  let url;
  try {
    url = await streamUrl(cid, params);
  } catch (err) {
    if (opening !== openings) return;
    state.streaming = null;
    state.connection = "closed";
    if (!state.unreachable) setError(`Cannot open the stream: ${err.message}`);
    setTimeout(() => { if (token === state.loadToken) pump(); }, 2000);
    return;
  }
  if (opening !== openings || token !== state.loadToken || state.streaming !== turn) return;
  const es = new EventSource(url);
  state.es = es;
  state.streaming = turn;
  state.connection = "connecting";

  es.onopen = () => {
    if (es !== state.es) return;
    state.opens += 1;
    state.connection = "open";
    turn.retries = 0;
    if (state.reconnecting || bannerReconnecting) {
      state.resumedFrom = turn.lastSeq;
      showBanner(`Reconnected: resumed after seq ${turn.lastSeq}.`, "ok", 4000);
    }
    state.reconnecting = false;
    renderStatusLine();
  };
  es.onmessage = (message) => {
    if (es !== state.es) return;
    const event = JSON.parse(message.data);
    if (event.run_id !== turn.runId) return;  // never mix runs
    if (event.seq <= turn.lastSeq) { state.duplicates += 1; return; }
    turn.lastSeq = event.seq;
    const follow = nearBottom();
    applyFrame(turn, event.frame);
    if (follow) scrollToEnd();
    renderStatusLine();
  };
  es.addEventListener("gap", (message) => {
    if (es !== state.es) return;
    const gap = JSON.parse(message.data);
    state.gaps.push([gap.from, gap.to]);
    turn.els.text.append(element("span", "gap", ` [frames ${gap.from}–${gap.to} no longer available] `));
    turn.lastSeq = Math.max(turn.lastSeq, gap.to);
  });
  es.addEventListener("end", (message) => {
    if (es !== state.es) return;
    const record = JSON.parse(message.data);
    closeStream();
    if (record && record.run_id === turn.runId) {
      endTurn(turn, record.status, record.last_error);
      if (record.reason === "shutdown") markShutdown(turn);
      // The history holds the saved reply (e.g. "interrupted by a server shutdown").
      setTimeout(() => refreshTurn(turn, 5), 300);
    } else {
      reconcile(turn);  // the server no longer holds the run: ask the history
    }
    pump();
    refreshConversations();
  });
  es.onerror = () => {
    if (es !== state.es) return;
    if (es.readyState === EventSource.CLOSED) {
      // A 204 (that run is over or unknown) or an HTTP error: EventSource gave up.
      closeStream();
      reconcile(turn);
    } else {
      state.connection = "reconnecting";
      state.reconnecting = true;
      if (!state.unreachable) {
        showBanner(`Connection lost: reconnecting, to resume after seq ${turn.lastSeq}…`);
        bannerReconnecting = true;
      }
      probe();
    }
    renderStatusLine();
  };
  renderStatusLine();
}

function endTurn(turn, status, error) {
  // The turn is over: a "reconnecting" banner left from its stream would be stale.
  if (bannerReconnecting && !state.es) showBanner("");
  turn.status = status;
  turn.ended = true;
  turn.currentTool = null;
  if (error) turn.error = error;
  renderTurn(turn);
  renderStatusLine();
}

function markShutdown(turn) {
  turn.lostNote = "The server shut down during this reply: the run was lost. What had streamed is kept.";
  if (!state.lost.includes(turn.runId)) state.lost.push(turn.runId);
  renderTurn(turn);
}

// Is the server there? Shows the unreachable banner when not (apiFetch does it).
async function probe() {
  try { await apiFetch("/v1/stats"); } catch (err) { /* the banner says so */ }
}

// A stream closed without `end`: the history says what became of the reply.
async function reconcile(turn) {
  const token = state.loadToken;
  let messages;
  try {
    messages = await fetchMessages(state.conversationId);
  } catch (err) {
    setTimeout(() => { if (token === state.loadToken) reconcile(turn); }, 1500);
    return;
  }
  if (token !== state.loadToken) return;
  const reply = messages.find((m) => m.role === "assistant" && m.run_id === turn.runId);
  if (!reply || reply.status === "lost") {
    turn.lostNote = "The server restarted during this reply: the run was lost." +
      (turn.text ? " What had streamed is kept." : "");
    if (!state.lost.includes(turn.runId)) state.lost.push(turn.runId);
    endTurn(turn, "lost");
  } else if (ACTIVE.has(reply.status)) {
    // Still running (e.g. the stream token expired, or we were refused for a
    // while): resume by hand from the last seq, soon, backing off if it repeats.
    turn.status = reply.status;
    const delay = Math.min(150 * 2 ** (turn.retries || 0), 3000);
    turn.retries = (turn.retries || 0) + 1;
    setTimeout(() => { if (token === state.loadToken) pump(); }, delay);
    return;
  } else {
    applyStored(turn, reply);
  }
  mergeMessages(messages);
  pump();
}

// After `end`: pick up what the history saved (its error, a gap), a few tries.
async function refreshTurn(turn, tries) {
  const token = state.loadToken;
  let messages;
  try {
    messages = await fetchMessages(state.conversationId);
  } catch (err) {
    setTimeout(() => { if (token === state.loadToken) refreshTurn(turn, tries); }, 1500);
    return;
  }
  if (token !== state.loadToken) return;
  const reply = messages.find((m) => m.role === "assistant" && m.run_id === turn.runId);
  if (reply && !ACTIVE.has(reply.status)) applyStored(turn, reply);
  else if (tries > 1) setTimeout(() => refreshTurn(turn, tries - 1), 500);
}

// ---------------------------------------------------------------- history

async function fetchMessages(cid) {
  const { ok, status, body } = await apiJson(`${conversationPath(cid)}/messages`);
  if (!ok) throw new Error(body.error || `HTTP ${status}`);
  return body.messages;
}

// A stored reply: the history is the truth once the run has ended.
function applyStored(turn, message) {
  if (state.streaming === turn) return;  // its stream will deliver the end itself
  // The saved reply has everything the run produced, unless its start was trimmed
  // (`gap`) and this page had streamed it from the start.
  const keepOurs = message.gap && turn.text.length > message.content.length;
  if (!keepOurs && turn.text !== message.content) setText(turn, message.content);
  if (!keepOurs) setTools(turn, message.tool_calls);
  turn.gap = message.gap || null;
  if (message.status === "lost") {
    turn.lostNote = "The server stopped before this reply was saved: the run was lost.";
  } else if (message.error === "interrupted by a server shutdown") {
    markShutdown(turn);
  }
  endTurn(turn, message.status, message.error);
}

// Add the turns we do not show yet, and update those whose reply we only know
// from the history. Never removes or reorders what is shown.
function mergeMessages(messages) {
  for (const message of messages) {
    let turn = state.byRun.get(message.run_id);
    if (message.role === "user") {
      if (!turn) addTurn(message.run_id, message.content, "queued");
      continue;
    }
    if (!turn) continue;
    if (ACTIVE.has(message.status)) {
      if (turn.ended && !turn.lastSeq) { turn.ended = false; }
      if (!turn.lastSeq) { turn.status = message.status; renderTurn(turn); }
    } else if (!turn.ended || (!turn.text && message.content)) {
      applyStored(turn, message);
    }
  }
}

async function loadConversation() {
  const token = state.loadToken;
  const cid = state.conversationId;
  if (!cid) return;
  let messages;
  try {
    messages = await fetchMessages(cid);
  } catch (err) {
    if (!state.unreachable) setError(`Could not load the conversation: ${err.message}`);
    return;
  }
  if (token !== state.loadToken) return;
  const first = state.turns.length === 0;
  mergeMessages(messages);
  if (first) scrollToEnd();
  pump();
}

// ---------------------------------------------------------------- conversations

async function refreshConversations() {
  let body;
  try {
    ({ body } = await apiJson("/v1/conversations?limit=100"));
  } catch (err) { return; }
  const list = $("conversations");
  list.textContent = "";
  const conversations = body.conversations || [];
  $("conversations-empty").hidden = conversations.length > 0;
  for (const conversation of conversations) {
    const li = element("li");
    const button = element("button", "", conversation.title || conversation.id);
    button.type = "button";
    button.title = conversation.id;
    const when = new Date(conversation.updated_at);
    button.append(element("small", "", `${conversation.turns} turn${conversation.turns === 1 ? "" : "s"} · ${when.toLocaleString()}`));
    if (conversation.id === state.conversationId) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => {
      document.body.classList.remove("show-list");
      selectConversation(conversation.id);
    });
    li.append(button);
    list.append(li);
  }
}

function clearTranscript() {
  closeStream();
  state.turns = [];
  state.byRun = new Map();
  $("transcript").textContent = "";
}

// Show conversation `id` (from the list, the field, #c= or "new chat"). A bad id is
// refused with a message, and nothing can be sent until a valid one is shown.
function selectConversation(id) {
  setError("");
  const field = $("conversation");
  field.value = id;
  if (!ID_RE.test(id)) {
    field.setAttribute("aria-invalid", "true");
    state.loadToken += 1;
    clearTranscript();
    state.conversationId = "";
    setError(`“${id.slice(0, 140)}” is not a valid conversation id (${ID_RULE}). ` +
      "Pick a conversation or start a new chat.");
    renderStatusLine();
    return false;
  }
  field.removeAttribute("aria-invalid");
  if (id === state.conversationId) { renderStatusLine(); return true; }
  state.loadToken += 1;
  clearTranscript();
  state.conversationId = id;
  hideChoice();
  history.replaceState(null, "", "#c=" + encodeURIComponent(id));
  renderStatusLine();
  loadConversation();
  refreshConversations();
  return true;
}

function randomId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return "chat-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------- sending

function showChoice(prompt) {
  state.pendingPrompt = prompt;
  $("busy-choice").hidden = false;
  scrollToEnd();
}

function hideChoice() {
  state.pendingPrompt = null;
  $("busy-choice").hidden = true;
}

// Send `prompt` to the conversation shown. Without a policy and with a reply
// streaming, ask first: stop it and send, or queue it.
async function send(prompt, policy) {
  setError("");
  const cid = state.conversationId;
  if (!cid || fieldDirty()) {
    setError("Open a valid conversation first (press Enter in the conversation field).");
    return null;
  }
  if (!policy && activeTurn()) { showChoice(prompt); return null; }
  let answer;
  try {
    answer = await apiJson(runPath(cid), {
      method: "POST", json: { prompt, if_active: policy || "reject" },
    });
  } catch (err) {
    setError("Not sent: the server is unreachable.");
    return null;
  }
  if (cid !== state.conversationId) return null;  // switched meanwhile; it shows when back
  const { status, body } = answer;
  if (status === 202) {
    hideChoice();
    $("prompt").value = "";
    const turn = state.byRun.get(body.run_id) || addTurn(body.run_id, prompt, body.status || "running");
    if (!turn.lastSeq) { turn.status = body.status || turn.status; turn.ended = false; renderTurn(turn); }
    scrollToEnd();  // the sender wants to see the reply
    pump();
    refreshConversations();
    return body.run_id;
  }
  if (status === 409) {
    showChoice(prompt);       // another tab started a reply: offer the policies
    loadConversation();
    return null;
  }
  setError(body.error || `Not sent: HTTP ${status}`);
  return null;
}

async function interrupt() {
  const cid = state.conversationId;
  if (!cid) return;
  try {
    const { ok, status, body } = await apiJson(`${runPath(cid)}/interrupt`, { method: "POST" });
    if (!ok && status !== 404) setError(body.error || `HTTP ${status}`);
  } catch (err) { /* the banner says the server is unreachable */ }
}

let deleteArmed = null;
async function deleteConversation() {
  const cid = state.conversationId;
  if (!cid) return;
  const button = $("delete-chat");
  if (deleteArmed !== cid) {
    deleteArmed = cid;
    button.textContent = "Really delete?";
    setTimeout(() => { deleteArmed = null; button.textContent = "Delete"; }, 4000);
    return;
  }
  deleteArmed = null;
  button.textContent = "Delete";
  try {
    const { ok, status, body } = await apiJson(conversationPath(cid), { method: "DELETE" });
    if (!ok && status !== 404) { setError(body.error || `HTTP ${status}`); return; }
  } catch (err) { return; }
  selectConversation(randomId());
  refreshConversations();
}

// ---------------------------------------------------------------- polling

// While no stream is open, follow the conversation (turns sent from other tabs)
// and notice when the server comes and goes.
let pollTimer = null;
function schedulePoll(ms) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, ms);
}

async function poll() {
  try {
    if (!state.es && state.conversationId) await loadConversation();
    else await probe();
  } catch (err) { note(err); }
  schedulePoll(POLL_MS);
}

// ---------------------------------------------------------------- start

function init() {
  window.addEventListener("error", (e) => note(e.error || e.message));
  window.addEventListener("unhandledrejection", (e) => note(e.reason));
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("c");
  selectConversation(fromHash === null ? randomId() : fromHash);

  const field = $("conversation");
  field.addEventListener("input", () => {
    const value = field.value.trim();
    if (ID_RE.test(value)) field.removeAttribute("aria-invalid");
    else field.setAttribute("aria-invalid", "true");
    renderStatusLine();
  });
  field.addEventListener("change", () => selectConversation(field.value.trim()));
  window.addEventListener("hashchange", () => {
    const id = new URLSearchParams(location.hash.slice(1)).get("c");
    if (id !== null && id !== state.conversationId) selectConversation(id);
  });
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = $("prompt").value.trim();
    if (prompt) send(prompt);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("prompt-form").requestSubmit();
  });
  $("send-interrupt").addEventListener("click", () => send(state.pendingPrompt || $("prompt").value.trim(), "interrupt"));
  $("send-enqueue").addEventListener("click", () => send(state.pendingPrompt || $("prompt").value.trim(), "enqueue"));
  $("send-cancel").addEventListener("click", hideChoice);
  $("interrupt").addEventListener("click", interrupt);
  $("new-chat").addEventListener("click", () => selectConversation(randomId()));
  $("delete-chat").addEventListener("click", deleteConversation);
  $("toggle-list").addEventListener("click", () => {
    const shown = document.body.classList.toggle("show-list");
    $("toggle-list").setAttribute("aria-expanded", String(shown));
  });
  refreshConversations();  // also when #c= was refused: the list is how to go on
  setInterval(refreshConversations, LIST_MS);
  schedulePoll(POLL_MS);
}

init();
