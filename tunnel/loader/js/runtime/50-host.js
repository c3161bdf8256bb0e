// Request dispatch and the host interface (__qjs_host / __qjs_flush).
// Fragment of the runtime: engine.py concatenates js/runtime/[0-9]*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  // ---------------------------------------------------------------- host interface
  const RUNTIME_FRAME = /^\s+at (dispatch|host|respond|failed|finish|callBinding|fromResult) \(/;
  const open = new Set_();       // requests dispatched that have not responded yet
  const basesOf = new Map_();    // rid -> host header-list ids it owns (freed when it ends)
  function release(rid) {  // the request ended (or the host gave up on it): its host lists go
    const bases = mapGet(basesOf, rid);
    if (bases !== undefined) {
      for (let i = 0; i < bases.length; i++) mapDelete(liveBases, bases[i]);
      mapDelete(basesOf, rid);
    }
    setDelete(open, rid);
  }
  function own(rid, base) {
    if (!base) return;
    const bases = mapGet(basesOf, rid);
    if (bases === undefined) mapSet(basesOf, rid, [base]);
    else push(bases, base);
  }
  function fail(rid, e, end) {
    const err = e instanceof Error_ || (e && typeof e === 'object' && 'message' in e) ? e : new Error_(String(e));
    let kind = 'script';
    if (err.name === 'InternalError' && /out of memory/.test(err.message)) kind = 'memory';
    // drop the runtime's own frames (dispatch/host/…) from the worker's stack trace
    const stack = arrJoin(String(err.stack || '').split('\n').filter((l) => !reTest(RUNTIME_FRAME, l)), '\n');
    emit({t: 'res', rid, ok: false, kind, name: String(err.name || 'Error'), message: String(err.message), stack, end: !!end});
  }
  function ending(rid) { push(ended, rid); release(rid); }
  function finish(rid, waits) {
    if (!waits.length) { ending(rid); emit({t: 'end', rid}); return; }
    pThen(pAllSettled(waits), (rs) => {
      for (const r of rs) if (r.status === 'rejected') emit({t: 'log', l: 'error', m: 'waitUntil promise rejected: ' + fmt([r.reason])});
      if (waits.length > rs.length) return finish(rid, arrSlice(waits, rs.length));
      ending(rid);
      emit({t: 'end', rid});
    });
  }
  function respond(rid, r, waits) {
    if (!setHas(open, rid)) return;  // already answered (the host gave up, or it was stuck)
    if (!(r instanceof Response)) throw new TypeError_('Incorrect type for Promise: the Promise did not resolve to \'Response\'.');
    const ev = {t: 'res', rid, ok: true, res: serRes(r)};
    if (!waits.length) ev.end = true;
    emit(ev);  // may throw (a value that does not serialise): then failed() reports the request
    setDelete(open, rid);
    if (!waits.length) ending(rid);
    else finish(rid, waits);
  }
  function failed(rid, e, waits) {
    if (!setHas(open, rid)) return;
    setDelete(open, rid);
    fail(rid, e, !waits.length);
    if (!waits.length) ending(rid);
    else finish(rid, waits);
  }
  function dispatch(m) {
    const rid = m.rid;
    const waits = [];
    setAdd(open, rid);
    let p;
    try {
      p = handler.fetch(reqFromWire(m.req, rid), env, new ExecutionContext(waits));
      if (p instanceof Response) { respond(rid, p, waits); return; }
    } catch (e) { failed(rid, e, waits); return; }
    // one reaction for both outcomes (a trailing .catch() would cost one more job per request)
    pThen(pResolve(p), (r) => {
      try { respond(rid, r, waits); } catch (e) { failed(rid, e, waits); }
    }, (e) => failed(rid, e, waits));
  }
  function host(json, payload) {
    const m = parse(json);
    switch (m.t) {
      case 'req': turnRid = m.rid; dispatch(m); break;
      case 'done': {
        const p = mapGet(pending, m.id);
        if (!p) break;
        mapDelete(pending, m.id);
        turnRid = p.rid;
        if (!m.ok) { p.reject(makeError(m.e)); break; }
        p.resolve(payload !== undefined ? (m.v && m.v.bin ? {bin: payload} : payload) : m.v);
        break;
      }
      case 'entropy': seedRandom(payload); break;
      case 'cancel': {
        // the host gave up on a request: forget the host operations it was waiting for (their
        // continuations become garbage) and the timers behind them. No worker code runs here.
        const ops = m.ops;
        for (let i = 0; i < ops.length; i++) mapDelete(pending, ops[i]);
        if (ops.length) {
          const drop = [];
          mapForEach(timers, (t, id) => {
            for (let i = 0; i < ops.length; i++) if (t.op === ops[i]) { drop[drop.length] = id; break; }
          });
          for (let i = 0; i < drop.length; i++) mapDelete(timers, drop[i]);
        }
        release(m.rid);
        break;
      }
      case 'init': {
        installGlobals();  // after the URL polyfill (see 30-globals.js)
        env = parse(m.env);
        for (const b of m.bindings) env[b] = makeBinding(b);
        outbound = m.outbound;
        if (m.logRate) { logRate = m.logRate; logTokens = 4 * logRate; }
        seedRandom(payload);
        break;
      }
      case 'start': {
        const ns = mapGet(registry, m.main);
        const h = ns && ns.default;
        if (!h || typeof h.fetch !== 'function') throw new TypeError('Handler does not export a fetch() function.');
        handler = h;
        break;
      }
      case 'value': valueModule(m, payload); break;  // opt-modules.js
      default: throw new Error_('unknown host message ' + m.t);
    }
  }
  // Returns "" or "<ended rids, comma-separated>|<events JSON>".
  function flush() {
    if (setSize(open) && !mapSize(pending)) {
      // Nothing the host could ever answer is outstanding, yet these requests have no response:
      // their promises will never settle (workerd says the same). Answer them now.
      setForEach(open, (rid) => { fail(rid, new Error_('The script will never generate a response.'), true); push(ended, rid); });
      const stuck = [];
      setForEach(open, (rid) => { push(stuck, rid); });
      for (let i = 0; i < stuck.length; i++) release(stuck[i]);
    }
    if (logDropped) { emit({t: 'logdrop', n: logDropped}); logDropped = 0; }
    if (!out.length) return '';
    // join() builds a flat string; '+' may build a rope, which the binding cannot return. The
    // events are JSON text already (emit): nothing here can reach worker code.
    const s = arrJoin([arrJoin(ended, ','), '|[', arrJoin(out, ','), ']'], '');
    out.length = 0;
    ended.length = 0;
    return s;
  }
  def(G, '__qjs_host', host);
  def(G, '__qjs_flush', flush);
  def(G, '__qjs_watch', (p, name) => { pThen(p, () => {}, (e) => moduleFailed(name, e)); });
  // The core's internals for the optional parts (opt-*.js): engine.py evaluates each as
  // __qjs_ext(function (R) {…}) after this core and before 'init', then deletes __qjs_ext with the
  // other host functions, before any worker code runs.
  const R = {def, emit, op, toBytes, bytesToB64, fromResult, serArg, latin1ToBytes, parse, apply, pThen, mapGet, mapSet,
    mapDelete, mapSize, setHas, strSlice, arrSlice, Set_, Map_, Request, registry, timers, GLOBALS, internal: __internal,
    currentRid: () => turnRid, seed: (fn) => { seedRandom = fn; }, setValue: (fn) => { valueModule = fn; },
    setBinding: (fn) => { makeBinding = fn; }};
  def(G, '__qjs_ext', (piece) => { piece(R); });
