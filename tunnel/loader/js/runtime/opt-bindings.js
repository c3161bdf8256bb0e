// Stubs of env bindings: env.NAME.method(...args) is a host op. An optional part of the runtime:
// engine.py instantiates it only for workers whose env has bindings. A fragment of a function body
// with the core's internals in R (see 50-host.js).
  const {op, serArg, fromResult, mapGet, mapSet, mapSize, setHas, strSlice, arrSlice, pThen, Set_, Map_, Request,
    currentRid} = R;
  const G = globalThis;
  function callBinding(target, method, args) {
    // like a Workers service binding, fetch("https://…") means fetch(new Request("https://…"))
    if (method === 'fetch' && args.length && (typeof args[0] === 'string' || (G.URL && args[0] instanceof G.URL))) {
      args = [new Request(args[0]), ...arrSlice(args, 1)];
    }
    const a = new Array(args.length);
    for (let i = 0; i < args.length; i++) a[i] = serArg(args[i]);
    const rid = currentRid();  // the request whose turn is running
    return pThen(op({op: 'call', b: target, m: method, a}), (v) => fromResult(v, rid));
  }
  const NOT_METHODS = new Set_(['then', 'toJSON', 'constructor', 'valueOf', 'toString', 'inspect']);
  function makeBinding(name) {
    const methods = new Map_();  // one function per method name, made on first use
    return new Proxy(Object.freeze(Object.create(null)), {
      get(_t, prop) {
        if (typeof prop !== 'string' || setHas(NOT_METHODS, prop) || strSlice(prop, 0, 1) === '_') return undefined;
        let fn = mapGet(methods, prop);
        if (fn === undefined) {
          fn = (...args) => callBinding(name, prop, args);
          if (mapSize(methods) < 256) mapSet(methods, prop, fn);
        }
        return fn;
      },
      set() { return false; }, has(_t, p) { return typeof p === 'string' && strSlice(p, 0, 1) !== '_'; },
    });
  }
  R.setBinding(makeBinding);
