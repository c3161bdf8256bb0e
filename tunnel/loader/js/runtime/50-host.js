// Request dispatch and the host interface (__qjs_host / __qjs_flush).
// Fragment of the runtime: engine.py concatenates js/runtime/*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  // ---------------------------------------------------------------- host interface
  const RUNTIME_FRAME = /^\s+at (dispatch|host|respond|failed|finish|callBinding|fromResult) \(/;
  function fail(rid, e, end) {
    const err = e instanceof Error || (e && typeof e === 'object' && 'message' in e) ? e : new Error(String(e));
    let kind = 'script';
    if (err.name === 'InternalError' && /out of memory/.test(err.message)) kind = 'memory';
    // drop the runtime's own frames (dispatch/host/…) from the worker's stack trace
    const stack = String(err.stack || '').split('\n').filter((l) => !RUNTIME_FRAME.test(l)).join('\n');
    emit({t: 'res', rid, ok: false, kind, name: String(err.name || 'Error'), message: String(err.message), stack, end: !!end});
  }
  function finish(rid, waits) {
    if (!waits.length) { ended.push(rid); emit({t: 'end', rid}); return; }
    Promise.allSettled(waits).then((rs) => {
      for (const r of rs) if (r.status === 'rejected') emit({t: 'log', l: 'error', m: 'waitUntil promise rejected: ' + fmt([r.reason])});
      if (waits.length > rs.length) return finish(rid, waits.slice(rs.length));
      ended.push(rid);
      emit({t: 'end', rid});
    });
  }
  function respond(rid, r, waits) {
    if (!(r instanceof Response)) throw new TypeError('Incorrect type for Promise: the Promise did not resolve to \'Response\'.');
    const ev = {t: 'res', rid, ok: true, res: serRes(r)};
    if (!waits.length) ev.end = true;
    emit(ev);  // may throw (a value that does not serialise): then failed() reports the request
    if (!waits.length) ended.push(rid);
    if (waits.length) finish(rid, waits);
  }
  function failed(rid, e, waits) {
    if (!waits.length) ended.push(rid);
    fail(rid, e, !waits.length);
    if (waits.length) finish(rid, waits);
  }
  function dispatch(m) {
    const rid = m.rid;
    const waits = [];
    let p;
    try {
      p = handler.fetch(reqFromWire(m.req), env, new ExecutionContext(waits));
      if (p instanceof Response) { respond(rid, p, waits); return; }
    } catch (e) { failed(rid, e, waits); return; }
    // one reaction for both outcomes (a trailing .catch() would cost one more job per request)
    Promise.resolve(p).then((r) => {
      try { respond(rid, r, waits); } catch (e) { failed(rid, e, waits); }
    }, (e) => failed(rid, e, waits));
  }
  function host(json, payload) {
    const m = parse(json);
    switch (m.t) {
      case 'req': dispatch(m); break;
      case 'done': {
        const p = pending.get(m.id);
        if (!p) break;
        pending.delete(m.id);
        if (!m.ok) p.reject(makeError(m.e));
        else if (payload !== undefined) p.resolve(m.v && m.v.bin ? {bin: payload} : payload);
        else p.resolve(m.v);
        break;
      }
      case 'entropy': entropy = apply(strSlice, entropy, [entropyPos]) + payload; entropyPos = 0; break;
      case 'cancel': {
        // the host gave up on a request: forget the host operations it was waiting for (their
        // continuations become garbage) and the timers behind them. No worker code runs here.
        const ops = m.ops;
        for (let i = 0; i < ops.length; i++) apply(mapDelete, pending, [ops[i]]);
        if (ops.length) {
          const drop = [];
          apply(mapForEach, timers, [(t, id) => {
            for (let i = 0; i < ops.length; i++) if (t.op === ops[i]) { drop[drop.length] = id; break; }
          }]);
          for (let i = 0; i < drop.length; i++) apply(mapDelete, timers, [drop[i]]);
        }
        break;
      }
      case 'init': {
        installGlobals();  // after the URL polyfill (see 30-globals.js)
        env = JSON.parse(m.env);
        for (const b of m.bindings) env[b] = makeBinding(b);
        outbound = m.outbound;
        entropy = payload; entropyPos = 0;
        break;
      }
      case 'start': {
        const ns = registry.get(m.main);
        const h = ns && ns.default;
        if (!h || typeof h.fetch !== 'function') throw new TypeError('Handler does not export a fetch() function.');
        handler = h;
        break;
      }
      case 'value': {
        let v = payload;
        if (m.kind === 'json') v = JSON.parse(payload);
        else if (m.kind === 'data') v = latin1ToBytes(payload).buffer;
        plain.set(m.name, v);
        registry.set(m.name, valueNs(v));
        break;
      }
      default: throw new Error('unknown host message ' + m.t);
    }
  }
  // Returns "" or "<ended rids, comma-separated>|<events JSON>".
  function flush() {
    if (!out.length) return '';
    // join() builds a flat string; '+' may build a rope, which the binding cannot return. The
    // events are JSON text already (emit): nothing here can reach worker code.
    const s = apply(arrayJoin, [apply(arrayJoin, ended, [',']), '|[', apply(arrayJoin, out, [',']), ']'], ['']);
    out.length = 0;
    ended.length = 0;
    return s;
  }
  def(G, '__qjs_host', host);
  def(G, '__qjs_flush', flush);
  def(G, '__qjs_watch', (p, name) => {
    p.then(() => {}, (e) => emit({t: 'modfail', name, ename: String((e && e.name) || 'Error'), message: String(e && e.message !== undefined ? e.message : e), stack: String((e && e.stack) || '')}));
  });
