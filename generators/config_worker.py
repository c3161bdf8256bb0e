"""``config-<version>``: one config version's routing table and its introspection.

``GET /config`` → ``{"version", "hash", "config"}`` (credential hashes redacted);
``GET /route?host=H&path=P`` → ``{"version", "tunnel", "hostname", "ingress"}`` or 404.
The contract is in docs/workers.md; :mod:`generators.routing` gives the same answers in Python.
"""

from __future__ import annotations

import json

from generators.code import GeneratedWorker, finish_module, freeze, js
from generators.keys import config_key
from generators.routing import build_routing_table
from tunnel.config.document import content_hash, redact_document
from tunnel.config.model import Config

MAIN_MODULE = "config.js"

_BODY = r'''
const VERSION = %(version)s;
// The /config answer, as JSON text (config strings never become object keys in JavaScript).
const CONFIG_JSON = %(config_json)s;
const TABLE = %(table)s;

const EXACT = new Map(TABLE.exact);
const WILDCARDS = new Map(TABLE.wildcards); // ".suffix" -> tunnel
const INGRESS = new Map(TABLE.ingress);

export default {
  fetch(request) {
    const url = splitUrl(request.url);
    if (request.method !== "GET" && request.method !== "HEAD") return json(405, { error: "method not allowed" });
    if (url.pathname === "/config") {
      return new Response(CONFIG_JSON, { status: 200, headers: { "Content-Type": "application/json" } });
    }
    if (url.pathname === "/route") {
      const host = url.searchParams.get("host") || "";
      const answer = route(host, url.searchParams.get("path") || "/");
      return answer === null ? json(404, { error: "unknown hostname", host }) : json(200, answer);
    }
    return json(404, { error: "not found", paths: ["/config", "/route?host=H&path=P"] });
  },
};

// Path and query parameters of an absolute URL, split by hand (cheaper than URL in QuickJS);
// parameters are form-decoded like URLSearchParams, the first value of a name wins.
function splitUrl(href) {
  let rest = href.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/, "");
  if (rest.indexOf("#") >= 0) rest = rest.slice(0, rest.indexOf("#"));
  const q = rest.indexOf("?");
  const params = new Map();
  const decode = (s) => {
    s = s.replace(/\+/g, " ");
    try { return decodeURIComponent(s); } catch (e) { return s; }
  };
  for (const part of (q < 0 ? "" : rest.slice(q + 1)).split("&")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const key = decode(eq < 0 ? part : part.slice(0, eq));
    if (!params.has(key)) params.set(key, eq < 0 ? "" : decode(part.slice(eq + 1)));
  }
  return { pathname: (q < 0 ? rest : rest.slice(0, q)) || "/", searchParams: { get: (k) => (params.has(k) ? params.get(k) : null) } };
}

function json(status, value) {
  return new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json" } });
}

// Lowercase (ASCII only), drop spaces/tabs around, the port and trailing dots ("[::1]:8080" keeps "[::1]").
function normalizeHost(host) {
  let h = host.replace(/^[ \t]+|[ \t]+$/g, "").replace(/[A-Z]+/g, (c) => c.toLowerCase());
  if (h.startsWith("[")) return h.indexOf("]") >= 0 ? h.slice(0, h.indexOf("]") + 1) : h;
  if (h.split(":").length === 2) h = h.slice(0, h.indexOf(":"));
  while (h.endsWith(".")) h = h.slice(0, -1);
  return h;
}

function globMatch(glob, text) {
  const parts = glob.split("*");
  if (parts.length === 1) return text === glob;
  const first = parts[0], last = parts[parts.length - 1];
  if (text.length < first.length + last.length || !text.startsWith(first) || !text.endsWith(last)) return false;
  let pos = first.length;
  const end = text.length - last.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const found = text.indexOf(parts[i], pos);
    if (found < 0 || found + parts[i].length > end) return false;
    pos = found + parts[i].length;
  }
  return true;
}

function hostMatches(pattern, host) {
  return pattern.startsWith("*.") ? host.length > pattern.length - 1 && host.endsWith(pattern.slice(1)) : host === pattern;
}

function route(rawHost, path) {
  const host = normalizeHost(rawHost);
  let tunnel = EXACT.get(host), hostname = host;
  // Otherwise the longest "*." suffix: one lookup per label.
  for (let dot = host.indexOf(".", 1); tunnel === undefined && dot > 0; dot = host.indexOf(".", dot + 1)) {
    tunnel = WILDCARDS.get(host.slice(dot));
    hostname = "*" + host.slice(dot);
  }
  if (tunnel === undefined) return null;
  let ingress = null;
  for (const rule of INGRESS.get(tunnel) || []) {
    if ((rule.hostname === null || hostMatches(rule.hostname, host)) && (rule.path === null || globMatch(rule.path, path))) {
      ingress = { index: rule.index, service: rule.service };
      break;
    }
  }
  return { version: VERSION, tunnel, hostname, ingress };
}
'''


def config_answer(config: Config, version: int) -> dict:
    """The ``GET /config`` answer of a version: ``{"version", "hash", "config"}`` (redacted)."""
    doc = config.document
    return {"version": version, "hash": content_hash(doc), "config": redact_document(doc)}


def generate_config_worker(config: Config, version: int) -> GeneratedWorker:
    """Compile one config version into its ``config-<version>`` worker (pure, deterministic)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"a config version is a positive integer, not {version!r}")
    answer = json.dumps(config_answer(config, version), ensure_ascii=True, separators=(",", ":"))
    table = build_routing_table(config).as_data()
    body = _BODY % {"version": js(version), "config_json": js(answer), "table": js(table)}
    key = config_key(version)
    text, digest = finish_module(key, f"routing table of config version {version}", body.lstrip("\n"))
    return GeneratedWorker(key=key, main_module=MAIN_MODULE, modules=freeze({MAIN_MODULE: text}), hash=digest)
