"""The fixed JavaScript the tunnel worker's policy calls: one named helper per piece.

Nothing here comes from config. :func:`helpers_for` returns the helpers a generated policy uses
(with what they depend on), in this file's order, so the output is deterministic and small.
Helpers are function declarations (hoisted); the few constants are only read at request time.
"""

from __future__ import annotations

# name -> (dependencies, code)
HELPERS: dict[str, tuple[tuple[str, ...], str]] = {}


def _helper(name: str, deps: tuple[str, ...], code: str) -> None:
    HELPERS[name] = (deps, code.strip("\n"))


_helper("begin", (), r'''
// Per-request state: the request, the parts of its URL, the client IP the edge vouches for
// (request.cf.clientIp, never a client header), and the changes the policy has decided.
// The URL is split by hand: request.url is already normalised, and this is far cheaper than URL.
function begin(request) {
  const cf = request.cf || {};
  const href = request.url;
  const start = href.indexOf("//") + 2;
  let end = href.slice(start).search(/[/?#]/);
  end = end < 0 ? href.length : start + end;
  let host = href.slice(start, end);
  if (host.indexOf("@") >= 0) host = host.slice(host.lastIndexOf("@") + 1);
  // as routing normalises the Host (tunnel.config.patterns.normalize_host): no port, no trailing dots
  if (host.startsWith("[")) host = host.slice(0, host.indexOf("]") + 1);
  else host = (host.indexOf(":") >= 0 && host.indexOf(":") === host.lastIndexOf(":") ? host.slice(0, host.indexOf(":")) : host).replace(/\.+$/, "");
  let rest = href.slice(end);
  if (rest.indexOf("#") >= 0) rest = rest.slice(0, rest.indexOf("#"));
  const q = rest.indexOf("?");
  return {
    request,
    origin: href.slice(0, end),
    hostname: host.toLowerCase(),  // URL hosts are ASCII (punycode), so this is the ASCII lowercase
    path: (q < 0 ? rest : rest.slice(0, q)) || "/",
    search: q < 0 ? "" : rest.slice(q),
    clientIp: typeof cf.clientIp === "string" ? cf.clientIp : "",
    headers: null,        // a mutable copy of the request headers, made on first change
    rewritten: false,     // true once url_rewrite changed the path
    service: undefined,   // the ingress service an ab_split chose
    responseOps: [],      // [op, name, value] applied to the final response
    cookies: undefined,   // parsed Cookie header, on first use
    query: undefined,     // parsed query string, on first use
  };
}
''')

_helper("header", (), r'''
function header(st, name) {
  return (st.headers || st.request.headers).get(name);
}
''')

_helper("requestHeaders", (), r'''
function requestHeaders(st) {
  if (st.headers === null) st.headers = new Headers(st.request.headers);
  return st.headers;
}
''')

_helper("cookie", ("header",), r'''
function cookie(st, name) {
  if (st.cookies === undefined) {
    st.cookies = new Map();
    const raw = header(st, "cookie");
    if (raw) {
      for (const part of raw.split(";")) {
        const eq = part.indexOf("=");
        if (eq < 0) continue;
        const key = part.slice(0, eq).trim();
        if (!st.cookies.has(key)) st.cookies.set(key, part.slice(eq + 1).trim());
      }
    }
  }
  return st.cookies.get(name);
}
''')

_helper("globMatch", (), r'''
// A path glob: "*" matches any run of characters; the whole text must match.
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
''')

_helper("matchHost", (), r'''
function matchHost(st, patterns) {
  const host = st.hostname;
  for (const p of patterns) {
    if (p.startsWith("*.") ? host.length > p.length - 1 && host.endsWith(p.slice(1)) : host === p) return true;
  }
  return false;
}
''')

_helper("matchPath", ("globMatch",), r'''
function matchPath(st, globs) {
  const path = st.path;
  for (const g of globs) if (globMatch(g, path)) return true;
  return false;
}
''')

_helper("matchMethod", (), r'''
function matchMethod(st, methods) {
  return methods.includes(st.request.method.toUpperCase());
}
''')

_helper("matchHeaders", ("header", "globMatch"), r'''
function matchHeaders(st, pairs) {
  for (const [name, glob] of pairs) {
    const value = header(st, name);
    if (value === null || !globMatch(glob, value)) return false;
  }
  return true;
}
''')

_helper("queryValues", (), r'''
// Every value of a query parameter (form-decoded, as URLSearchParams does), in order; [] if absent.
function queryValues(st, name) {
  if (st.query === undefined) {
    st.query = new Map();
    const decode = (s) => {
      s = s.replace(/\+/g, " ");
      try { return decodeURIComponent(s); } catch (e) { return s; }
    };
    for (const part of st.search.slice(1).split("&")) {
      if (part === "") continue;
      const eq = part.indexOf("=");
      const key = decode(eq < 0 ? part : part.slice(0, eq));
      const value = eq < 0 ? "" : decode(part.slice(eq + 1));
      const list = st.query.get(key);
      if (list === undefined) st.query.set(key, [value]);
      else list.push(value);
    }
  }
  return st.query.get(name) || [];
}
''')

_helper("matchQuery", ("queryValues", "globMatch"), r'''
// Each pair must match, and a pair matches when any value of a repeated parameter does.
function matchQuery(st, pairs) {
  for (const [name, glob] of pairs) {
    if (!queryValues(st, name).some((value) => globMatch(glob, value))) return false;
  }
  return true;
}
''')

_helper("matchCookies", ("cookie", "globMatch"), r'''
function matchCookies(st, pairs) {
  for (const [name, glob] of pairs) {
    const value = cookie(st, name);
    if (value === undefined || !globMatch(glob, value)) return false;
  }
  return true;
}
''')

_helper("parseIp", (), r'''
// An IPv4 or IPv6 address as eight 16-bit words (IPv4 as ::ffff:a.b.c.d), or null.
function parseIp(text) {
  let s = String(text || "").trim();
  if (s.startsWith("[")) s = s.slice(1, s.indexOf("]") < 0 ? s.length : s.indexOf("]"));
  if (s.indexOf("%") >= 0) s = s.slice(0, s.indexOf("%"));
  const v4 = (t) => {
    const parts = t.split(".");
    if (parts.length !== 4) return null;
    const b = [];
    for (const p of parts) {
      if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return null;
      b.push(Number(p));
    }
    return [(b[0] << 8) | b[1], (b[2] << 8) | b[3]];
  };
  if (s.indexOf(":") < 0) {
    const w = v4(s);
    return w === null ? null : [0, 0, 0, 0, 0, 0xffff, w[0], w[1]];
  }
  const lastColon = s.lastIndexOf(":");
  if (s.indexOf(".", lastColon) >= 0) {
    const w = v4(s.slice(lastColon + 1));
    if (w === null) return null;
    s = s.slice(0, lastColon + 1) + w[0].toString(16) + ":" + w[1].toString(16);
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) return null;
  const words = [];
  const push = (g) => {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return false;
    words.push(parseInt(g, 16));
    return true;
  };
  for (const g of head) if (!push(g)) return null;
  if (halves.length === 2) for (let i = head.length + tail.length; i < 8; i++) words.push(0);
  for (const g of tail) if (!push(g)) return null;
  return words;
}
''')

_helper("cidrs", ("parseIp",), r'''
// CIDR strings (validated by the config model) as {words, prefix} over 128 bits.
function cidrs(list) {
  return list.map((text) => {
    const slash = text.indexOf("/");
    const addr = slash < 0 ? text : text.slice(0, slash);
    const v4 = addr.indexOf(":") < 0;
    const bits = slash < 0 ? (v4 ? 32 : 128) : Number(text.slice(slash + 1));
    return { words: parseIp(addr), prefix: v4 ? bits + 96 : bits };
  });
}
''')

_helper("ipIn", ("parseIp",), r'''
function ipIn(ip, networks) {
  const words = parseIp(ip);
  if (words === null) return false;
  for (const net of networks) {
    let left = net.prefix, i = 0;
    for (; left > 0; i++, left -= 16) {
      const mask = left >= 16 ? 0xffff : (0xffff << (16 - left)) & 0xffff;
      if ((words[i] & mask) !== (net.words[i] & mask)) break;
    }
    if (left <= 0) return true;
  }
  return false;
}
''')

_helper("matchClientIp", ("ipIn",), r'''
function matchClientIp(st, networks) {
  return ipIn(st.clientIp, networks);
}
''')

_helper("matchStatus", (), r'''
function matchStatus(response, statuses) {
  for (const s of statuses) {
    if (typeof s === "number" ? response.status === s : Math.floor(response.status / 100) === Number(s[0])) return true;
  }
  return false;
}
''')

_helper("reply", (), r'''
function reply(status, contentType, body, headers) {
  const h = new Headers();
  if (contentType !== null) h.set("Content-Type", contentType);
  for (const [name, value] of headers) h.append(name, value);
  return new Response(body, { status, headers: h });
}
''')

_helper("refuse", ("reply",), r'''
// A refusal by the policy: always says why in Tunnel-Error.
function refuse(status, reason, body, headers) {
  return reply(status, "text/plain; charset=utf-8", body, [["Tunnel-Error", reason], ...headers]);
}
''')

_helper("redirect", (), r'''
function redirect(location, status) {
  return new Response(null, { status, headers: { Location: location } });
}
''')

_helper("setRequestHeaders", ("requestHeaders",), r'''
function setRequestHeaders(st, pairs) {
  const h = requestHeaders(st);
  for (const [name, value] of pairs) h.set(name, value);
}
''')

_helper("addRequestHeaders", ("requestHeaders",), r'''
function addRequestHeaders(st, pairs) {
  const h = requestHeaders(st);
  for (const [name, value] of pairs) h.append(name, value);
}
''')

_helper("removeRequestHeaders", ("requestHeaders",), r'''
function removeRequestHeaders(st, names) {
  const h = requestHeaders(st);
  for (const name of names) h.delete(name);
}
''')

_helper("setResponseHeaders", (), r'''
function setResponseHeaders(st, pairs) {
  for (const [name, value] of pairs) st.responseOps.push(["set", name, value]);
}
''')

_helper("addResponseHeaders", (), r'''
function addResponseHeaders(st, pairs) {
  for (const [name, value] of pairs) st.responseOps.push(["append", name, value]);
}
''')

_helper("removeResponseHeaders", (), r'''
function removeResponseHeaders(st, names) {
  for (const name of names) st.responseOps.push(["delete", name, ""]);
}
''')

_helper("urlRewrite", (), r'''
// Rewrite the path (the query is kept); characters a path cannot hold are percent-encoded.
function urlRewrite(st, pattern, replacement) {
  const next = st.path.replace(pattern, replacement);
  if (next !== st.path) {
    st.path = next.replace(/[^\x21-\x7e]|[?#]/g, (c) => {
      try { return encodeURIComponent(c); } catch (e) { return "%EF%BF%BD"; }
    });
    st.rewritten = true;
  }
}
''')

_helper("sha256Hex", (), r'''
const SHA256_K = [
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

// SHA-256 of an array of bytes, as 64 lowercase hex digits (FIPS 180-4).
function sha256Hex(bytes) {
  const n = bytes.length, total = ((n + 9 + 63) >> 6) << 6;
  const m = new Uint8Array(total);
  m.set(bytes);
  m[n] = 0x80;
  const bitsHigh = Math.floor(n / 0x20000000), bitsLow = (n << 3) >>> 0;
  for (let i = 0; i < 4; i++) {
    m[total - 1 - i] = (bitsLow >>> (8 * i)) & 255;
    m[total - 5 - i] = (bitsHigh >>> (8 * i)) & 255;
  }
  const h = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
  const w = new Array(64);
  const rotr = (x, r) => (x >>> r) | (x << (32 - r));
  for (let off = 0; off < total; off += 64) {
    for (let i = 0; i < 16; i++) {
      const j = off + 4 * i;
      w[i] = (m[j] << 24) | (m[j + 1] << 16) | (m[j + 2] << 8) | m[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i]) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + hh) | 0;
  }
  return h.map((x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
}
''')

_helper("utf8Bytes", (), r'''
// UTF-8 bytes of a string (a lone surrogate becomes U+FFFD, as TextEncoder does).
function utf8Bytes(text) {
  const out = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return out;
}
''')

_helper("hashIn", ("sha256Hex",), r'''
// Whether "sha256:" + SHA-256(bytes) is one of hashes; compares every hash in constant time.
function hashIn(bytes, hashes) {
  const digest = "sha256:" + sha256Hex(bytes);
  let found = 0;
  for (const expected of hashes) {
    let diff = digest.length ^ expected.length;
    for (let i = 0; i < digest.length; i++) diff |= digest.charCodeAt(i) ^ expected.charCodeAt(i % expected.length);
    found |= diff === 0 ? 1 : 0;
  }
  return found === 1;
}
''')

_helper("basicAuth", ("header", "hashIn", "refuse"), r'''
// Basic auth: SHA-256 of the "user:password" bytes against the configured hashes.
function basicAuth(st, realm, hashes) {
  const m = /^Basic[ \t]+([A-Za-z0-9+/=]+)[ \t]*$/i.exec(header(st, "authorization") || "");
  let decoded = null;
  if (m) {
    try { decoded = atob(m[1]); } catch (e) { decoded = null; }
  }
  if (decoded !== null && decoded.indexOf(":") > 0) {
    const bytes = [];
    for (let i = 0; i < decoded.length; i++) bytes.push(decoded.charCodeAt(i) & 255);
    if (hashIn(bytes, hashes)) return null;
  }
  return refuse(401, "basic-auth", "401 Unauthorized\n",
    [["WWW-Authenticate", 'Basic realm="' + realm + '", charset="UTF-8"']]);
}
''')

_helper("bearerAuth", ("header", "hashIn", "utf8Bytes", "refuse"), r'''
// Bearer auth: SHA-256 of the token against the configured hashes.
function bearerAuth(st, realm, hashes) {
  const m = /^Bearer[ \t]+([^ \t]+)[ \t]*$/i.exec(header(st, "authorization") || "");
  if (m && hashIn(utf8Bytes(m[1]), hashes)) return null;
  return refuse(401, "bearer-auth", "401 Unauthorized\n",
    [["WWW-Authenticate", 'Bearer realm="' + realm + '"']]);
}
''')

_helper("ipRestriction", ("ipIn", "parseIp", "refuse"), r'''
function ipRestriction(st, allow, deny) {
  const known = parseIp(st.clientIp) !== null;
  const ok = known ? !ipIn(st.clientIp, deny) && (allow.length === 0 || ipIn(st.clientIp, allow)) : allow.length === 0;
  return ok ? null : refuse(403, "ip-restricted", "403 Forbidden\n", []);
}
''')

_helper("rateLimiter", (), r'''
// Fixed windows per key, kept in this isolate; beyond maxKeys the oldest window is evicted.
function rateLimiter(capacity, perMs, maxKeys) {
  return { capacity, perMs, maxKeys, windows: new Map() };
}
''')

_helper("stickyKey", ("header",), r'''
// The key a rate limit or a feature flag is kept by: "client_ip" or "header:<name>".
function stickyKey(st, by) {
  if (by !== "client_ip") {
    const value = header(st, by.slice(7));
    if (value !== null) return "h:" + value;
  }
  return "ip:" + st.clientIp;
}
''')

_helper("rateLimit", ("stickyKey", "refuse"), r'''
function rateLimit(st, limiter, by) {
  const key = stickyKey(st, by), now = Date.now();
  let w = limiter.windows.get(key);
  if (w === undefined || now - w.start >= limiter.perMs) {
    limiter.windows.delete(key);
    w = { start: now, count: 0 };
    limiter.windows.set(key, w);
    if (limiter.windows.size > limiter.maxKeys) limiter.windows.delete(limiter.windows.keys().next().value);
  }
  if (w.count >= limiter.capacity) {
    const retry = Math.max(1, Math.ceil((w.start + limiter.perMs - now) / 1000));
    return refuse(429, "rate-limited", "429 Too Many Requests\n", [["Retry-After", String(retry)]]);
  }
  w.count++;
  return null;
}
''')

_helper("isPreflight", ("header",), r'''
function isPreflight(st) {
  return st.request.method === "OPTIONS" && header(st, "origin") !== null &&
    header(st, "access-control-request-method") !== null;
}
''')

_helper("cors", ("header", "isPreflight"), r'''
// CORS headers for an allowed Origin (added to the final response).
function cors(st, c) {
  const origin = header(st, "origin");
  if (origin === null) return;
  const any = c.allow_origins.includes("*");
  if (!any && !c.allow_origins.includes(origin)) return;
  const ops = st.responseOps, wildcard = any && !c.allow_credentials;
  ops.push(["set", "Access-Control-Allow-Origin", wildcard ? "*" : origin]);
  if (!wildcard) ops.push(["append", "Vary", "Origin"]);
  if (c.allow_credentials) ops.push(["set", "Access-Control-Allow-Credentials", "true"]);
  if (c.expose_headers.length) ops.push(["set", "Access-Control-Expose-Headers", c.expose_headers.join(", ")]);
  if (isPreflight(st)) {
    ops.push(["set", "Access-Control-Allow-Methods", c.allow_methods.join(", ")]);
    const allowed = c.allow_headers.length ? c.allow_headers.join(", ") : header(st, "access-control-request-headers");
    if (allowed) ops.push(["set", "Access-Control-Allow-Headers", allowed]);
    if (c.max_age !== null) ops.push(["set", "Access-Control-Max-Age", String(c.max_age)]);
  }
}
''')

_helper("preflight", (), r'''
function preflight() {
  return new Response(null, { status: 204 });
}
''')

_helper("abSplit", ("cookie",), r'''
// A/B split: the variant named by the sticky cookie, else a weighted random one (then remembered).
function abSplit(st, cookieName, variants, maxAge) {
  const saved = cookie(st, cookieName);
  let chosen = variants.find((v) => v.name === saved && v.weight > 0);
  if (chosen === undefined) {
    let total = 0;
    for (const v of variants) total += v.weight;
    let r = Math.random() * total;
    chosen = variants.find((v) => v.weight > 0);
    for (const v of variants) {
      if (r < v.weight) { chosen = v; break; }
      r -= v.weight;
    }
    st.responseOps.push(["append", "Set-Cookie", cookieName + "=" + chosen.name + "; Path=/; Max-Age=" + maxAge + "; SameSite=Lax"]);
  }
  st.service = chosen.service;
}
''')

_helper("fnv1a", (), r'''
function fnv1a(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
''')

_helper("featureFlag", ("cookie", "stickyKey", "fnv1a", "requestHeaders"), r'''
// A percentage rollout: each user has a bucket 0..9999 (kept in a cookie, or hashed from a key);
// the flag is on when bucket < percent * 100, so raising the percent only adds users.
function featureFlag(st, f) {
  let bucket;
  if (f.sticky_by === "cookie") {
    const saved = cookie(st, f.cookie);
    bucket = saved !== undefined && /^[0-9]{1,4}$/.test(saved) ? Number(saved) : -1;
    if (bucket < 0) {
      bucket = Math.floor(Math.random() * 10000);
      st.responseOps.push(["append", "Set-Cookie", f.cookie + "=" + bucket + "; Path=/; Max-Age=" + f.max_age + "; SameSite=Lax"]);
    }
  } else {
    bucket = fnv1a(f.name + "\u0000" + stickyKey(st, f.sticky_by)) % 10000;
  }
  requestHeaders(st).set(f.header, bucket < f.percent * 100 ? "on" : "off");
}
''')

_helper("outgoing", (), r'''
// The request to forward: the original one unless the policy changed its headers or path.
// One new Request at most: new Request(request, init) and new Request(url, request) carry the
// body along unread; a Request the worker made has mutable headers.
function outgoing(st) {
  const r = st.request;
  if (!st.rewritten) return st.headers === null ? r : new Request(r, { headers: st.headers });
  const out = new Request(st.origin + st.path + st.search, r);
  if (st.headers !== null) {
    for (const name of [...out.headers.keys()]) out.headers.delete(name);
    for (const [name, value] of st.headers) out.headers.append(name, value);
  }
  return out;
}
''')

_helper("finish", (), r'''
// Apply the response header changes the policy decided, in order, to the final response.
function finish(st, response) {
  if (st.responseOps.length === 0) return response;
  const out = new Response(response.body, response);
  for (const [op, name, value] of st.responseOps) {
    if (op === "set") out.headers.set(name, value);
    else if (op === "append") out.headers.append(name, value);
    else out.headers.delete(name);
  }
  return out;
}
''')


def helpers_for(used: set[str]) -> list[str]:
    """The code of every helper in ``used`` and their dependencies, in this module's order."""
    needed: set[str] = set()
    stack = list(used)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(HELPERS[name][0])
    return [HELPERS[name][1] for name in HELPERS if name in needed]
