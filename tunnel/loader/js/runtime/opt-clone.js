// structuredClone over the vendored @ungap/structured-clone (engine.py evaluates the vendor file
// just before this fragment). An optional part of the runtime, instantiated only for workers whose
// code names structuredClone; a fragment of a function body with the core's internals in R.
  const ungapClone = globalThis.structuredClone;  // vendored @ungap/structured-clone
  function structuredClone(value) {
    try { return ungapClone(value); } catch (e) {
      if (e instanceof TypeError) throw new DOMException(String(e.message), 'DataCloneError');
      throw e;
    }
  }
  R.GLOBALS.structuredClone = structuredClone;
