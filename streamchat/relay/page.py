"""The page at ``/``: one answer streamed with ``EventSource``, its TTFT and tokens/s, and a Stop button.

Everything is served by the relay itself (no CDN, no fonts, no external URL),
under a Content-Security-Policy that allows nothing else. Text from the model
is only ever set with ``textContent``, never parsed as HTML (OWASP LLM05).
The key, when one is needed, stays in the page's memory: it is exchanged for a
short-lived token, which is what goes in the ``EventSource`` URL.
"""

from __future__ import annotations

import html

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>streamchat relay</title>
<link rel="stylesheet" href="/page.css">
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
</head>
<body data-auth="{auth}" data-model="{model}">
<main>
  <h1>streamchat relay</h1>
  <p class="lede">An answer from <code>{model}</code>, streamed to this page with <code>EventSource</code>
  (Server-Sent Events). Stop closes the connection; the relay then closes its own, upstream.</p>
  <form id="ask">
    <div id="key-row" class="field">
      <label for="key">API key</label>
      <input id="key" type="password" autocomplete="off" spellcheck="false" placeholder="your relay key">
    </div>
    <div class="field">
      <label for="prompt">Prompt</label>
      <textarea id="prompt" rows="3">Why is the sky blue? Answer in three sentences.</textarea>
    </div>
    <div class="row">
      <button id="send" type="submit">Send</button>
      <button id="stop" type="button" disabled>Stop</button>
      <span id="status" role="status">idle</span>
    </div>
  </form>
  <dl class="metrics">
    <div><dt>TTFT</dt><dd id="ttft">&mdash;</dd></div>
    <div><dt>tokens/s</dt><dd id="tps">&mdash;</dd></div>
    <div><dt>tokens</dt><dd id="tokens">0</dd></div>
  </dl>
  <p id="relay-metrics" class="dim"></p>
  <details id="reasoning-box" hidden><summary>Reasoning</summary><pre id="reasoning"></pre></details>
  <pre id="answer" aria-live="polite"></pre>
  <p id="error" class="error" role="alert" hidden></p>
</main>
<script src="/page.js"></script>
</body>
</html>
"""


def page_html(*, auth_required: bool, model: str) -> str:
    return _HTML.format(auth="required" if auth_required else "none", model=html.escape(model, quote=True))


FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#2458d6"/>'
    '<path d="M3 5h10M3 8h7M3 11h4" stroke="#fff" stroke-width="1.6" stroke-linecap="round"/></svg>'
)

PAGE_CSS = """
:root { color-scheme: light dark; --fg: #1d1f23; --bg: #fbfbfa; --dim: #6b6f76; --line: #d9dadc; --accent: #2458d6; --bad: #b3261e; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e6e3; --bg: #17181b; --dim: #9a9ea6; --line: #34363b; --accent: #7aa2ff; --bad: #ff8a80; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 46rem; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
.lede, .dim { color: var(--dim); }
.lede { margin-top: 0; }
.field { display: flex; flex-direction: column; gap: .25rem; margin: .75rem 0; }
label { font-weight: 600; font-size: .9rem; }
input, textarea { font: inherit; color: inherit; background: transparent; border: 1px solid var(--line); border-radius: 6px; padding: .5rem .6rem; }
textarea { resize: vertical; }
.row { display: flex; align-items: center; gap: .6rem; }
button { font: inherit; padding: .45rem 1rem; border-radius: 6px; border: 1px solid var(--line); background: transparent; color: inherit; cursor: pointer; }
button#send { background: var(--accent); border-color: var(--accent); color: #fff; }
button:disabled { opacity: .45; cursor: default; }
#status { color: var(--dim); font-size: .9rem; }
.metrics { display: flex; gap: 2rem; margin: 1.25rem 0 .25rem; }
.metrics div { display: flex; flex-direction: column; }
dt { color: var(--dim); font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
dd { margin: 0; font-size: 1.3rem; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; word-wrap: break-word; font: inherit; margin: 1rem 0; }
#answer { min-height: 4rem; border-top: 1px solid var(--line); padding-top: 1rem; }
#reasoning { color: var(--dim); }
.error { color: var(--bad); }
[hidden] { display: none !important; }
"""

PAGE_JS = r"""
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const authRequired = document.body.dataset.auth === "required";
  if (!authRequired) $("key-row").hidden = true;

  let source = null;
  // Times as the browser sees them: TTFT to the first answer text (reasoning is not the answer),
  // tokens/s over every output event from the first one on.
  let t0 = 0, tFirst = 0, tFirstText = 0, tLast = 0, tokens = 0;
  let text = "", reasoning = "", painted = true;

  function paint() {
    painted = true;
    $("answer").textContent = text;
    if (reasoning) { $("reasoning-box").hidden = false; $("reasoning").textContent = reasoning; }
    $("tokens").textContent = String(tokens);
    if (tFirstText) $("ttft").textContent = ((tFirstText - t0) / 1000).toFixed(2) + " s";
    if (tokens > 1 && tLast > tFirst) $("tps").textContent = ((tokens - 1) / ((tLast - tFirst) / 1000)).toFixed(1);
  }
  // At most one repaint per frame, however fast the tokens come.
  function schedule() { if (painted) { painted = false; requestAnimationFrame(paint); } }

  function setStatus(s) { $("status").textContent = s; }
  function showError(message) { const e = $("error"); e.textContent = message; e.hidden = !message; }
  function busy(on) { $("send").disabled = on; $("stop").disabled = !on; }

  function end(status) {
    if (source) { source.close(); source = null; }
    busy(false);
    setStatus(status);
    paint();
  }

  function output(e) {
    const now = performance.now();
    const data = JSON.parse(e.data);
    if (!tFirst) tFirst = now;
    if (!tFirstText && e.type === "text") tFirstText = now;
    tLast = now;
    tokens += 1;
    if (e.type === "text") text += data.text; else reasoning += data.text;
    schedule();
  }

  async function tokenFor(key) {
    const r = await fetch("/v1/tokens", { method: "POST", headers: { Authorization: "Bearer " + key } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error ? body.error.message : "HTTP " + r.status);
    return body.token;
  }

  async function start(ev) {
    ev.preventDefault();
    if (source) return;
    showError("");
    const prompt = $("prompt").value;
    if (!prompt.trim()) { showError("Type a prompt first."); return; }
    const params = new URLSearchParams({ prompt });
    if (authRequired) {
      const key = $("key").value.trim();
      if (!key) { showError("Enter your API key."); return; }
      try { params.set("token", await tokenFor(key)); } catch (err) { showError(err.message); return; }
    }
    text = ""; reasoning = ""; tokens = 0; tFirst = 0; tFirstText = 0; tLast = 0;
    $("ttft").textContent = "\u2014"; $("tps").textContent = "\u2014"; $("relay-metrics").textContent = "";
    $("reasoning-box").hidden = true;
    paint();
    busy(true);
    setStatus("connecting\u2026");
    t0 = performance.now();
    const es = source = new EventSource("/v1/events?" + params.toString());
    es.addEventListener("open", () => { if (source === es) setStatus("waiting for the first token\u2026"); });
    es.addEventListener("text", (e) => { output(e); setStatus("streaming"); });
    es.addEventListener("reasoning", (e) => { output(e); setStatus("reasoning"); });
    es.addEventListener("metrics", (e) => {
      const m = JSON.parse(e.data);
      if (m.ttft_s != null) $("relay-metrics").textContent = "at the relay: TTFT " + m.ttft_s.toFixed(2) + " s";
    });
    es.addEventListener("done", (e) => {
      const d = JSON.parse(e.data);
      const m = d.metrics || {};
      const parts = ["at the relay: " + d.usage.completion_tokens + " tokens"];
      if (m.ttft_s != null) parts.push("TTFT " + m.ttft_s.toFixed(2) + " s");
      parts.push("finish " + d.finish_reason);
      $("relay-metrics").textContent = parts.join(" \u00b7 ");
      end("done: " + d.finish_reason);
    });
    es.addEventListener("error", (e) => {
      if (source !== es) return;
      if (e.data) { showError(JSON.parse(e.data).message); return; }  // the relay's own error event
      // A connection error. Never let EventSource reconnect: that would ask for the answer again.
      const refused = es.readyState === EventSource.CLOSED && !tFirst;
      if (refused) showError("The relay refused the stream (a limit, or an expired token); the browser's network tab shows why.");
      else if (!tFirst) showError("The connection failed.");
      else showError("The connection broke off; the text so far is kept.");
      end("failed");
    });
  }

  $("ask").addEventListener("submit", start);
  $("stop").addEventListener("click", () => { if (source) end("stopped"); });
})();
"""
