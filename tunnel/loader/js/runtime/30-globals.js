// fetch, console, timers, crypto, structuredClone, ExecutionContext.
// Fragment of the runtime: engine.py concatenates js/runtime/*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  // ---------------------------------------------------------------- globals
  async function fetch(input, init) {
    const req = new Request(input, init);
    if (!outbound) throw new Error(NOT_PERMITTED);
    const rid = turnRid;
    return fromResult(await op({op: 'call', b: '$outbound', m: 'fetch', a: [serArg(req)]}), rid);
  }
  function fmt(args) {
    let text = '';
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      let s;
      if (typeof a === 'string') s = a;
      else if (a instanceof Error) s = a.stack ? `${a.name}: ${a.message}\n${a.stack}` : `${a.name}: ${a.message}`;
      else { try { s = apply(stringify, JSON, [a]); if (s === undefined) s = String(a); } catch (_e) { s = String(a); } }
      text = i ? text + ' ' + s : s;
      if (text.length > LOG_MAX) break;  // a line is cut at LOG_MAX characters
    }
    return text.length > LOG_MAX ? strSlice(text, 0, LOG_MAX) + ' …[truncated]' : text;
  }
  // Log output is rate-limited per isolate (the host bounds it per worker too): bytes per second
  // from init, a burst of 4 s of it; lines beyond are counted and reported, not sent.
  let logRate = 65536, logTokens = 4 * 65536, logStamp = 0, logDropped = 0;
  function log(level, args) {
    const t = now();
    logTokens = Math.min(4 * logRate, logTokens + (t - logStamp) * logRate / 1000);
    logStamp = t;
    if (logTokens < 0) { logDropped++; return; }
    const m = fmt(args);
    logTokens -= m.length + 64;
    emit({t: 'log', l: level, m});
  }
  const console = {};
  for (const [name, level] of [['log', 'info'], ['info', 'info'], ['debug', 'debug'], ['warn', 'warning'], ['error', 'error'], ['trace', 'debug']]) {
    def(console, name, (...args) => log(level, args));
  }
  const timers = new Map_();
  let nextTimer = 1;
  function armTimer(id, ms) {
    const o = {op: 'timer', ms: Math.max(0, Number(ms) || 0)};
    pThen(op(o), () => {
      const t = mapGet(timers, id);
      if (!t) return;
      if (t.repeat) armTimer(id, t.ms); else mapDelete(timers, id);
      apply(t.fn, undefined, t.args);
    });
    const t = mapGet(timers, id);
    if (t) t.op = o.id;  // the host op the timer waits for (a cancelled request drops it)
  }
  const MAX_TIMERS = 1000;
  function setTimeout(fn, ms = 0, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout requires a function');
    if (mapSize(timers) >= MAX_TIMERS) throw new RangeError(`too many active timers (${MAX_TIMERS})`);
    const id = nextTimer++;
    mapSet(timers, id, {fn, args, ms, repeat: false, op: 0});
    armTimer(id, ms);
    return id;
  }
  function setInterval(fn, ms = 0, ...args) {
    const id = setTimeout(fn, ms, ...args);
    mapGet(timers, id).repeat = true;
    return id;
  }
  const clearTimeout = (id) => { mapDelete(timers, id); };
  function getRandomValues(view) {
    if (!(view instanceof Int8Array || view instanceof Uint8Array || view instanceof Uint8ClampedArray ||
          view instanceof Int16Array || view instanceof Uint16Array || view instanceof Int32Array ||
          view instanceof Uint32Array || view instanceof BigInt64Array || view instanceof BigUint64Array)) {
      throw new TypeError('getRandomValues: argument must be an integer TypedArray');
    }
    const n = view.byteLength;
    if (n > 65536) throw new DOMException(`The ArrayBufferView's byte length (${n}) exceeds the number of bytes of entropy available via this API (65536)`, 'QuotaExceededError');
    randomBytes(new Uint8Array(view.buffer, view.byteOffset, n));
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
    return fromResult(await op({op: 'digest', alg: DIGESTS[name], d: bytesToB64(u)}), 0);
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
    return fromResult(await op({op: 'hmac', alg: DIGESTS[key.algorithm.hash.name], k: bytesToB64(cryptoKeyRaw(key)), d: bytesToB64(u)}), 0);
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
    waitUntil(p) { push(this.#w, pResolve(p)); }
    passThroughOnException() {}
  }
  const ungapClone = G.structuredClone;  // vendored @ungap/structured-clone
  function structuredClone(value) {
    try { return ungapClone(value); } catch (e) {
      if (e instanceof TypeError) throw new DOMException(String(e.message), 'DataCloneError');
      throw e;
    }
  }
  // The worker-visible globals are installed by the host's 'init' message (50-host.js), i.e. after
  // the URL polyfill, which engine.py evaluates between this runtime and 'init'. core-js
  // (web/url-search-params) wraps a global fetch and Request that it finds, so that they accept a
  // URLSearchParams body (bodyFrom does that already); over its Request wrapper, `class X extends
  // Request` got plain Requests, without X's own methods and getters. It wraps nothing it does not find.
  const GLOBALS = {CryptoKey, structuredClone, Headers, Request, Response, ReadableStream, fetch, console, setTimeout, setInterval,
    clearTimeout, clearInterval: clearTimeout, crypto, ExecutionContext, navigator: {userAgent: 'tunnel-loader (QuickJS)'}};
  function installGlobals() { for (const [k, v] of Object.entries(GLOBALS)) def(G, k, v); }

