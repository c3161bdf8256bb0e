// The module registry that the linker's rewritten modules talk to (see linker.py). An optional part
// of the runtime: engine.py instantiates it only for workers linked by rewriting (several modules,
// imports, CommonJS, text/json/data modules); a single ES module without imports is evaluated as
// itself and registered by __qjs_native (40-modules.js). A fragment of a function body with the
// core's internals in R (see 50-host.js).
  const {def, registry, latin1ToBytes, parse, mapSet} = R;
  const G = globalThis;
  function normalize(from, spec) {
    spec = String(spec);
    let parts;
    if (spec.startsWith('./') || spec.startsWith('../')) parts = from.split('/').slice(0, -1).concat(spec.split('/'));
    else parts = spec.replace(/^\/+/, '').split('/');
    const outp = [];
    for (const p of parts) { if (p === '..') { if (!outp.length) return null; outp.pop(); } else if (p !== '.' && p !== '') outp.push(p); }
    return outp.join('/');
  }
  function namespace(getters, stars) {
    const ns = Object.create(null);
    Object.defineProperties(ns, Object.getOwnPropertyDescriptors(getters));
    for (const s of stars) {
      const dep = registry.get(s);
      for (const k of Object.keys(dep)) {
        if (k !== 'default' && !(k in ns)) Object.defineProperty(ns, k, {get: () => dep[k], enumerable: true});
      }
    }
    for (const k of Object.keys(ns)) Object.defineProperty(ns, k, {enumerable: true});
    def(ns, Symbol.toStringTag, 'Module');
    return Object.preventExtensions(ns);
  }
  def(G, '__qjs_def', (name, getters, stars) => { registry.set(name, namespace(getters, stars)); });
  def(G, '__qjs_ns', (name) => registry.get(name));
  def(G, '__qjs_pick', (from, name, names) => {
    const ns = registry.get(name);
    return names.map((n) => {
      if (!(n in ns)) throw new SyntaxError(`The requested module '${name}' does not provide an export named '${n}' (imported from '${from}')`);
      return ns[n];
    });
  });
  def(G, '__qjs_meta', (name) => ({url: `worker:///${name}`}));
  def(G, '__qjs_dyn', (from) => (spec) => {
    const name = normalize(from, spec);
    const ns = name !== null && registry.get(name);
    return ns ? Promise.resolve(ns) : Promise.reject(new Error(`No such module "${spec}" (dynamic imports resolve only modules of the upload named by a string literal)`));
  });
  function valueNs(v) { return namespace({get default() { return v; }}, []); }
  const plain = new Map();  // CommonJS module.exports and text/json/data values, for require()
  R.setValue((m, payload) => {  // the host's 'value' message: a text, json or data module
    let v = payload;
    if (m.kind === 'json') v = parse(payload);
    else if (m.kind === 'data') v = latin1ToBytes(payload).buffer;
    mapSet(plain, m.name, v);
    mapSet(registry, m.name, valueNs(v));
  });
  def(G, '__qjs_cjs', (name, fn) => {
    const module = {exports: {}};
    const require = (spec) => {
      const target = normalize(name, spec);
      if (target !== null && plain.has(target)) return plain.get(target);
      const ns = target !== null && registry.get(target);
      if (!ns) throw new Error(`Cannot find module '${spec}' (required from '${name}')`);
      return ns;
    };
    fn.call(module.exports, module.exports, require, module, name, name.split('/').slice(0, -1).join('/'));
    const exp = module.exports;
    plain.set(name, exp);
    const getters = {get default() { return exp; }};
    if (exp && typeof exp === 'object') {
      for (const k of Object.keys(exp)) if (k !== 'default') Object.defineProperty(getters, k, {get: () => exp[k], enumerable: true});
    }
    registry.set(name, namespace(getters, []));
  });

