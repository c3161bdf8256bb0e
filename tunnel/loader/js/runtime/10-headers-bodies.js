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
  const VALUE_SLOW = /^[\t\n\r ]|[\t\n\r ]$|[\0\r\n]/;  // needs trimming or is invalid: the rare case
  function normValue(v) {
    v = String(v);
    if (!VALUE_SLOW.test(v)) return v;
    v = v.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    if (/[\0\r\n]/.test(v)) throw new TypeError('Invalid header value.');
    return v;
  }
  let headerPairs, headersFromPairs;
  function defaultType(h, type) {  // set content-type unless present (both known valid: no re-checks)
    const list = headerPairs(h);
    for (let i = 0; i < list.length; i++) if (list[i][0] === 'content-type') return;
    list.push(['content-type', type]);
  }
  // The methods below are plain loops over #list (no filter/map closures): they run on every
  // request of a policy worker. #list is never shared between two Headers, so it is edited in place.
  class Headers {
    #list = [];
    constructor(init) {
      if (init == null) return;
      if (init instanceof Headers) {
        const src = init.#list, n = src.length, list = new Array(n);
        for (let i = 0; i < n; i++) list[i] = [src[i][0], src[i][1]];
        this.#list = list;
        return;
      }
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
    delete(name) {
      const n = normName(name), list = this.#list;
      let j = 0;
      for (let i = 0; i < list.length; i++) if (list[i][0] !== n) list[j++] = list[i];
      list.length = j;
    }
    get(name) {
      const n = normName(name), list = this.#list;
      let v = null;
      for (let i = 0; i < list.length; i++) {
        if (list[i][0] === n) v = v === null ? list[i][1] : [v, list[i][1]].join(', ');
      }
      return v;
    }
    getAll(name) { return this.#all(normName(name)); }
    getSetCookie() { return this.#all('set-cookie'); }
    #all(n) {
      const list = this.#list, out = [];
      for (let i = 0; i < list.length; i++) if (list[i][0] === n) out.push(list[i][1]);
      return out;
    }
    has(name) {
      const n = normName(name), list = this.#list;
      for (let i = 0; i < list.length; i++) if (list[i][0] === n) return true;
      return false;
    }
    set(name, value) {
      const n = normName(name), v = normValue(value), list = this.#list;
      let i = 0;
      while (i < list.length && list[i][0] !== n) i++;
      if (i === list.length) { list.push([n, v]); return; }
      list[i][1] = v;
      let j = i + 1;
      for (let k = i + 1; k < list.length; k++) if (list[k][0] !== n) list[j++] = list[k];
      list.length = j;
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
      headersFromPairs = (pairs) => {  // pairs: fresh from JSON.parse, owned here, lower-cased in place
        for (let i = 0; i < pairs.length; i++) {
          const p = pairs[i];
          p[0] = String(p[0]).toLowerCase();
          if (typeof p[1] !== 'string') p[1] = String(p[1]);
        }
        const h = new Headers();
        h.#list = pairs;
        return h;
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

