// Headers and body state (host handles, strings, bytes); the minimal ReadableStream.
// Fragment of the runtime: engine.py concatenates js/runtime/[0-9]*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  // ---------------------------------------------------------------- Headers
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const NAMES = new Map_();  // name as given -> its lower-case form, once validated (bounded)
  function normName(n) {
    if (typeof n !== 'string') n = String(n);
    const known = mapGet(NAMES, n);
    if (known !== undefined) return known;
    if (!reTest(TOKEN, n)) throw new TypeError_(`Invalid header name: '${n}'`);
    const lower = strLower(n);
    if (mapSize(NAMES) < 1024) mapSet(NAMES, n, lower);
    return lower;
  }
  const VALUE_SLOW = /^[\t\n\r ]|[\t\n\r ]$|[\0\r\n]/;  // needs trimming or is invalid: the rare case
  function normValue(v) {
    v = String(v);
    if (!reTest(VALUE_SLOW, v)) return v;
    v = v.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    if (/[\0\r\n]/.test(v)) throw new TypeError_('Invalid header value.');
    return v;
  }
  // Header lists the host sent (a request's, a binding's response) carry the host's id of that
  // list ("base"), and every change made to them is recorded: when such headers go back to the
  // host they travel as {b: base, o: [[op, name, value], …]} (op: s set, a append, d delete), not as
  // every pair again, and the host applies the same edits to the list it holds. The host frees a
  // base when the request that owns it ends; past that (or after many edits) the full list goes.
  const liveBases = new Map_();   // base id -> owning rid, while the host holds the list
  const MAX_OPS = 64;
  let headerPairs, headersWire, headersFromPairs, headersFromText, defaultType;
  function applyOp(list, o) {
    const n = o[1];
    if (o[0] === 'a') { push(list, [n, o[2]]); return; }
    let j = 0, done = o[0] === 'd';
    for (let i = 0; i < list.length; i++) {
      const p = list[i];
      if (p[0] !== n) { list[j++] = p; continue; }
      if (!done) { p[1] = o[2]; list[j++] = p; done = true; }  // set: the first one keeps its place
    }
    list.length = j;
    if (!done) push(list, [n, o[2]]);
  }
  // The methods below are plain loops (no filter/map closures): they run on every request of a
  // policy worker. A list is never shared between two Headers, so it is edited in place.
  class Headers {
    #list = null;  // [[name, value]] (names lower-case), once materialised
    #text = null;  // host text "name\0value\0…" not split yet
    #base = 0;     // host id of the list these headers started from (0: none)
    #ops = null;   // edits since #base, or null when the base no longer applies
    constructor(init) {
      if (init == null) { this.#list = []; return; }
      if (init instanceof Headers) {
        this.#base = init.#base;
        this.#ops = init.#ops === null ? null : arrSlice(init.#ops);
        if (init.#list === null) { this.#text = init.#text; return; }
        const src = init.#list, n = src.length, list = new Array(n);
        for (let i = 0; i < n; i++) list[i] = [src[i][0], src[i][1]];
        this.#list = list;
        return;
      }
      this.#list = [];
      if (typeof init !== 'object') throw new TypeError_('Failed to construct Headers: invalid init');
      if (typeof init[Symbol.iterator] === 'function') {
        for (const pair of init) {
          const p = Array.from(pair);
          if (p.length !== 2) throw new TypeError_('Header pairs must contain exactly two items');
          this.append(p[0], p[1]);
        }
      } else {
        for (const k of Object.keys(init)) this.append(k, init[k]);
      }
    }
    #mat() {
      let list = this.#list;
      if (list !== null) return list;
      list = [];
      const text = this.#text;
      if (text) {
        const parts = strSplit(text, '\0');
        for (let i = 0; i + 1 < parts.length; i += 2) push(list, [parts[i], parts[i + 1]]);
      }
      const ops = this.#ops;
      if (ops !== null) for (let i = 0; i < ops.length; i++) applyOp(list, ops[i]);
      this.#text = null;
      this.#list = list;
      return list;
    }
    #edit(o) {
      if (this.#ops !== null && this.#ops.length >= MAX_OPS) {  // past this, the full list goes back
        this.#mat();
        this.#ops = null;
        this.#base = 0;
      }
      if (this.#list !== null) applyOp(this.#list, o);
      if (this.#ops !== null) push(this.#ops, o);
    }
    append(name, value) { this.#edit(['a', normName(name), normValue(value)]); }
    delete(name) { this.#edit(['d', normName(name), '']); }
    set(name, value) { this.#edit(['s', normName(name), normValue(value)]); }
    get(name) {
      const n = normName(name), list = this.#mat();
      let v = null;
      for (let i = 0; i < list.length; i++) {
        if (list[i][0] === n) v = v === null ? list[i][1] : v + ', ' + list[i][1];
      }
      return v;
    }
    getAll(name) { return this.#all(normName(name)); }
    getSetCookie() { return this.#all('set-cookie'); }
    #all(n) {
      const list = this.#mat(), found = [];
      for (let i = 0; i < list.length; i++) if (list[i][0] === n) push(found, list[i][1]);
      return found;
    }
    has(name) {
      const n = normName(name), list = this.#mat();
      for (let i = 0; i < list.length; i++) if (list[i][0] === n) return true;
      return false;
    }
    *entries() {
      const names = [...new Set_(this.#mat().map((p) => p[0]))].sort();
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
    static {  // private accessors for the wire code; not reachable from worker code
      headerPairs = (h) => h.#mat();
      headersWire = (h) => (h.#base !== 0 && h.#ops !== null && mapHas(liveBases, h.#base)
        ? {b: h.#base, o: h.#ops} : h.#mat());
      headersFromPairs = (pairs, base) => {  // pairs: fresh from JSON.parse, owned here; names lower-case
        const h = new Headers();
        h.#list = pairs;
        if (base) { h.#base = base; h.#ops = []; }
        return h;
      };
      headersFromText = (text, base) => {  // "name\0value\0…" from the host, split on first use
        const h = new Headers();
        h.#list = null;
        h.#text = text;
        if (base) { h.#base = base; h.#ops = []; }
        return h;
      };
      defaultType = (h, type) => {  // content-type unless present (both known valid: no re-checks)
        const list = h.#mat();
        for (let i = 0; i < list.length; i++) if (list[i][0] === 'content-type') return;
        h.#edit(['a', 'content-type', type]);
      };
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
    if (st.used) throw new TypeError_('Body has already been used. It can only be used once. Use tee() first if you need to read it twice.');
    st.used = true;
  }
  async function readBytes(st) {
    if (st.k === 'none') return new Uint8Array(0);
    take(st);
    if (st.k === 'str') return utf8Encode(st.v);
    if (st.k === 'bytes') return st.v;
    return latin1ToBytes(await op({op: 'read', h: st.h, mode: 'bin'}));
  }
  async function readText(st) {
    if (st.k === 'none') return '';
    take(st);
    if (st.k === 'str') return st.v;
    if (st.k === 'bytes') return utf8Decode(st.v);
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
    async text() { return await readText(this.__b); },  // await: a returned promise would be resolved through its `then`, which a worker may replace
    async json() { return JSON.parse(await readText(this.__b)); },
    async arrayBuffer() { const u = await readBytes(this.__b); return u.buffer.byteLength === u.byteLength ? u.buffer : u.slice().buffer; },
    async bytes() { return await readBytes(this.__b); },
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

