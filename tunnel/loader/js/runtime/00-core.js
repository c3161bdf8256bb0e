// Core of the runtime: built-ins it relies on, event queue, host ops, byte helpers.
// Fragment of the runtime: engine.py concatenates js/runtime/[0-9]*.js in name order inside one
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
  // UTF-8 for the runtime's own bodies (a string body read as bytes, a bytes body read as text).
  // These are the algorithms of the vendored fast-text-encoding 1.0.6 (its encoder and decoder
  // functions, unminified), so the result is what TextEncoder/TextDecoder give; the polyfill itself
  // is only instantiated for workers that name TextEncoder or TextDecoder (opt-encoding).
  function utf8Encode(str) {  // a lone surrogate is dropped, as the polyfill does
    const len = str.length;
    let pos = 0, at = 0, tlen = Math.max(32, len + (len >>> 1) + 7), target = new Uint8Array((tlen >>> 3) << 3);
    while (pos < len) {
      let value = str.charCodeAt(pos++);
      if (value >= 0xd800 && value <= 0xdbff) {
        if (pos < len) {
          const extra = str.charCodeAt(pos);
          if ((extra & 0xfc00) === 0xdc00) { ++pos; value = ((value & 0x3ff) << 10) + (extra & 0x3ff) + 0x10000; }
        }
        if (value >= 0xd800 && value <= 0xdbff) continue;
      }
      if (at + 4 > target.length) {
        tlen += 8; tlen *= (1.0 + (pos / str.length) * 2); tlen = (tlen >>> 3) << 3;
        const update = new Uint8Array(tlen);
        update.set(target);
        target = update;
      }
      if ((value & 0xffffff80) === 0) { target[at++] = value; continue; }
      else if ((value & 0xfffff800) === 0) target[at++] = ((value >>> 6) & 0x1f) | 0xc0;
      else if ((value & 0xffff0000) === 0) { target[at++] = ((value >>> 12) & 0x0f) | 0xe0; target[at++] = ((value >>> 6) & 0x3f) | 0x80; }
      else if ((value & 0xffe00000) === 0) {
        target[at++] = ((value >>> 18) & 0x07) | 0xf0; target[at++] = ((value >>> 12) & 0x3f) | 0x80;
        target[at++] = ((value >>> 6) & 0x3f) | 0x80;
      } else continue;
      target[at++] = (value & 0x3f) | 0x80;
    }
    return target.slice(0, at);
  }
  function utf8Decode(bytes) {
    let inputIndex = 0, pendingSize = Math.min(256 * 256, bytes.length + 1), pending = new Uint16Array(pendingSize),
      at = 0;
    const chunks = [];
    for (;;) {
      const more = inputIndex < bytes.length;
      if (!more || at >= pendingSize - 1) {
        chunks.push(String.fromCharCode.apply(null, pending.subarray(0, at)));
        if (!more) return chunks.join('');
        bytes = bytes.subarray(inputIndex); inputIndex = 0; at = 0;
      }
      const byte1 = bytes[inputIndex++];
      if ((byte1 & 0x80) === 0) pending[at++] = byte1;
      else if ((byte1 & 0xe0) === 0xc0) { const byte2 = bytes[inputIndex++] & 0x3f; pending[at++] = ((byte1 & 0x1f) << 6) | byte2; }
      else if ((byte1 & 0xf0) === 0xe0) {
        const byte2 = bytes[inputIndex++] & 0x3f, byte3 = bytes[inputIndex++] & 0x3f;
        pending[at++] = ((byte1 & 0x1f) << 12) | (byte2 << 6) | byte3;
      } else if ((byte1 & 0xf8) === 0xf0) {
        const byte2 = bytes[inputIndex++] & 0x3f, byte3 = bytes[inputIndex++] & 0x3f, byte4 = bytes[inputIndex++] & 0x3f;
        let codepoint = ((byte1 & 0x07) << 0x12) | (byte2 << 0x0c) | (byte3 << 0x06) | byte4;
        if (codepoint > 0xffff) {
          codepoint -= 0x10000;
          pending[at++] = ((codepoint >>> 10) & 0x3ff) | 0xd800;
          codepoint = 0xdc00 | (codepoint & 0x3ff);
        }
        pending[at++] = codepoint;
      }
    }
  }
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

  // Randomness (crypto.getRandomValues, randomUUID) lives in opt-crypto.js; it replaces this hook,
  // which the host calls with 32 latin-1 characters of entropy at init and on reseed.
  let seedRandom = (_text) => {};
