// Core of the runtime: built-ins it relies on, event queue, host ops, byte helpers.
// Fragment of the runtime: engine.py concatenates js/runtime/*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  const G = globalThis;
  // The built-ins the runtime calls, taken before any worker code runs: a worker may replace
  // the global ones (Array.prototype.push, Promise.prototype.then, JSON.stringify, Map…), which
  // must not make the runtime itself hang or misbehave (each call below goes to the original).
  const uncurry = (fn) => Function.prototype.call.bind(fn);
  const apply = Reflect.apply, stringify = JSON.stringify, parse = JSON.parse;
  const Promise_ = Promise, Map_ = Map, Set_ = Set, WeakMap_ = WeakMap, Error_ = Error, TypeError_ = TypeError;
  const pThen = uncurry(Promise.prototype.then), pResolve = Promise.resolve.bind(Promise), pAllSettled = Promise.allSettled.bind(Promise);
  const push = uncurry(Array.prototype.push), arrJoin = uncurry(Array.prototype.join), arrSlice = uncurry(Array.prototype.slice);
  const strSlice = uncurry(String.prototype.slice), strSplit = uncurry(String.prototype.split);
  const strLower = uncurry(String.prototype.toLowerCase), strIndexOf = uncurry(String.prototype.indexOf);
  const reTest = uncurry(RegExp.prototype.test);
  const mapGet = uncurry(Map.prototype.get), mapSet = uncurry(Map.prototype.set), mapHas = uncurry(Map.prototype.has);
  const mapDelete = uncurry(Map.prototype.delete), mapForEach = uncurry(Map.prototype.forEach);
  const setAdd = uncurry(Set.prototype.add), setHas = uncurry(Set.prototype.has), setDelete = uncurry(Set.prototype.delete);
  const setForEach = uncurry(Set.prototype.forEach);
  const weakGet = uncurry(WeakMap.prototype.get), weakSet = uncurry(WeakMap.prototype.set), weakHas = uncurry(WeakMap.prototype.has);
  const mapSize = uncurry(Object.getOwnPropertyDescriptor(Map.prototype, 'size').get);
  const setSize = uncurry(Object.getOwnPropertyDescriptor(Set.prototype, 'size').get);
  const now = Date.now;

  const out = [];
  const pending = new Map_();      // op id -> {resolve, reject, rid}
  let turnRid = 0;                 // the request whose turn is running (its ops and results are its own)
  let nextOp = 1;
  let handler = null;
  let env = null;
  let outbound = false;
  const registry = new Map_();
  const LOG_MAX = 8192;
  const NOT_PERMITTED = "This worker is not permitted to access the internet via global functions like fetch(). " +
    "It must use capabilities (such as bindings in 'env') to talk to the outside world.";

  const def = (obj, name, value) => Object.defineProperty(obj, name, {value, writable: true, configurable: true, enumerable: false});
  // Every event is serialised here, inside the turn of the code that emits it: a worker's value
  // (a binding argument, request.cf, a Response field) with a hostile toJSON or getter runs under
  // the request's CPU limit, never in flush() after the turn. Throws (cyclic values, BigInt, …)
  // reach the emitting code.
  const emit = (ev) => { push(out, apply(stringify, JSON, [ev])); };
  const ended = [];  // rids finished since the last flush (lets the host skip parsing events)
  const MAX_PENDING_OPS = 10000;
  function op(o) {
    if (mapSize(pending) >= MAX_PENDING_OPS) throw new RangeError(`too many pending host operations (${MAX_PENDING_OPS})`);
    const id = nextOp++;
    o.t = 'op'; o.id = id;
    emit(o);
    const rid = turnRid;
    return new Promise_((resolve, reject) => { mapSet(pending, id, {resolve, reject, rid}); });
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

  // ---------------------------------------------------------------- randomness
  // crypto.getRandomValues / randomUUID draw from a ChaCha20 generator with fast key erasure
  // (each draw rekeys it first), seeded and reseeded with the host's os.urandom: any request size
  // up to the Web Crypto maximum (65,536 bytes) is served at once, and no pool has to be kept.
  const chachaKey = new Uint32Array(8);
  const chachaState = new Uint32Array(16), chachaWork = new Uint32Array(16);
  let chachaCounter = 0, drawnSinceSeed = 0;
  const RESEED_BYTES = 1 << 20;
  function chachaBlock(dst, off) {  // one 64-byte block of ChaCha20 (RFC 8439) with chachaKey
    const s = chachaState, x = chachaWork;
    s[0] = 0x61707865; s[1] = 0x3320646e; s[2] = 0x79622d32; s[3] = 0x6b206574;
    for (let i = 0; i < 8; i++) s[4 + i] = chachaKey[i];
    s[12] = chachaCounter++; s[13] = 0; s[14] = 0; s[15] = 0;
    x.set(s);
    for (let r = 0; r < 10; r++) {
      qr(x, 0, 4, 8, 12); qr(x, 1, 5, 9, 13); qr(x, 2, 6, 10, 14); qr(x, 3, 7, 11, 15);
      qr(x, 0, 5, 10, 15); qr(x, 1, 6, 11, 12); qr(x, 2, 7, 8, 13); qr(x, 3, 4, 9, 14);
    }
    for (let i = 0; i < 16; i++) {
      const w = (x[i] + s[i]) >>> 0;
      dst[off + 4 * i] = w & 255; dst[off + 4 * i + 1] = (w >>> 8) & 255;
      dst[off + 4 * i + 2] = (w >>> 16) & 255; dst[off + 4 * i + 3] = w >>> 24;
    }
  }
  function qr(x, a, b, c, d) {
    x[a] = (x[a] + x[b]) | 0; x[d] ^= x[a]; x[d] = (x[d] << 16) | (x[d] >>> 16);
    x[c] = (x[c] + x[d]) | 0; x[b] ^= x[c]; x[b] = (x[b] << 12) | (x[b] >>> 20);
    x[a] = (x[a] + x[b]) | 0; x[d] ^= x[a]; x[d] = (x[d] << 8) | (x[d] >>> 24);
    x[c] = (x[c] + x[d]) | 0; x[b] ^= x[c]; x[b] = (x[b] << 7) | (x[b] >>> 25);
  }
  function seedRandom(text) {  // 32 latin-1 characters of host entropy, mixed into the key
    for (let i = 0; i < 8; i++) {
      chachaKey[i] ^= (text.charCodeAt(4 * i) | (text.charCodeAt(4 * i + 1) << 8) |
                       (text.charCodeAt(4 * i + 2) << 16) | (text.charCodeAt(4 * i + 3) << 24)) >>> 0;
    }
    drawnSinceSeed = 0;
  }
  function randomBytes(u) {  // fill the Uint8Array u
    const n = u.length, blocks = (n + 32 + 63) >> 6, buf = new Uint8Array(blocks * 64);
    for (let b = 0; b < blocks; b++) chachaBlock(buf, b * 64);
    for (let i = 0; i < 8; i++) chachaKey[i] = buf[4 * i] | (buf[4 * i + 1] << 8) | (buf[4 * i + 2] << 16) | (buf[4 * i + 3] << 24);
    chachaCounter = 0;
    u.set(buf.subarray(32, 32 + n));
    buf.fill(0);
    drawnSinceSeed += n;
    if (drawnSinceSeed > RESEED_BYTES) { drawnSinceSeed = -Infinity; emit({t: 'entropy'}); }
  }
