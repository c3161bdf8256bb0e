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
  const cf = request.cf;
  const href = request.url;
  const start = href.indexOf("//") + 2;
  let end = start;
  while (end < href.length) {
    const c = href.charCodeAt(end);
    if (c === 47 || c === 63 || c === 35) break;  // / ? #
    end++;
  }
  let host = href.slice(start, end);
  if (host.indexOf("@") >= 0) host = host.slice(host.lastIndexOf("@") + 1);
  // as routing normalises the Host (tunnel.config.patterns.normalize_host): no port, no trailing dots
  if (host.startsWith("[")) host = host.slice(0, host.indexOf("]") + 1);
  else {
    const colon = host.indexOf(":");
    if (colon >= 0 && colon === host.lastIndexOf(":")) host = host.slice(0, colon);
    while (host.endsWith(".")) host = host.slice(0, -1);
  }
  let rest = end < href.length ? href.slice(end) : "";
  const hash = rest.indexOf("#");
  if (hash >= 0) rest = rest.slice(0, hash);
  const q = rest.indexOf("?");
  return {
    request,
    method: request.method,
    origin: href.slice(0, end),
    hostname: host.toLowerCase(),  // URL hosts are ASCII (punycode), so this is the ASCII lowercase
    path: (q < 0 ? rest : rest.slice(0, q)) || "/",
    search: q < 0 ? "" : rest.slice(q),
    clientIp: cf !== undefined && cf !== null && typeof cf.clientIp === "string" ? cf.clientIp : "",
    ip: undefined,        // the client IP parsed, on first use (null when it does not parse)
    out: null,            // the request to forward once the policy changed its headers
    headers: null,        // out's headers (changed in place)
    rewritten: false,     // true once url_rewrite changed the path
    service: undefined,   // the ingress service an ab_split chose
    responseOps: [],      // [op, name, value] applied to the final response
    cookies: undefined,   // parsed Cookie header, on first use
    query: undefined,     // parsed query string, on first use
  };
}
''')

_helper("header", (), r'''
// A request header (names are lower-case constants), as changed so far by the policy.
function header(st, name) {
  return (st.headers || st.request.headers).get(name);
}
''')

_helper("requestHeaders", (), r'''
// The headers of the request to forward, made mutable on the first change: one copy of the
// original request (new Request(request) carries the body along unread).
function requestHeaders(st) {
  if (st.headers === null) {
    st.out = new Request(st.request);
    st.headers = st.out.headers;
  }
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

_helper("glob", (), r'''
// A path glob as a matcher: "*" matches any run of characters; the whole text must match.
// Compiled once per isolate into the cheapest test it allows (===, startsWith, endsWith).
function glob(pattern) {
  const parts = pattern.split("*");
  if (parts.length === 1) return (text) => text === pattern;
  const first = parts[0], last = parts[parts.length - 1], fixed = first.length + last.length;
  if (parts.length === 2) {
    if (last === "") return (text) => text.startsWith(first);
    if (first === "") return (text) => text.endsWith(last);
    return (text) => text.length >= fixed && text.startsWith(first) && text.endsWith(last);
  }
  const middle = parts.slice(1, -1);
  return (text) => {
    if (text.length < fixed || !text.startsWith(first) || !text.endsWith(last)) return false;
    let pos = first.length;
    const end = text.length - last.length;
    for (let i = 0; i < middle.length; i++) {
      const found = text.indexOf(middle[i], pos);
      if (found < 0 || found + middle[i].length > end) return false;
      pos = found + middle[i].length;
    }
    return true;
  };
}
''')

_helper("matchHost", (), r'''
function matchHost(st, patterns) {
  const host = st.hostname;
  for (let i = 0; i < patterns.length; i++) {
    const p = patterns[i];
    if (p.startsWith("*.") ? host.length > p.length - 1 && host.endsWith(p.slice(1)) : host === p) return true;
  }
  return false;
}
''')

_helper("matchPath", ("glob",), r'''
// globs: matchers made by glob() once per isolate.
function matchPath(st, globs) {
  const path = st.path;
  for (let i = 0; i < globs.length; i++) if (globs[i](path)) return true;
  return false;
}
''')

_helper("matchMethod", (), r'''
function matchMethod(st, methods) {
  return methods.includes(st.method.toUpperCase());
}
''')

_helper("matchHeaders", ("header", "glob"), r'''
// pairs: [lower-case name, matcher] made once per isolate.
function matchHeaders(st, pairs) {
  for (let i = 0; i < pairs.length; i++) {
    const value = header(st, pairs[i][0]);
    if (value === null || !pairs[i][1](value)) return false;
  }
  return true;
}
''')

_helper("queryValues", (), r'''
// Every value of a query parameter (form-decoded, as URLSearchParams does), in order; [] if absent.
function queryValues(st, name) {
  if (st.query === undefined) {
    st.query = new Map();
    if (st.search.length > 1) {
      const decode = (s) => {
        if (s.indexOf("+") >= 0) s = s.replace(/\+/g, " ");
        if (s.indexOf("%") < 0) return s;
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
  }
  return st.query.get(name) || NO_VALUES;
}
const NO_VALUES = [];
''')

_helper("matchQuery", ("queryValues", "glob"), r'''
// Each pair must match, and a pair matches when any value of a repeated parameter does.
function matchQuery(st, pairs) {
  for (let i = 0; i < pairs.length; i++) {
    const values = queryValues(st, pairs[i][0]), test = pairs[i][1];
    let found = false;
    for (let j = 0; j < values.length && !found; j++) found = test(values[j]);
    if (!found) return false;
  }
  return true;
}
''')

_helper("matchCookies", ("cookie", "glob"), r'''
function matchCookies(st, pairs) {
  for (let i = 0; i < pairs.length; i++) {
    const value = cookie(st, pairs[i][0]);
    if (value === undefined || !pairs[i][1](value)) return false;
  }
  return true;
}
''')

_helper("parseIp", (), r'''
// An IP address as {v4, w}: v4 the IPv4 address as an unsigned integer (for IPv4 and IPv4-mapped
// IPv6 text; -1 otherwise) and w its eight 16-bit words (IPv4 as ::ffff:a.b.c.d); null when the
// text is not an address.
function parseIp(text) {
  let s = String(text || "").trim();
  if (s.startsWith("[")) s = s.slice(1, s.indexOf("]") < 0 ? s.length : s.indexOf("]"));
  if (s.indexOf("%") >= 0) s = s.slice(0, s.indexOf("%"));
  const v4 = (t) => {
    const parts = t.split(".");
    if (parts.length !== 4) return -1;
    let value = 0;
    for (let i = 0; i < 4; i++) {
      const p = parts[i];
      if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return -1;
      const n = Number(p);
      if (n > 255) return -1;
      value = value * 256 + n;
    }
    return value;
  };
  if (s.indexOf(":") < 0) {
    const value = v4(s);
    return value < 0 ? null : { v4: value, w: null };
  }
  const lastColon = s.lastIndexOf(":");
  if (s.indexOf(".", lastColon) >= 0) {
    const value = v4(s.slice(lastColon + 1));
    if (value < 0) return null;
    s = s.slice(0, lastColon + 1) + (value >>> 16).toString(16) + ":" + (value & 0xffff).toString(16);
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
  const mapped = words[0] === 0 && words[1] === 0 && words[2] === 0 && words[3] === 0 && words[4] === 0 &&
    words[5] === 0xffff;
  return { v4: mapped ? words[6] * 65536 + words[7] : -1, w: words };
}
''')

_helper("cidrs", ("parseIp",), r'''
// CIDR strings (validated by the config model) compiled once per isolate: a network inside
// ::ffff:0:0/96 (IPv4, or IPv4-mapped IPv6) as {v4: true, base, mask} over the 32 IPv4 bits,
// any other as {v4: false, words, prefix} over 128 bits.
function cidrs(list) {
  return list.map((text) => {
    const slash = text.indexOf("/");
    const addr = parseIp(slash < 0 ? text : text.slice(0, slash));
    const isV4Text = text.indexOf(":") < 0;
    const bits = slash < 0 ? (isV4Text ? 32 : 128) : Number(text.slice(slash + 1));
    const prefix = isV4Text ? bits + 96 : bits;
    if (addr.v4 >= 0 && prefix >= 96) {
      const n = prefix - 96;
      const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
      return { v4: true, base: (addr.v4 & mask) >>> 0, mask };
    }
    return { v4: false, words: addr.w || ipWords(addr), prefix };
  });
}
''')

_helper("ipIn", ("parseIp",), r'''
// The eight 16-bit words of a parsed address (IPv4 as ::ffff:a.b.c.d).
function ipWords(ip) {
  if (ip.w === null) ip.w = [0, 0, 0, 0, 0, 0xffff, ip.v4 >>> 16, ip.v4 & 0xffff];
  return ip.w;
}

// Whether the parsed address ip lies in one of the compiled networks.
function ipIn(ip, networks) {
  if (ip === null) return false;
  for (let k = 0; k < networks.length; k++) {
    const net = networks[k];
    if (net.v4) {
      if (ip.v4 >= 0 && ((ip.v4 & net.mask) >>> 0) === net.base) return true;
      continue;
    }
    const words = ipWords(ip);
    let left = net.prefix, i = 0;
    for (; left > 0; i++, left -= 16) {
      const mask = left >= 16 ? 0xffff : (0xffff << (16 - left)) & 0xffff;
      if ((words[i] & mask) !== (net.words[i] & mask)) break;
    }
    if (left <= 0) return true;
  }
  return false;
}

// The client IP parsed, once per request.
function clientIp(st) {
  if (st.ip === undefined) st.ip = parseIp(st.clientIp);
  return st.ip;
}
''')

_helper("matchClientIp", ("ipIn",), r'''
function matchClientIp(st, networks) {
  return ipIn(clientIp(st), networks);
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
  for (let i = 0; i < pairs.length; i++) h.set(pairs[i][0], pairs[i][1]);
}
''')

_helper("addRequestHeaders", ("requestHeaders",), r'''
function addRequestHeaders(st, pairs) {
  const h = requestHeaders(st);
  for (let i = 0; i < pairs.length; i++) h.append(pairs[i][0], pairs[i][1]);
}
''')

_helper("removeRequestHeaders", ("requestHeaders",), r'''
function removeRequestHeaders(st, names) {
  const h = requestHeaders(st);
  for (let i = 0; i < names.length; i++) h.delete(names[i]);
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

_helper("ipRestriction", ("ipIn", "refuse"), r'''
function ipRestriction(st, allow, deny) {
  const ip = clientIp(st);
  const ok = ip !== null ? !ipIn(ip, deny) && (allow.length === 0 || ipIn(ip, allow)) : allow.length === 0;
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
    const key = stickyKey(st, f.sticky_by);
    bucket = f.buckets.get(key);  // the hash is a pure function of the key: remembered (bounded)
    if (bucket === undefined) {
      bucket = fnv1a(f.name + "\u0000" + key) % 10000;
      if (f.buckets.size >= 4096) f.buckets.clear();
      f.buckets.set(key, bucket);
    }
  }
  requestHeaders(st).set(f.header, bucket < f.percent * 100 ? "on" : "off");
}
''')

_helper("outgoing", (), r'''
// The request to forward: the original one, the copy whose headers the policy changed, or (after
// a url_rewrite) a new Request for the new URL; each carries the body along unread.
function outgoing(st) {
  const r = st.out || st.request;
  return st.rewritten ? new Request(st.origin + st.path + st.search, r) : r;
}
''')

_helper("finish", (), r'''
// Apply the response header changes the policy decided, in order, to the final response.
function finish(st, response) {
  const ops = st.responseOps;
  if (ops.length === 0) return response;
  const out = new Response(response.body, response);
  const h = out.headers;
  for (let i = 0; i < ops.length; i++) {
    const o = ops[i];
    if (o[0] === "set") h.set(o[1], o[2]);
    else if (o[0] === "append") h.append(o[1], o[2]);
    else h.delete(o[1]);
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
