// A fast path in front of the vendored core-js URL (tunnel.loader). core-js implements the WHATWG
// URL standard faithfully but costs about 100 µs per `new URL()` in QuickJS; an edge worker parses
// `request.url` on every request. URLs in the plain shape `http(s)://host[:port]/path?query#frag`,
// made only of characters that the standard copies unchanged, are split here with one regex
// (about 5 µs); anything else (credentials, IP hosts, IDNA, dot segments, characters that need
// percent-encoding, a base URL) goes to core-js. Setters and searchParams mutations switch the
// object to a core-js URL first. tests/loader/test_loader_url.py checks this path against core-js.
(function () {
  'use strict';
  const G = globalThis;
  const CoreURL = G.URL, CoreUSP = G.URLSearchParams;
  if (typeof CoreURL !== 'function' || CoreURL.__qjsFast) return;
  const FAST = /^(https?):\/\/([^/?#@\\[\]:]+)(?::(\d{1,5}))?(\/[^?#]*)?(?:\?([^#]*))?(?:#(.*))?$/;
  const HOST = /^[a-z0-9-]+(?:\.[a-z0-9-]+)*$/;
  const NUMERIC_LAST = /(?:^|\.)(?:\d+|0x[0-9a-f]*)$/;
  const PATH = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/%[\]|]*$/;
  const DOT_SEGMENT = /(?:^|\/)(?:\.|%2e)/i;
  const QUERY = /^[\x21\x23-\x26\x28-\x3b\x3d\x3f-\x7e]+$/;
  const FRAGMENT = /^[\x21\x23-\x3b\x3d\x3f-\x5f\x61-\x7e]+$/;
  function fastParse(s) {
    const m = FAST.exec(s);
    if (m === null) return null;
    const scheme = m[1];
    const hostname = m[2].toLowerCase();
    if (!HOST.test(hostname) || NUMERIC_LAST.test(hostname) || hostname.includes('xn--')) return null;
    let port = '';
    if (m[3] !== undefined) {
      if (m[3].length > 1 && m[3][0] === '0') return null;
      const n = Number(m[3]);
      if (n > 65535) return null;
      if (!((scheme === 'http' && n === 80) || (scheme === 'https' && n === 443))) port = String(n);
    }
    const pathname = m[4] === undefined ? '/' : m[4];
    if (!PATH.test(pathname) || DOT_SEGMENT.test(pathname)) return null;
    let search = '', hash = '';
    if (m[5] !== undefined) { if (!QUERY.test(m[5])) return null; search = '?' + m[5]; }
    if (m[6] !== undefined) { if (!FRAGMENT.test(m[6])) return null; hash = '#' + m[6]; }
    const host = port ? hostname + ':' + port : hostname;
    const protocol = scheme + ':';
    return {protocol, username: '', password: '', hostname, port, host, pathname, search, hash,
            origin: protocol + '//' + host, href: protocol + '//' + host + pathname + search + hash};
  }
  const S = new WeakMap();   // URL -> {c: core URL | null, p: fast parts | null, sp: params | null}
  const P = new WeakMap();   // params -> {url, muted}
  function core(st) {
    if (st.c === null) { st.c = new CoreURL(st.p.href); st.p = null; }
    return st.c;
  }
  function state(u) {
    const st = S.get(u);
    if (st === undefined) throw new TypeError('Illegal invocation');
    return st;
  }
  class URLSearchParams extends CoreUSP {
    constructor(init) {
      super(init instanceof URLSearchParams ? init.toString() : init);
      P.set(this, null);
    }
  }
  function syncFromParams(params) {
    const link = P.get(params);
    if (!link || link.muted) return;
    const q = params.toString();
    link.muted = true;
    try { core(S.get(link.url)).search = q ? '?' + q : ''; } finally { link.muted = false; }
  }
  for (const name of ['append', 'delete', 'set', 'sort']) {
    const base = CoreUSP.prototype[name];
    Object.defineProperty(URLSearchParams.prototype, name, {
      value: function (...args) { const r = base.apply(this, args); syncFromParams(this); return r; },
      writable: true, configurable: true,
    });
  }
  function resyncParams(st, url) {
    if (st.sp === null) return;
    const link = P.get(st.sp);
    link.muted = true;
    try {
      for (const k of [...new Set(st.sp.keys())]) CoreUSP.prototype.delete.call(st.sp, k);
      for (const [k, v] of new CoreUSP(url.search)) CoreUSP.prototype.append.call(st.sp, k, v);
    } finally { link.muted = false; }
  }
  class URL {
    constructor(url, base) {
      const s = String(url);
      if (base === undefined) {
        const p = fastParse(s);
        if (p !== null) { S.set(this, {c: null, p, sp: null}); return; }
        S.set(this, {c: new CoreURL(s), p: null, sp: null});
      } else {
        S.set(this, {c: new CoreURL(s, String(base)), p: null, sp: null});
      }
    }
    get searchParams() {
      const st = state(this);
      if (st.sp === null) {
        st.sp = new URLSearchParams(this.search);
        P.set(st.sp, {url: this, muted: false});
      }
      return st.sp;
    }
    toString() { return this.href; }
    toJSON() { return this.href; }
    static canParse(url, base) { try { new URL(url, base); return true; } catch (_e) { return false; } }
    static parse(url, base) { try { return new URL(url, base); } catch (_e) { return null; } }
    get [Symbol.toStringTag]() { return 'URL'; }
  }
  for (const name of ['href', 'origin', 'protocol', 'username', 'password', 'host', 'hostname', 'port', 'pathname', 'search', 'hash']) {
    const desc = {
      get() { const st = state(this); return st.p !== null ? st.p[name] : st.c[name]; },
      enumerable: true, configurable: true,
    };
    if (name !== 'origin') {
      desc.set = function (v) {
        const st = state(this);
        core(st)[name] = v;
        if (name === 'href' || name === 'search') resyncParams(st, st.c);
      };
    }
    Object.defineProperty(URL.prototype, name, desc);
  }
  Object.defineProperty(URL, '__qjsFast', {value: fastParse});
  Object.defineProperty(URL, '__qjsCore', {value: CoreURL});
  for (const [k, v] of [['URL', URL], ['URLSearchParams', URLSearchParams]]) {
    Object.defineProperty(G, k, {value: v, writable: true, configurable: true, enumerable: false});
  }
})();
