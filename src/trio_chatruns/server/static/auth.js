// trio-chatruns page: the API key, and the one helper every API call goes through.
//
// A server started with --api-key (or one that made its own key because it listens
// on a non-loopback address) answers 401 to /v1/... without `Authorization: Bearer
// <key>`. The page keeps the key for this tab only (sessionStorage), asks for it once
// (a dialog) when the server answers 401, and takes it from a URL ending in
// `#token=<key>` (what the server prints), removing it from the address bar at once.
// The fragment never leaves the browser: not in a request, a log or a Referer.
//
// EventSource and WebSocket cannot send headers: streamQuery() adds a short-lived
// stream token (`access_token`), minted with the key, valid for one conversation's
// streams. Without a stored key it adds nothing (a server without a key needs none).
//
// Exposed as window.chatAuth = { apiFetch, streamQuery, key, forgetKey, unauthorized }.
"use strict";

window.chatAuth = (() => {
  const STORAGE_KEY = "trio-chatruns:api-key";
  const API = "/v1/chat/runs";

  function key() { return sessionStorage.getItem(STORAGE_KEY); }
  function forgetKey() { sessionStorage.removeItem(STORAGE_KEY); }

  function takeKeyFromUrl() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("token")) return;
    const given = params.get("token");
    if (given) sessionStorage.setItem(STORAGE_KEY, given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }

  // One dialog at a time, shared by every request that got a 401 meanwhile.
  let pending = null;
  function askForKey(message) {
    if (!pending) pending = showDialog(message).finally(() => { pending = null; });
    return pending;
  }

  // Resolves with the key typed in, or null if the user cancelled.
  function showDialog(message) {
    return new Promise((resolve) => {
      const dialog = document.createElement("dialog");
      dialog.id = "auth-dialog";
      const form = document.createElement("form");
      const text = document.createElement("p");
      text.textContent = message;
      const label = document.createElement("label");
      label.textContent = "API key ";
      const input = document.createElement("input");
      input.type = "password";
      input.name = "api-key";
      input.autocomplete = "off";
      input.required = true;
      label.appendChild(input);
      const menu = document.createElement("menu");
      const ok = document.createElement("button");
      ok.type = "submit";
      ok.textContent = "Use this key";
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      menu.append(ok, cancel);
      form.append(text, label, menu);
      dialog.appendChild(form);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        dialog.close("ok");
      });
      cancel.addEventListener("click", () => dialog.close(""));
      dialog.addEventListener("close", () => {  // also Escape
        const entered = dialog.returnValue === "ok" ? input.value.trim() : "";
        dialog.remove();
        resolve(entered || null);
      });
      document.body.appendChild(dialog);
      dialog.showModal();
    });
  }

  // After a Cancel the page stops asking (its polling would reopen the dialog every
  // few seconds) and shows a button to enter the key later instead.
  let declined = false;
  let unauthorized = 0;  // 401 answers seen (for tests and debugging)
  function decline() {
    declined = true;
    if (document.getElementById("auth-button")) return;
    const button = document.createElement("button");
    button.id = "auth-button";
    button.type = "button";
    button.textContent = "Enter API key";
    button.addEventListener("click", async () => {
      button.remove();
      const entered = await askForKey("This server needs its API key:");
      if (entered) {
        sessionStorage.setItem(STORAGE_KEY, entered);
        declined = false;
      } else {
        decline();
      }
    });
    document.body.prepend(button);
  }

  // fetch() with the key; on a 401, ask for the key and try again. Every API call of
  // the page goes through here. Returns the Response (a 401 if the user cancelled).
  async function apiFetch(url, init = {}) {
    for (;;) {
      const sent = key();
      const headers = new Headers(init.headers || {});
      if (sent) headers.set("Authorization", "Bearer " + sent);
      const response = await fetch(url, { ...init, headers });
      if (response.status !== 401) return response;
      unauthorized += 1;
      if (key() !== sent) continue;  // another request got the key meanwhile
      if (declined) return response;
      const entered = await askForKey(sent
        ? "The server refused that API key. Enter the right one:"
        : "This server needs its API key (printed where it was started, or given with --api-key):");
      if (!entered) {
        decline();
        return response;
      }
      sessionStorage.setItem(STORAGE_KEY, entered);
    }
  }

  // Add a stream token to `query` (URLSearchParams) for an EventSource or WebSocket
  // URL of `conversationId`; returns `query`. Throws if the token cannot be had.
  async function streamQuery(conversationId, query) {
    if (!key()) return query;
    const response = await apiFetch(
      `${API}/${encodeURIComponent(conversationId)}/stream-token`, { method: "POST" });
    if (!response.ok) throw new Error(`stream token: HTTP ${response.status}`);
    query.set("access_token", (await response.json()).token);
    return query;
  }

  takeKeyFromUrl();
  return {
    apiFetch, streamQuery, key, forgetKey,
    get unauthorized() { return unauthorized; },
  };
})();
