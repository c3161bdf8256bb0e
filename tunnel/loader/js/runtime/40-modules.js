// How the core registers a worker's modules (see linker.py and engine.py).
// Fragment of the runtime: engine.py concatenates js/runtime/[0-9]*.js in name order inside one
// function ("use strict"), so these files share one private scope.
  // A single ES module without imports is evaluated as itself (no rewriting): engine.py compiles it
  // (ctx.module, or precompiled bytecode for trusted code) and hands over the promise of its
  // namespace (import() of it), which lands in the registry under the module's name. Workers linked by rewriting get the registry functions of
  // opt-modules.js instead (__qjs_def, __qjs_ns, …).
  function moduleFailed(name, e) {
    emit({t: 'modfail', name, ename: String((e && e.name) || 'Error'), message: String(e && e.message !== undefined ? e.message : e), stack: String((e && e.stack) || '')});
  }
  def(G, '__qjs_native', (p, name) => { pThen(p, (ns) => { mapSet(registry, name, ns); }, (e) => moduleFailed(name, e)); });
  let valueModule = null;  // opt-modules.js: the host's 'value' message (text/json/data modules)
