"""The ``/status`` page: every node at a glance, refreshed every two seconds.

One self-contained HTML document (no CDN, no external file): its script reads
``status.json`` every 2 s and ``status/history.json`` (the canary's last hours, from the
store) every 30 s, both relative to the page so it works under an API Gateway stage prefix
too. The Content-Security-Policy allows exactly the page's own inline script and style
(by hash) and requests to the balancer itself.
"""

from __future__ import annotations

import base64
import hashlib

_STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --muted: #6e7781; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
.muted { color: var(--muted); } .small { font-size: .8em; margin-left: .3em; }
#summary span { margin-right: 1.2rem; }
table { border-collapse: collapse; margin-top: 1rem; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #8884; }
th { font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr[data-state="usable"] .state { color: var(--ok); }
tr[data-state="excluded"] .state { color: var(--bad); }
td:first-child { white-space: nowrap; }
tr.choice td:first-child::before { content: "\\25B6  "; color: var(--ok); }
.reason { font-size: .85em; color: var(--muted); max-width: 22rem; }
svg .line { fill: none; stroke: #0969da; stroke-width: 1.5; }
svg .dot { fill: #0969da; }
svg .bad { fill: var(--bad); }
#err { color: var(--bad); font-weight: 600; }
"""

_SCRIPT = """
"use strict";
const $ = (sel) => document.querySelector(sel);
let history = null;
const esc = (text) => String(text ?? "").replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const ms = (v) => v == null ? "\\u2013" : (v < 10 ? v.toFixed(1) : Math.round(v).toString());
const pct = (v) => v == null ? "\\u2013" : (100 * v).toFixed(1) + "%";

function spark(points) {
  if (!history || !points || !points.length) return '<span class="muted">no history yet</span>';
  const W = 160, H = 32, t0 = history.since, t1 = history.until;
  const top = Math.max(1, ...points.map((p) => p[1] || 0));
  let path = "", bad = "";
  const dot = (x, y) => '<circle class="dot" cx="' + x + '" cy="' + y + '" r="1.5"></circle>';
  for (const [t, v, ok] of points) {
    const x = ((t - t0) / (t1 - t0)) * W;
    if (v != null) {
      const y = H - 2 - (v / top) * (H - 4);
      path += (path ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
      if (points.length < 30) {
        bad += dot(x.toFixed(1), y.toFixed(1));
      }
    }
    if (ok < 1) {
      bad += '<rect class="bad" x="' + (x - 1).toFixed(1) + '" y="0" width="2" height="' + H +
        '" opacity="' + (1 - ok).toFixed(2) + '"></rect>';
    }
  }
  return '<svg width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H +
    '" role="img" aria-label="probe latency, last hours">' + bad + '<path class="line" d="' +
    path + '"></path></svg><span class="muted small">max ' + ms(top) + " ms</span>";
}

function render(doc) {
  const b = doc.balancer;
  const age = b.store && b.store.record_age_s != null
    ? ", newest record " + Math.round(b.store.record_age_s) + " s old" : "";
  const store = b.store ? esc(b.store.url) + (b.store.up ? "" : " (unreachable)") + age : "none";
  $("#summary").innerHTML =
    "<span><b>" + esc(b.chain) + "</b> v" + esc(b.version) + "</span>" +
    "<span>routing: <b>" + esc(b.strategy) + "</b> \\u2014 " + esc(b.how) + "</span>" +
    "<span>choice now: <b id=\\"choice\\">" + esc(b.choice ?? "\\u2013") + "</b></span>" +
    "<span>usable: <b id=\\"usable\\">" + b.usable + " of " + doc.nodes.length + "</b>" +
    (b.failing_open ? " (failing open)" : "") + "</span>" +
    "<span>store: " + store + "</span>" +
    "<span>requests: " + b.requests + ", hedged " + b.hedges + ", retried " + b.retries +
    "</span>" + "<span>cache: " + (b.cache ? "<b id=\\"hits\\">" + pct(b.cache.hit_ratio) +
      "</b> hits, " + b.cache.items + " answers" : "off") + "</span>" +
    (b.groups.length > 1 ? "<span>groups: " + b.groups.map((g) =>
      esc(g.name) + " " + g.usable + "/" + g.nodes).join(", ") + "</span>" : "");
  const rows = doc.nodes.map((n) => {
    const series = history && history.nodes ? history.nodes[n.name] : null;
    return '<tr data-node="' + esc(n.name) + '" data-state="' + esc(n.state) + '"' +
      (n.name === b.choice ? ' class="choice"' : "") + ">" +
      "<td>" + esc(n.name) + (b.groups.length > 1 ? ' <span class="muted small">' +
        esc(n.group) + "</span>" : "") + "</td>" +
      '<td><span class="state">' + esc(n.state) + "</span>" +
      (n.reason ? '<div class="reason">' + esc(n.reason) + "</div>" : "") + "</td>" +
      '<td class="num">' + ms(n.latency_ms.p50) + " / " + ms(n.latency_ms.p99) + "</td>" +
      "<td>" + spark(series) + "</td>" +
      '<td class="num">' + esc(n.head_block ?? "\\u2013") + "</td>" +
      '<td class="num">' + esc(n.lag ?? "\\u2013") + "</td>" +
      "<td>" + esc(n.version ?? "\\u2013") + "</td>" +
      '<td class="num">' + pct(n.error_rate) + "</td>" +
      '<td class="num">' + pct(n.share) + "</td>" +
      '<td class="num">' + n.inflight + "</td>" +
      '<td class="num">' + (n.score == null ? "\\u2013" : n.score.toPrecision(3)) + "</td>" +
      '<td class="reason">' + esc(n.why) + "</td></tr>";
  });
  $("#nodes").innerHTML = rows.join("");
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const answer = await fetch("status.json", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
    $("#err").textContent = "";
  } catch (e) {
    $("#err").textContent = "cannot reach the balancer (" + e.message + "); retrying";
  }
}

async function refreshHistory() {
  try {
    const answer = await fetch("status/history.json?window=3h", {cache: "no-store"});
    history = answer.ok ? await answer.json() : null;
  } catch (e) {
    history = null;
  }
}

refreshHistory().then(refresh);
setInterval(refresh, 2000);
setInterval(refreshHistory, 30000);
"""

_BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>rpcbalancer status</title>
<style>{style}</style>
</head>
<body>
<h1>rpcbalancer <span class="muted small" id="updated">loading\u2026</span></h1>
<div id="summary" class="muted"></div>
<div id="err"></div>
<table>
<thead><tr>
<th>node</th><th>state</th><th>p50 / p99 ms</th><th>probe latency, last 3 h</th>
<th>head block</th><th>lag</th><th>version</th><th>errors</th><th>share</th>
<th>in flight</th><th>score</th><th>why (lower score wins)</th>
</tr></thead>
<tbody id="nodes"></tbody>
</table>
<p class="muted small">Scores and choice are those of the strategy routing now; a node without
a score is ranked by the strategy's own rule. Data: <a href="status.json">status.json</a>,
<a href="metrics">metrics</a>.</p>
<script>{script}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


STATUS_PAGE = _BODY.replace("{style}", _STYLE).replace("{script}", _SCRIPT).encode()
PAGE_SECURITY = (
    (
        "content-security-policy",
        f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
