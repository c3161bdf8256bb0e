// setTimeout, setInterval, clearTimeout, clearInterval (host timers). An optional part of the
// runtime: engine.py instantiates it only for workers whose code names one of them. A fragment of
// a function body with the core's internals in R (see 50-host.js); the timers map is the core's
// (a cancelled request drops the timers waiting on its ops).
  const {op, timers, mapGet, mapSet, mapDelete, mapSize, pThen, apply, GLOBALS} = R;
  let nextTimer = 1;
  function armTimer(id, ms) {
    const o = {op: 'timer', ms: Math.max(0, Number(ms) || 0)};
    pThen(op(o), () => {
      const t = mapGet(timers, id);
      if (!t) return;
      if (t.repeat) armTimer(id, t.ms); else mapDelete(timers, id);
      apply(t.fn, undefined, t.args);
    });
    const t = mapGet(timers, id);
    if (t) t.op = o.id;  // the host op the timer waits for (a cancelled request drops it)
  }
  const MAX_TIMERS = 1000;
  function setTimeout(fn, ms = 0, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout requires a function');
    if (mapSize(timers) >= MAX_TIMERS) throw new RangeError(`too many active timers (${MAX_TIMERS})`);
    const id = nextTimer++;
    mapSet(timers, id, {fn, args, ms, repeat: false, op: 0});
    armTimer(id, ms);
    return id;
  }
  function setInterval(fn, ms = 0, ...args) {
    const id = setTimeout(fn, ms, ...args);
    mapGet(timers, id).repeat = true;
    return id;
  }
  const clearTimeout = (id) => { mapDelete(timers, id); };
  GLOBALS.setTimeout = setTimeout;
  GLOBALS.setInterval = setInterval;
  GLOBALS.clearTimeout = clearTimeout;
  GLOBALS.clearInterval = clearTimeout;
