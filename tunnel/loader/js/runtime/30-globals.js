// fetch, console, ExecutionContext; the worker-visible globals. (Optional parts: timers in
// opt-timers.js, crypto in opt-crypto.js, structuredClone in opt-clone.js, env bindings in
// opt-bindings.js, TextEncoder/TextDecoder from the vendored polyfill; see engine.py.)
// Fragment of the runtime: engine.py concatenates js/runtime/[0-9]*.js in name order inside one
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
  const timers = new Map_();  // timer id -> {fn, args, ms, repeat, op}: opt-timers.js (setTimeout, …)
  class ExecutionContext {
    #w;
    constructor(waits) { this.#w = waits; this.props = {}; }
    waitUntil(p) { push(this.#w, pResolve(p)); }
    passThroughOnException() {}
  }
  // The worker-visible globals are installed by the host's 'init' message (50-host.js), i.e. after
  // the URL polyfill, which engine.py evaluates between this runtime and 'init'. core-js
  // (web/url-search-params) wraps a global fetch and Request that it finds, so that they accept a
  // URLSearchParams body (bodyFrom does that already); over its Request wrapper, `class X extends
  // Request` got plain Requests, without X's own methods and getters. It wraps nothing it does not find.
  // Optional parts of the runtime (opt-*.js, instantiated only for workers whose code names them,
  // see engine.py) add their globals here before 'init'.
  const GLOBALS = {Headers, Request, Response, ReadableStream, fetch, console, ExecutionContext,
    navigator: {userAgent: 'tunnel-loader (QuickJS)'}};
  function installGlobals() { for (const [k, v] of Object.entries(GLOBALS)) def(G, k, v); }

