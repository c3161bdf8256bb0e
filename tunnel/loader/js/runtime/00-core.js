// Core of the runtime: event queue, host ops, byte helpers.
// Fragment of the runtime: engine.py concatenates js/runtime/*.js in name order inside one
// function ("use strict"), so these files share one private scope.
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
  // The built-ins the runtime needs outside a worker's CPU-limited turn (flush, entropy
  // refills, cancel), taken before any worker code runs: a worker may replace the global ones.
  const apply = Reflect.apply, stringify = JSON.stringify, parse = JSON.parse;
  const arrayJoin = Array.prototype.join, strSlice = String.prototype.slice;
  const mapDelete = Map.prototype.delete, mapForEach = Map.prototype.forEach;
  // Every event is serialised here, inside the turn of the code that emits it: a worker's value
  // (a binding argument, request.cf, a Response field) with a hostile toJSON or getter runs under
  // the request's CPU limit, never in flush() after the turn. Throws (cyclic values, BigInt, …)
  // reach the emitting code.
  const emit = (ev) => { out.push(apply(stringify, JSON, [ev])); };
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

