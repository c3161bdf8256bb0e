// Request, Response and their wire (de)serialisation; binding stubs.
// Fragment of the runtime: engine.py concatenates js/runtime/[0-9]*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  // ---------------------------------------------------------------- Request / Response
  const METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH'];
  let urlIn = null, urlOut = null, urlCtor = null;  // the last URL checked: new Request(request, …) repeats it
  function checkUrl(u) {
    u = String(u);
    const U = G.URL;
    if (U) {
      if (u === urlIn && U === urlCtor) return urlOut;
      const href = new U(u).href;
      urlIn = u; urlOut = href; urlCtor = U;
      return href;
    }
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
  // Wire forms (see bridge.py): headers are [[name, value], …], host text "n\0v\0…", or edits of a
  // host list {b, o}; a request's cf is 0 when it is the very object the host sent with the
  // request (the host has it); bodies are {h: handle}, {s: text}, {b64: …} or null.
  const hostCf = new WeakMap_();  // cf objects the host sent -> their request's rid
  function wireCf(cf) { return cf !== undefined && cf !== null && typeof cf === 'object' && weakHas(hostCf, cf) ? 0 : cf; }
  function serReq(r) { return {method: r.method, url: r.url, headers: headersWire(r.headers), cf: wireCf(r.cf), body: serBody(r.__b)}; }
  function serRes(r) { return {status: r.status, statusText: r.statusText, headers: headersWire(r.headers), body: serBody(r.__b)}; }
  function bodyFromWire(b) {
    if (!b) return {k: 'none', used: false};
    if (b.h !== undefined) return {k: 'host', h: b.h, used: false};
    if (b.s !== undefined) return {k: 'str', v: b.s, used: false};
    return {k: 'bytes', v: latin1ToBytes(atob(b.b64)), used: false};
  }
  function headersFromWire(h, base, rid) {
    if (base) { mapSet(liveBases, base, rid); own(rid, base); }
    return typeof h === 'string' ? headersFromText(h, base) : headersFromPairs(h, base);
  }
  function reqFromWire(m, rid) {
    const r = Object.create(Request.prototype);
    r.__m = m.method; r.__u = m.url; r.__h = headersFromWire(m.headers, m.hb, rid); r.__b = bodyFromWire(m.body);
    const cf = m.cf === null ? undefined : m.cf;
    if (cf !== undefined && typeof cf === 'object') weakSet(hostCf, cf, rid);
    r.cf = cf; r.redirect = 'manual'; r.signal = null;
    return r;
  }
  function resFromWire(m, rid) {
    const r = Object.create(Response.prototype);
    r.__s = m.status; r.__st = m.statusText || ''; r.__h = headersFromWire(m.headers, m.hb, rid); r.__b = bodyFromWire(m.body);
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
  function fromResult(v, rid) {
    if (v.res) return resFromWire(v.res, rid);
    if (v.bin !== undefined) return latin1ToBytes(v.bin).buffer;
    return v.v;
  }
  let makeBinding = null;  // opt-bindings.js: env bindings (the host says which env entries are bindings)
