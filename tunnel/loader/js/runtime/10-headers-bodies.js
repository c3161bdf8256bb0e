// Headers and body state (host handles, strings, bytes); the minimal ReadableStream.
// Fragment of the runtime: engine.py concatenates js/runtime/*.js in name order inside one
// function ("use strict"), so these files share one private scope.
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

