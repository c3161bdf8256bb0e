// Workers-style runtime for one QuickJS context (tunnel.loader). Evaluated once per isolate,
// after the vendored polyfills (text encoding, structuredClone). The host (engine.py) talks to it
// through two functions it takes and then deletes from globalThis:
//   __qjs_host(messageJSON, payload?)  deliver one message (request, op completion, entropy)
//   __qjs_flush() -> JSON | ""          take the events produced since the last flush
// No Python callbacks are used (they are refused while a time limit is set): every host service
// (bindings, fetch, body reads, timers) is an "op" event completed later by a "done" message.
(function () {
  'use strict';
  const G = globalThis;
  const out = [];
  const pending = new Map();
  let nextOp = 1;
  let entropy = '';
  let entropyPos = 0;
  let handler = null;
  let env = null;
  let outbound = false;
  const registry = new Map();
  const LOG_MAX = 8192;
  const NOT_PERMITTED = "This worker is not permitted to access the internet via global functions like fetch(). " +
    "It must use capabilities (such as bindings in 'env') to talk to the outside world.";

  const def = (obj, name, value) => Object.defineProperty(obj, name, {value, writable: true, configurable: true, enumerable: false});
  const emit = (ev) => { out.push(ev); };
  const ended = [];  // rids finished since the last flush (lets the host skip parsing events)
  const MAX_PENDING_OPS = 10000;
  function op(o) {
    if (pending.size >= MAX_PENDING_OPS) throw new RangeError(`too many pending host operations (${MAX_PENDING_OPS})`);
    const id = nextOp++;
    o.t = 'op'; o.id = id;
    emit(o);
    return new Promise((resolve, reject) => pending.set(id, {resolve, reject}));
  }

  // ---------------------------------------------------------------- bytes helpers
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  function latin1ToBytes(s) {
    const n = s.length, u = new Uint8Array(n);
    for (let i = 0; i < n; i++) u[i] = s.charCodeAt(i);
    return u;
  }
  function bytesToB64(u) {
    let s = '';
    for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode.apply(null, u.subarray(i, i + 8192));
    return btoa(s);
  }
  function toBytes(v) {
    if (v instanceof Uint8Array) return v;
    if (v instanceof ArrayBuffer) return new Uint8Array(v);
    if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    return null;
  }
  function makeError(e) {
    const ctor = {TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError}[e.name] || Error;
    const err = new ctor(e.message);
    if (ctor === Error && e.name && e.name !== 'Error') err.name = e.name;
    return err;
  }

  // ---------------------------------------------------------------- Headers
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  function normName(n) {
    n = String(n);
    if (!TOKEN.test(n)) throw new TypeError(`Invalid header name: '${n}'`);
    return n.toLowerCase();
  }
  function normValue(v) {
    v = String(v).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    if (/[\0\r\n]/.test(v)) throw new TypeError('Invalid header value.');
    return v;
  }
  let headerPairs, headersFromPairs;
  function defaultType(h, type) {  // set content-type unless present (both known valid: no re-checks)
    const list = headerPairs(h);
    for (let i = 0; i < list.length; i++) if (list[i][0] === 'content-type') return;
    list.push(['content-type', type]);
  }
  class Headers {
    #list = [];
    constructor(init) {
      if (init == null) return;
      if (init instanceof Headers) { this.#list = init.#list.map((p) => [p[0], p[1]]); return; }
      if (typeof init !== 'object') throw new TypeError('Failed to construct Headers: invalid init');
      if (typeof init[Symbol.iterator] === 'function') {
        for (const pair of init) {
          const p = Array.from(pair);
          if (p.length !== 2) throw new TypeError('Header pairs must contain exactly two items');
          this.append(p[0], p[1]);
        }
      } else {
        for (const k of Object.keys(init)) this.append(k, init[k]);
      }
    }
    append(name, value) { this.#list.push([normName(name), normValue(value)]); }
    delete(name) { const n = normName(name); this.#list = this.#list.filter((p) => p[0] !== n); }
    get(name) {
      const n = normName(name);
      const vals = this.#list.filter((p) => p[0] === n).map((p) => p[1]);
      return vals.length ? vals.join(', ') : null;
    }
    getAll(name) { const n = normName(name); return this.#list.filter((p) => p[0] === n).map((p) => p[1]); }
    getSetCookie() { return this.#list.filter((p) => p[0] === 'set-cookie').map((p) => p[1]); }
    has(name) { const n = normName(name); return this.#list.some((p) => p[0] === n); }
    set(name, value) {
      const n = normName(name), v = normValue(value);
      const i = this.#list.findIndex((p) => p[0] === n);
      if (i < 0) { this.#list.push([n, v]); return; }
      this.#list[i][1] = v;
      this.#list = this.#list.filter((p, j) => j <= i || p[0] !== n);
    }
    *entries() {
      const names = [...new Set(this.#list.map((p) => p[0]))].sort();
      for (const n of names) {
        if (n === 'set-cookie') { for (const v of this.getSetCookie()) yield [n, v]; }
        else yield [n, this.get(n)];
      }
    }
    *keys() { for (const [k] of this.entries()) yield k; }
    *values() { for (const [, v] of this.entries()) yield v; }
    forEach(cb, thisArg) { for (const [k, v] of this.entries()) cb.call(thisArg, v, k, this); }
    [Symbol.iterator]() { return this.entries(); }
    get [Symbol.toStringTag]() { return 'Headers'; }
    static {  // private accessors for the wire code below; not reachable from worker code
      headerPairs = (h) => h.#list;
      headersFromPairs = (pairs) => { const h = new Headers(); h.#list = pairs.map((p) => [String(p[0]).toLowerCase(), String(p[1])]); return h; };
    }
  }

  // ---------------------------------------------------------------- bodies
  // A body state is shared by the objects that pass it along (new Response(res.body, res)).
  // kinds: none | str (v: string) | bytes (v: Uint8Array) | host (h: handle of a Python body)
  let streamState;
  class ReadableStream {
    #state;
    constructor(source) {
      if (source !== __internal) throw new TypeError('ReadableStream construction is not supported by this runtime; use a string, ArrayBuffer or a response body');
      this.#state = arguments[1];
    }
    get locked() { return this.#state.used; }
    getReader() {
      const st = this.#state;
      let done = false;
      return {
        read: async () => {
          if (done) return {done: true, value: undefined};
          done = true;
          const u = await readBytes(st);
          return u.length ? {done: false, value: u} : {done: true, value: undefined};
        },
        releaseLock() {}, cancel: async () => { done = true; st.used = true; }, closed: Promise.resolve(),
      };
    }
    async *[Symbol.asyncIterator]() { const r = this.getReader(); for (;;) { const x = await r.read(); if (x.done) return; yield x.value; } }
    static { streamState = (s) => s.#state; }
  }
  const __internal = {};
  function bodyFrom(init) {
    if (init == null) return {k: 'none', used: false};
    if (init instanceof ReadableStream) return streamState(init);
    if (typeof init === 'string') return {k: 'str', v: init, used: false, type: 'text/plain;charset=UTF-8'};
    const u = toBytes(init);
    if (u) return {k: 'bytes', v: u.slice(), used: false};
    if (G.URLSearchParams && init instanceof G.URLSearchParams) return {k: 'str', v: init.toString(), used: false, type: 'application/x-www-form-urlencoded;charset=UTF-8'};
    return {k: 'str', v: String(init), used: false, type: 'text/plain;charset=UTF-8'};
  }
  function take(st) {
    if (st.used) throw new TypeError('Body has already been used. It can only be used once. Use tee() first if you need to read it twice.');
    st.used = true;
  }
  async function readBytes(st) {
    if (st.k === 'none') return new Uint8Array(0);
    take(st);
    if (st.k === 'str') return enc.encode(st.v);
    if (st.k === 'bytes') return st.v;
    return latin1ToBytes(await op({op: 'read', h: st.h, mode: 'bin'}));
  }
  async function readText(st) {
    if (st.k === 'none') return '';
    take(st);
    if (st.k === 'str') return st.v;
    if (st.k === 'bytes') return dec.decode(st.v);
    return await op({op: 'read', h: st.h, mode: 'text'});
  }
  function serBody(st) {
    if (st.k === 'none') return null;
    take(st);
    if (st.k === 'str') return {s: st.v};
    if (st.k === 'bytes') return {b64: bytesToB64(st.v)};
    return {h: st.h};
  }
  const bodyMixin = {
    get body() { const st = this.__b; return st.k === 'none' ? null : new ReadableStream(__internal, st); },
    get bodyUsed() { return this.__b.used; },
    async text() { return readText(this.__b); },
    async json() { return JSON.parse(await readText(this.__b)); },
    async arrayBuffer() { const u = await readBytes(this.__b); return u.buffer.byteLength === u.byteLength ? u.buffer : u.slice().buffer; },
    async bytes() { return readBytes(this.__b); },
    async formData() { throw new TypeError('formData() is not supported by this runtime'); },
    async blob() { throw new TypeError('blob() is not supported by this runtime'); },
  };
  function mixBody(cls) {
    for (const k of Object.keys(Object.getOwnPropertyDescriptors(bodyMixin))) {
      Object.defineProperty(cls.prototype, k, Object.getOwnPropertyDescriptor(bodyMixin, k));
    }
  }
  function cloneState(st) {
    if (st.used) throw new TypeError('Body has already been used.');
    if (st.k === 'host') throw new TypeError('clone() of a streamed body is not supported by this runtime; read it once with text()/arrayBuffer() and build new objects');
    return st.k === 'bytes' ? {k: 'bytes', v: st.v.slice(), used: false} : {...st};
  }

  // ---------------------------------------------------------------- Request / Response
  const METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH'];
  function checkUrl(u) {
    u = String(u);
    if (G.URL) return new G.URL(u).href;
    if (!/^[A-Za-z][A-Za-z0-9+.-]*:/.test(u)) throw new TypeError(`Invalid URL: ${u}`);
    return u;
  }
  class Request {
    constructor(input, init = {}) {
      init = init || {};
      let src = null;
      if (input instanceof Request) src = input;
      let method = init.method !== undefined ? String(init.method) : (src ? src.method : 'GET');
      if (METHODS.includes(method.toUpperCase())) method = method.toUpperCase();
      this.__m = method;
      this.__u = src && init.__raw ? src.url : checkUrl(src ? src.url : input);
      this.__h = new Headers(init.headers !== undefined ? init.headers : (src ? src.headers : undefined));
      if (init.body !== undefined && init.body !== null) {
        if (method === 'GET' || method === 'HEAD') throw new TypeError('Request with a GET or HEAD method cannot have a body.');
        this.__b = bodyFrom(init.body);
      } else if (src) {
        this.__b = src.__b;
      } else {
        this.__b = {k: 'none', used: false};
      }
      if (this.__b.type) defaultType(this.__h, this.__b.type);
      this.cf = init.cf !== undefined ? init.cf : (src ? src.cf : undefined);
      this.redirect = init.redirect || (src ? src.redirect : 'follow');
      this.signal = init.signal || (src ? src.signal : null);
    }
    get method() { return this.__m; }
    get url() { return this.__u; }
    get headers() { return this.__h; }
    clone() { const r = new Request(this, {__raw: true}); r.__b = cloneState(this.__b); return r; }
    get [Symbol.toStringTag]() { return 'Request'; }
  }
  mixBody(Request);
  const NULL_BODY = [101, 204, 205, 304];
  class Response {
    constructor(body = null, init = {}) {
      init = init || {};
      const status = init.status !== undefined ? Number(init.status) : 200;
      if (!Number.isInteger(status) || status < 200 || status > 599) {
        if (status !== 101) throw new RangeError(`Responses may only be constructed with status codes in the range 200 to 599, inclusive. (${init.status})`);
      }
      this.__s = status;
      this.__st = init.statusText !== undefined ? String(init.statusText) : '';
      this.__h = new Headers(init.headers);
      this.__b = bodyFrom(body);
      if (this.__b.k !== 'none' && NULL_BODY.includes(status)) throw new TypeError(`Response with null body status (${status}) cannot have a body.`);
      if (this.__b.type) defaultType(this.__h, this.__b.type);
      this.webSocket = init.webSocket || null;
    }
    get status() { return this.__s; }
    get statusText() { return this.__st; }
    get ok() { return this.__s >= 200 && this.__s < 300; }
    get headers() { return this.__h; }
    get redirected() { return false; }
    get type() { return 'default'; }
    get url() { return this.__url || ''; }
    clone() { const r = new Response(null, this); r.__b = cloneState(this.__b); return r; }
    static json(data, init = {}) {
      const text = JSON.stringify(data);
      if (text === undefined) throw new TypeError('Value is not JSON serializable');
      const r = new Response(null, init);
      if (NULL_BODY.includes(r.__s)) throw new TypeError(`Response with null body status (${r.__s}) cannot have a body.`);
      r.__b = {k: 'str', v: text, used: false};
      defaultType(r.__h, 'application/json');
      return r;
    }
    static redirect(url, status = 302) {
      if (![301, 302, 303, 307, 308].includes(status)) throw new RangeError(`Invalid status code: ${status}`);
      return new Response(null, {status, headers: {location: checkUrl(url)}});
    }
    static error() { const r = new Response(null, {status: 200}); r.__s = 0; return r; }
    get [Symbol.toStringTag]() { return 'Response'; }
  }
  mixBody(Response);

  // ---------------------------------------------------------------- wire (de)serialisation
  function serReq(r) { return {method: r.method, url: r.url, headers: headerPairs(r.headers), cf: r.cf, body: serBody(r.__b)}; }
  function serRes(r) { return {status: r.status, statusText: r.statusText, headers: headerPairs(r.headers), body: serBody(r.__b)}; }
  function bodyFromWire(b) {
    if (!b) return {k: 'none', used: false};
    if (b.h !== undefined) return {k: 'host', h: b.h, used: false};
    if (b.s !== undefined) return {k: 'str', v: b.s, used: false};
    return {k: 'bytes', v: latin1ToBytes(atob(b.b64)), used: false};
  }
  function reqFromWire(m) {
    const r = Object.create(Request.prototype);
    r.__m = m.method; r.__u = m.url; r.__h = headersFromPairs(m.headers); r.__b = bodyFromWire(m.body);
    r.cf = m.cf === null ? undefined : m.cf; r.redirect = 'manual'; r.signal = null;
    return r;
  }
  function resFromWire(m) {
    const r = Object.create(Response.prototype);
    r.__s = m.status; r.__st = m.statusText || ''; r.__h = headersFromPairs(m.headers); r.__b = bodyFromWire(m.body);
    r.webSocket = null;
    return r;
  }
  function serArg(a) {
    if (a instanceof Request) return {$req: serReq(a)};
    if (a instanceof Response) return {$res: serRes(a)};
    const u = toBytes(a);
    if (u) return {$bin: bytesToB64(u)};
    return {$v: a === undefined ? null : a};
  }
  function fromResult(v) {
    if (v.res) return resFromWire(v.res);
    if (v.bin !== undefined) return latin1ToBytes(v.bin).buffer;
    return v.v;
  }
  async function callBinding(target, method, args) {
    const v = await op({op: 'call', b: target, m: method, a: args.map(serArg)});
    return fromResult(v);
  }
  const NOT_METHODS = new Set(['then', 'toJSON', 'constructor', 'valueOf', 'toString', 'inspect']);
  function makeBinding(name) {
    return new Proxy(Object.freeze(Object.create(null)), {
      get(_t, prop) {
        if (typeof prop !== 'string' || NOT_METHODS.has(prop) || prop.startsWith('_')) return undefined;
        return (...args) => callBinding(name, prop, args);
      },
      set() { return false; }, has(_t, p) { return typeof p === 'string' && !p.startsWith('_'); },
    });
  }

  // ---------------------------------------------------------------- globals
  async function fetch(input, init) {
    const req = new Request(input, init);
    if (!outbound) throw new Error(NOT_PERMITTED);
    return fromResult(await op({op: 'call', b: '$outbound', m: 'fetch', a: [serArg(req)]}));
  }
  function fmt(args) {
    return args.map((a) => {
      if (typeof a === 'string') return a;
      if (a instanceof Error) return a.stack ? `${a.name}: ${a.message}\n${a.stack}` : `${a.name}: ${a.message}`;
      try { const s = JSON.stringify(a); return s === undefined ? String(a) : s; } catch (_e) { return String(a); }
    }).join(' ').slice(0, LOG_MAX);
  }
  const console = {};
  for (const [name, level] of [['log', 'info'], ['info', 'info'], ['debug', 'debug'], ['warn', 'warning'], ['error', 'error'], ['trace', 'debug']]) {
    def(console, name, (...args) => emit({t: 'log', l: level, m: fmt(args)}));
  }
  const timers = new Map();
  let nextTimer = 1;
  function armTimer(id, ms) {
    op({op: 'timer', ms: Math.max(0, Number(ms) || 0)}).then(() => {
      const t = timers.get(id);
      if (!t) return;
      if (t.repeat) armTimer(id, t.ms); else timers.delete(id);
      t.fn(...t.args);
    });
  }
  const MAX_TIMERS = 1000;
  function setTimeout(fn, ms = 0, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout requires a function');
    if (timers.size >= MAX_TIMERS) throw new RangeError(`too many active timers (${MAX_TIMERS})`);
    const id = nextTimer++;
    timers.set(id, {fn, args, ms, repeat: false});
    armTimer(id, ms);
    return id;
  }
  function setInterval(fn, ms = 0, ...args) {
    const id = setTimeout(fn, ms, ...args);
    timers.get(id).repeat = true;
    return id;
  }
  const clearTimeout = (id) => { timers.delete(id); };
  function getRandomValues(view) {
    if (!(view instanceof Int8Array || view instanceof Uint8Array || view instanceof Uint8ClampedArray ||
          view instanceof Int16Array || view instanceof Uint16Array || view instanceof Int32Array ||
          view instanceof Uint32Array || view instanceof BigInt64Array || view instanceof BigUint64Array)) {
      throw new TypeError('getRandomValues: argument must be an integer TypedArray');
    }
    const n = view.byteLength;
    if (n > 65536) throw new DOMException(`The ArrayBufferView's byte length (${n}) exceeds the number of bytes of entropy available via this API (65536)`, 'QuotaExceededError');
    if (entropy.length - entropyPos < n) throw new Error('entropy pool exhausted; retry in the next request');
    const u = new Uint8Array(view.buffer, view.byteOffset, n);
    for (let i = 0; i < n; i++) u[i] = entropy.charCodeAt(entropyPos + i);
    entropyPos += n;
    if (entropy.length - entropyPos < 8192) emit({t: 'entropy'});
    return view;
  }
  function randomUUID() {
    const b = getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  const DIGESTS = {'SHA-1': 'sha1', 'SHA-256': 'sha256', 'SHA-384': 'sha384', 'SHA-512': 'sha512', 'MD5': 'md5'};
  const subtle = {};
  def(subtle, 'digest', async (algorithm, data) => {
    const name = String(typeof algorithm === 'string' ? algorithm : algorithm && algorithm.name).toUpperCase();
    if (!DIGESTS[name]) throw new DOMException(`Unrecognized algorithm name: ${name}`, 'NotSupportedError');
    const u = toBytes(data);
    if (!u) throw new TypeError('digest: data must be an ArrayBuffer or ArrayBufferView');
    return fromResult(await op({op: 'digest', alg: DIGESTS[name], d: bytesToB64(u)}));
  });
  // HMAC keys only: importKey('raw', bytes, {name: 'HMAC', hash}), sign, verify (host ops to hmac).
  let cryptoKeyRaw;
  class CryptoKey {
    #raw;
    constructor(raw, algorithm, extractable, usages) {
      if (raw !== __internal) throw new TypeError('Illegal constructor');
      this.#raw = arguments[4]; this.type = 'secret'; this.algorithm = algorithm;
      this.extractable = extractable; this.usages = usages;
    }
    static { cryptoKeyRaw = (k) => k.#raw; }
  }
  function hmacHash(algorithm) {
    const hash = typeof algorithm.hash === 'string' ? algorithm.hash : algorithm.hash && algorithm.hash.name;
    const name = String(hash).toUpperCase();
    if (!DIGESTS[name] || name === 'MD5') throw new DOMException(`Unsupported hash: ${hash}`, 'NotSupportedError');
    return name;
  }
  def(subtle, 'importKey', async (format, keyData, algorithm, extractable, usages) => {
    const alg = typeof algorithm === 'string' ? {name: algorithm} : algorithm;
    if (format !== 'raw' || String(alg.name).toUpperCase() !== 'HMAC') {
      throw new DOMException('Only raw HMAC keys are supported by this runtime', 'NotSupportedError');
    }
    const raw = toBytes(keyData);
    if (!raw) throw new TypeError('importKey: keyData must be an ArrayBuffer or ArrayBufferView');
    const hash = hmacHash(alg);
    return new CryptoKey(__internal, {name: 'HMAC', hash: {name: hash}, length: raw.byteLength * 8}, !!extractable,
                         Array.from(usages || []), raw.slice());
  });
  async function hmac(usage, key, data) {
    if (!(key instanceof CryptoKey)) throw new TypeError('key must be a CryptoKey');
    if (!key.usages.includes(usage)) throw new DOMException(`key does not allow ${usage}`, 'InvalidAccessError');
    const u = toBytes(data);
    if (!u) throw new TypeError('data must be an ArrayBuffer or ArrayBufferView');
    return fromResult(await op({op: 'hmac', alg: DIGESTS[key.algorithm.hash.name], k: bytesToB64(cryptoKeyRaw(key)), d: bytesToB64(u)}));
  }
  def(subtle, 'sign', (algorithm, key, data) => hmac('sign', key, data));
  def(subtle, 'verify', async (algorithm, key, signature, data) => {
    const expected = new Uint8Array(await hmac('verify', key, data));
    const got = toBytes(signature);
    if (!got || got.byteLength !== expected.byteLength) return false;
    let diff = 0;
    for (let i = 0; i < got.byteLength; i++) diff |= got[i] ^ expected[i];
    return diff === 0;
  });
  def(subtle, 'timingSafeEqual', (a, b) => {
    const x = toBytes(a), y = toBytes(b);
    if (!x || !y) throw new TypeError('timingSafeEqual: arguments must be ArrayBuffers or views');
    if (x.byteLength !== y.byteLength) throw new TypeError('Input buffers must have the same byte length');
    let diff = 0;
    for (let i = 0; i < x.byteLength; i++) diff |= x[i] ^ y[i];
    return diff === 0;
  });
  const crypto = {};
  def(crypto, 'getRandomValues', getRandomValues);
  def(crypto, 'randomUUID', randomUUID);
  def(crypto, 'subtle', subtle);
  class ExecutionContext {
    #w;
    constructor(waits) { this.#w = waits; this.props = {}; }
    waitUntil(p) { this.#w.push(Promise.resolve(p)); }
    passThroughOnException() {}
  }
  const ungapClone = G.structuredClone;  // vendored @ungap/structured-clone
  function structuredClone(value) {
    try { return ungapClone(value); } catch (e) {
      if (e instanceof TypeError) throw new DOMException(String(e.message), 'DataCloneError');
      throw e;
    }
  }
  for (const [k, v] of Object.entries({CryptoKey, structuredClone, Headers, Request, Response, ReadableStream, fetch, console, setTimeout, setInterval,
    clearTimeout, clearInterval: clearTimeout, crypto, ExecutionContext, navigator: {userAgent: 'tunnel-loader (QuickJS)'}})) def(G, k, v);

  // ---------------------------------------------------------------- module registry (see linker.py)
  function normalize(from, spec) {
    spec = String(spec);
    let parts;
    if (spec.startsWith('./') || spec.startsWith('../')) parts = from.split('/').slice(0, -1).concat(spec.split('/'));
    else parts = spec.replace(/^\/+/, '').split('/');
    const outp = [];
    for (const p of parts) { if (p === '..') { if (!outp.length) return null; outp.pop(); } else if (p !== '.' && p !== '') outp.push(p); }
    return outp.join('/');
  }
  function namespace(getters, stars) {
    const ns = Object.create(null);
    Object.defineProperties(ns, Object.getOwnPropertyDescriptors(getters));
    for (const s of stars) {
      const dep = registry.get(s);
      for (const k of Object.keys(dep)) {
        if (k !== 'default' && !(k in ns)) Object.defineProperty(ns, k, {get: () => dep[k], enumerable: true});
      }
    }
    for (const k of Object.keys(ns)) Object.defineProperty(ns, k, {enumerable: true});
    def(ns, Symbol.toStringTag, 'Module');
    return Object.preventExtensions(ns);
  }
  def(G, '__qjs_def', (name, getters, stars) => { registry.set(name, namespace(getters, stars)); });
  def(G, '__qjs_ns', (name) => registry.get(name));
  def(G, '__qjs_pick', (from, name, names) => {
    const ns = registry.get(name);
    return names.map((n) => {
      if (!(n in ns)) throw new SyntaxError(`The requested module '${name}' does not provide an export named '${n}' (imported from '${from}')`);
      return ns[n];
    });
  });
  def(G, '__qjs_meta', (name) => ({url: `worker:///${name}`}));
  def(G, '__qjs_dyn', (from) => (spec) => {
    const name = normalize(from, spec);
    const ns = name !== null && registry.get(name);
    return ns ? Promise.resolve(ns) : Promise.reject(new Error(`No such module "${spec}" (dynamic imports resolve only modules of the upload named by a string literal)`));
  });
  function valueNs(v) { return namespace({get default() { return v; }}, []); }
  const plain = new Map();  // CommonJS module.exports and text/json/data values, for require()
  def(G, '__qjs_cjs', (name, fn) => {
    const module = {exports: {}};
    const require = (spec) => {
      const target = normalize(name, spec);
      if (target !== null && plain.has(target)) return plain.get(target);
      const ns = target !== null && registry.get(target);
      if (!ns) throw new Error(`Cannot find module '${spec}' (required from '${name}')`);
      return ns;
    };
    fn.call(module.exports, module.exports, require, module, name, name.split('/').slice(0, -1).join('/'));
    const exp = module.exports;
    plain.set(name, exp);
    const getters = {get default() { return exp; }};
    if (exp && typeof exp === 'object') {
      for (const k of Object.keys(exp)) if (k !== 'default') Object.defineProperty(getters, k, {get: () => exp[k], enumerable: true});
    }
    registry.set(name, namespace(getters, []));
  });

  // ---------------------------------------------------------------- host interface
  const RUNTIME_FRAME = /^\s+at (dispatch|host|respond|failed|finish|callBinding|fromResult) \(/;
  function fail(rid, e, end) {
    const err = e instanceof Error || (e && typeof e === 'object' && 'message' in e) ? e : new Error(String(e));
    let kind = 'script';
    if (err.name === 'InternalError' && /out of memory/.test(err.message)) kind = 'memory';
    // drop the runtime's own frames (dispatch/host/…) from the worker's stack trace
    const stack = String(err.stack || '').split('\n').filter((l) => !RUNTIME_FRAME.test(l)).join('\n');
    emit({t: 'res', rid, ok: false, kind, name: String(err.name || 'Error'), message: String(err.message), stack, end: !!end});
  }
  function finish(rid, waits) {
    if (!waits.length) { ended.push(rid); emit({t: 'end', rid}); return; }
    Promise.allSettled(waits).then((rs) => {
      for (const r of rs) if (r.status === 'rejected') emit({t: 'log', l: 'error', m: 'waitUntil promise rejected: ' + fmt([r.reason])});
      if (waits.length > rs.length) return finish(rid, waits.slice(rs.length));
      ended.push(rid);
      emit({t: 'end', rid});
    });
  }
  function respond(rid, r, waits) {
    if (!(r instanceof Response)) throw new TypeError('Incorrect type for Promise: the Promise did not resolve to \'Response\'.');
    const ev = {t: 'res', rid, ok: true, res: serRes(r)};
    if (!waits.length) { ev.end = true; ended.push(rid); }
    emit(ev);
    if (waits.length) finish(rid, waits);
  }
  function failed(rid, e, waits) {
    if (!waits.length) ended.push(rid);
    fail(rid, e, !waits.length);
    if (waits.length) finish(rid, waits);
  }
  function dispatch(m) {
    const rid = m.rid;
    const waits = [];
    let p;
    try {
      p = handler.fetch(reqFromWire(m.req), env, new ExecutionContext(waits));
      if (p instanceof Response) { respond(rid, p, waits); return; }
    } catch (e) { failed(rid, e, waits); return; }
    Promise.resolve(p).then((r) => respond(rid, r, waits)).catch((e) => failed(rid, e, waits));
  }
  function host(json, payload) {
    const m = JSON.parse(json);
    switch (m.t) {
      case 'req': dispatch(m); break;
      case 'done': {
        const p = pending.get(m.id);
        if (!p) break;
        pending.delete(m.id);
        if (!m.ok) p.reject(makeError(m.e));
        else if (payload !== undefined) p.resolve(m.v && m.v.bin ? {bin: payload} : payload);
        else p.resolve(m.v);
        break;
      }
      case 'entropy': entropy = entropy.slice(entropyPos) + payload; entropyPos = 0; break;
      case 'init': {
        env = JSON.parse(m.env);
        for (const b of m.bindings) env[b] = makeBinding(b);
        outbound = m.outbound;
        entropy = payload; entropyPos = 0;
        break;
      }
      case 'start': {
        const ns = registry.get(m.main);
        const h = ns && ns.default;
        if (!h || typeof h.fetch !== 'function') throw new TypeError('Handler does not export a fetch() function.');
        handler = h;
        break;
      }
      case 'value': {
        let v = payload;
        if (m.kind === 'json') v = JSON.parse(payload);
        else if (m.kind === 'data') v = latin1ToBytes(payload).buffer;
        plain.set(m.name, v);
        registry.set(m.name, valueNs(v));
        break;
      }
      default: throw new Error('unknown host message ' + m.t);
    }
  }
  // Returns "" or "<ended rids, comma-separated>|<events JSON>".
  function flush() {
    if (!out.length) return '';
    // join() builds a flat string; '+' may build a rope, which the binding cannot return.
    const s = [ended.join(','), JSON.stringify(out)].join('|');
    out.length = 0;
    ended.length = 0;
    return s;
  }
  def(G, '__qjs_host', host);
  def(G, '__qjs_flush', flush);
  def(G, '__qjs_watch', (p, name) => {
    p.then(() => {}, (e) => emit({t: 'modfail', name, ename: String((e && e.name) || 'Error'), message: String(e && e.message !== undefined ? e.message : e), stack: String((e && e.stack) || '')}));
  });
})();
