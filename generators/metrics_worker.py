"""``metrics-<id>``: a tunnel's custom metric definitions compiled into a worker.

The edge feeds it finished exchanges (``POST /observe``) and reads the Prometheus exposition of
the custom series (``GET /metrics``); ``GET/POST /state`` carry the counts across a reload.
Series are named ``tunnel_custom_<name>`` (counters ``…_total``; histograms ``…_bucket``,
``…_sum``, ``…_count``), labelled ``tunnel="<id>"`` first, then the configured labels, whose
values are bounded by construction (anything unlisted is ``other``). See docs/workers.md.
"""

from __future__ import annotations

import json
from typing import Any

from generators.code import GeneratedWorker, finish_module, freeze, js
from generators.keys import metrics_key
from tunnel.config.model import MetricDefinition, TunnelConfig

MAIN_MODULE = "metrics.js"
PREFIX = "tunnel_custom_"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")


def exposed_name(definition: MetricDefinition) -> str:
    """The exposition family name of a definition (``tunnel_custom_<name>[_total]``)."""
    return PREFIX + definition.name + ("_total" if definition.type == "counter" else "")


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _le(bound: float) -> str:
    return repr(float(bound))


def metric_data(definition: MetricDefinition) -> dict[str, Any]:
    """What the worker knows of one definition (JSON data; no config string becomes a key)."""
    family = exposed_name(definition)
    labels = []
    for label in definition.labels:
        item: dict[str, Any] = {"name": label.name, "source": label.source}
        if label.source == "path_template":
            item["templates"] = list(label.values)
        elif label.source == "header":
            item["header"] = label.header
            item["allow"] = [[value.lower(), value] for value in label.values]
        labels.append(item)
    data: dict[str, Any] = {
        "name": definition.name, "type": definition.type, "family": family,
        "help": f"# HELP {family} {_help_text(definition.help)}", "type_line": f"# TYPE {family} {definition.type}",
        "labels": labels,
    }
    if definition.type == "histogram":
        data["buckets"] = list(definition.buckets)
        data["le"] = [_le(b) for b in definition.buckets] + ["+Inf"]
    data["signature"] = json.dumps([definition.name, definition.type, [l.name for l in definition.labels],
                                    list(definition.buckets)], separators=(",", ":"))
    return data


_BODY = r'''
const TUNNEL = %(tunnel)s;
const METHODS = %(methods)s;
const METRICS = %(metrics)s;

for (const m of METRICS) {
  for (const l of m.labels) {
    if (l.source === "path_template") l.segments = l.templates.map((t) => [t, t.split("/")]);
    if (l.source === "header") l.lookup = new Map(l.allow);
  }
}
// One Map per metric: JSON of the label values -> {values, count, sum, buckets}.
const SERIES = METRICS.map(() => new Map());

export default {
  async fetch(request) {
    const url = { pathname: request.url.replace(/^[a-z]+:\/\/[^/?#]*/, "").split(/[?#]/)[0] || "/" };
    if (url.pathname === "/observe" && request.method === "POST") {
      let exchanges;
      try { exchanges = JSON.parse(await request.text()); } catch (e) { return text(400, "body must be JSON\n"); }
      for (const ex of Array.isArray(exchanges) ? exchanges : [exchanges]) {
        if (ex !== null && typeof ex === "object") observe(ex);
      }
      return new Response(null, { status: 204 });
    }
    if (url.pathname === "/metrics" && request.method === "GET") {
      return new Response(render(), { status: 200, headers: { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" } });
    }
    if (url.pathname === "/state" && request.method === "GET") {
      return new Response(JSON.stringify(snapshot()), { status: 200, headers: { "Content-Type": "application/json" } });
    }
    if (url.pathname === "/state" && request.method === "POST") {
      let state;
      try { state = JSON.parse(await request.text()); } catch (e) { return text(400, "body must be JSON\n"); }
      return new Response(JSON.stringify({ restored: restore(state) }), { status: 200, headers: { "Content-Type": "application/json" } });
    }
    return text(404, "not found: POST /observe, GET /metrics, GET|POST /state\n");
  },
};

function text(status, body) {
  return new Response(body, { status, headers: { "Content-Type": "text/plain; charset=utf-8" } });
}

function templateMatches(segments, parts) {
  if (segments.length !== parts.length) return false;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i];
    if (s.startsWith(":") ? parts[i] === "" : s !== parts[i]) return false;
  }
  return true;
}

// The value of one label for one exchange: always from a fixed set, else "other".
function labelValue(label, ex) {
  if (label.source === "method") {
    const m = String(ex.method || "").toUpperCase();
    return METHODS.includes(m) ? m : "other";
  }
  if (label.source === "status_class") {
    const s = Number(ex.status);
    return Number.isInteger(s) && s >= 100 && s <= 599 ? Math.floor(s / 100) + "xx" : "other";
  }
  if (label.source === "path_template") {
    const parts = String(ex.path || "").split("?")[0].split("/");
    for (const [template, segments] of label.segments) if (templateMatches(segments, parts)) return template;
    return "other";
  }
  const headers = ex.headers !== null && typeof ex.headers === "object" ? ex.headers : {};
  const value = Object.prototype.hasOwnProperty.call(headers, label.header) ? headers[label.header] : undefined;
  const hit = typeof value === "string" ? label.lookup.get(value.toLowerCase()) : undefined;
  return hit === undefined ? "other" : hit;
}

function observe(ex) {
  METRICS.forEach((m, i) => {
    const values = m.labels.map((l) => labelValue(l, ex));
    const key = JSON.stringify(values);
    let s = SERIES[i].get(key);
    if (m.type === "counter") {
      if (s === undefined) SERIES[i].set(key, (s = { values, count: 0 }));
      s.count += 1;
      return;
    }
    const d = Number(ex.duration_s);
    if (!Number.isFinite(d) || d < 0) return;
    if (s === undefined) SERIES[i].set(key, (s = { values, count: 0, sum: 0, buckets: m.buckets.map(() => 0) }));
    s.count += 1;
    s.sum += d;
    for (let b = 0; b < m.buckets.length; b++) if (d <= m.buckets[b]) s.buckets[b] += 1;
  });
}

function escapeLabel(v) {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelText(m, values) {
  let out = 'tunnel="' + escapeLabel(TUNNEL) + '"';
  m.labels.forEach((l, i) => { out += "," + l.name + '="' + escapeLabel(values[i]) + '"'; });
  return out;
}

function num(x) {
  return Number.isFinite(x) ? String(x) : Number.isNaN(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf";
}

// The Prometheus text exposition (format 0.0.4) of every custom series, sorted by labels.
function render() {
  const lines = [];
  METRICS.forEach((m, i) => {
    lines.push(m.help, m.type_line);
    const series = [...SERIES[i].entries()];
    if (series.length === 0 && m.labels.length === 0) {
      series.push(["[]", m.type === "counter" ? { values: [], count: 0 } : { values: [], count: 0, sum: 0, buckets: m.buckets.map(() => 0) }]);
    }
    series.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    for (const [, s] of series) {
      const labels = labelText(m, s.values);
      if (m.type === "counter") {
        lines.push(m.family + "{" + labels + "} " + num(s.count));
        continue;
      }
      m.le.forEach((le, b) => {
        const count = b < s.buckets.length ? s.buckets[b] : s.count;
        lines.push(m.family + "_bucket{" + labels + ',le="' + le + '"} ' + num(count));
      });
      lines.push(m.family + "_sum{" + labels + "} " + num(s.sum));
      lines.push(m.family + "_count{" + labels + "} " + num(s.count));
    }
  });
  return lines.length === 0 ? "" : lines.join("\n") + "\n";
}

// Counts as JSON, so a new version of this worker can carry them on (POST /state).
function snapshot() {
  return {
    tunnel: TUNNEL,
    metrics: METRICS.map((m, i) => ({ signature: m.signature, series: [...SERIES[i].values()] })),
  };
}

// Restore series of metrics whose definition (name, type, label names, buckets) is unchanged.
function restore(state) {
  let restored = 0;
  const bySignature = new Map();
  for (const entry of (state && Array.isArray(state.metrics)) ? state.metrics : []) {
    if (entry && typeof entry.signature === "string" && Array.isArray(entry.series)) bySignature.set(entry.signature, entry.series);
  }
  METRICS.forEach((m, i) => {
    for (const s of bySignature.get(m.signature) || []) {
      if (!Array.isArray(s.values) || s.values.length !== m.labels.length || typeof s.count !== "number") continue;
      if (m.type === "histogram" && (!Array.isArray(s.buckets) || s.buckets.length !== m.buckets.length)) continue;
      SERIES[i].set(JSON.stringify(s.values), s);
      restored += 1;
    }
  });
  return restored;
}
'''


def generate_metrics_worker(tunnel: TunnelConfig) -> GeneratedWorker:
    """Compile ``tunnel``'s custom metric definitions into its ``metrics-<id>`` worker (pure)."""
    metrics = [metric_data(d) for d in tunnel.metrics]
    body = _BODY % {"tunnel": js(tunnel.name), "methods": js(list(METHODS)), "metrics": _pretty(metrics)}
    key = metrics_key(tunnel.name)
    text, digest = finish_module(key, f"{len(metrics)} custom metric(s) of tunnel {tunnel.name}", body.lstrip("\n"))
    return GeneratedWorker(key=key, main_module=MAIN_MODULE, modules=freeze({MAIN_MODULE: text}), hash=digest)


def _pretty(metrics: list[dict[str, Any]]) -> str:
    """The METRICS literal, one definition per line for a human reader."""
    if not metrics:
        return "[]"
    return "[\n" + "".join(f"  {js(m)},\n" for m in metrics) + "]"
