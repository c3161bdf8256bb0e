"""Modules: ES modules importing each other by relative path, text/json/data/CommonJS, load errors."""

from __future__ import annotations

import json

import pytest

from tunnel.loader import WorkerLoadError

from .conftest import CountingFactory, code, get, run

MODULES = {
    "src/index.js": """
import { add, NAME } from "./util.js";
import helper, * as helperNs from "../lib/helper.js";
import greeting from "../greeting.txt";
import cfg from "../config.json";
import blob from "../blob.bin";
import legacy, { hi } from "../legacy.cjs";
import * as all from "./reexport.js";
import anon from "./anon.js";
import klass from "./klass.js";
import "./side.js";
export default {
  async fetch(req, env) {
    const dyn = await import("./util.js");
    return Response.json({sum: add(2, 3), NAME, helper: helper(), helperKeys: Object.keys(helperNs).sort(),
      greeting, greetingType: typeof greeting, cfg, bytesType: Object.prototype.toString.call(blob),
      bytes: Array.from(new Uint8Array(blob)), cjs: legacy.greet("bob"), hi, allKeys: Object.keys(all).sort(),
      renamed: all.plus(1, 1), star: all.NAME, anon: anon(), klass: new klass().v, side: globalThis.sideEffect,
      dynSame: dyn.add === add, meta: import.meta.url, live: all.counterNow()});
  }
};
""",
    "src/util.js": "export function add(a, b) { return a + b }\nexport const NAME = 'util';\n",
    "lib/helper.js": {"js": "export default function helper() { return 'helper-ok' }\nexport const extra = 1;"},
    "greeting.txt": {"text": "hi from text"},
    "config.json": {"json": {"a": 1, "nested": {"b": [1, 2, 3]}, "s": "x"}},
    "blob.bin": {"data": bytes([0, 1, 2, 255])},
    "legacy.cjs": {"cjs": "const g = require('./greeting.txt');\nmodule.exports = { greet: (n) => 'cjs ' + n + ' ' + g, hi: 'hi' };"},
    "src/reexport.js": "export * from './util.js';\nexport { add as plus } from './util.js';\nexport { counterNow } from './counter.js';",
    "src/counter.js": "export let counter = 0;\nexport function counterNow() { counter++; return counter }",
    "src/anon.js": "export default function () { return 'anon-fn' }",
    "src/klass.js": "export default class { constructor() { this.v = 'class' } }",
    "src/side.js": "globalThis.sideEffect = 'ran';",
    "unused.js": "throw new Error('never evaluated')",
}


async def test_imports_across_every_module_type(loader):
    _, body = await run(loader, "mods", code(modules=MODULES, main="src/index.js"))
    out = json.loads(body)
    assert out == {
        "sum": 5, "NAME": "util", "helper": "helper-ok", "helperKeys": ["default", "extra"],
        "greeting": "hi from text", "greetingType": "string", "cfg": {"a": 1, "nested": {"b": [1, 2, 3]}, "s": "x"},
        "bytesType": "[object ArrayBuffer]", "bytes": [0, 1, 2, 255], "cjs": "cjs bob hi from text", "hi": "hi",
        "allKeys": ["NAME", "add", "counterNow", "plus"], "renamed": 2, "star": "util", "anon": "anon-fn",
        "klass": "class", "side": "ran", "dynSame": True, "meta": "worker:///src/index.js", "live": 1}


async def test_line_numbers_are_preserved_in_stack_traces(loader):
    src = "import {x} from './u.js';\n\n\nexport default { fetch() {\n  throw new Error('line five ' + x)\n} }"
    from tunnel.loader import WorkerScriptError
    with pytest.raises(WorkerScriptError, match="line five 1") as info:
        await run(loader, "lines", code(src, modules={"u.js": "export const x = 1"}))
    assert ":5:" in str(info.value)


@pytest.mark.parametrize("modules,main,pattern", [
    ({"index.js": "export default {\n  fetch() { return 1 +* 2 }\n}"}, "index.js",
     r"SyntaxError: .*\n\s+at index\.js:2:\d+"),
    ({"index.js": "import x from './nope.js'; export default {fetch(){}}"}, "index.js",
     r'Error: No such module "\./nope\.js"\.\n  imported from "index\.js"'),
    ({"index.js": "import {nope} from './u.js'; export default {fetch(){}}", "u.js": "export const a = 1"}, "index.js",
     r"SyntaxError: The requested module 'u\.js' does not provide an export named 'nope'"),
    ({"index.js": "throw new TypeError('top-level boom')"}, "index.js", r"TypeError: top-level boom\n\s+at .*\(index\.js:1:\d+\)"),
    ({"index.js": "import './a.js'; export default {fetch(){}}", "a.js": "\n\nthrow new Error('deep')"}, "index.js",
     r"Error: deep\n\s+at .*\(a\.js:3:\d+\)"),
    ({"index.js": "export default {fetch(){}}\nawait Promise.reject(new RangeError('tla'))"}, "index.js",
     r"RangeError: tla\n\s+at .*\(index\.js:2:\d+\)"),
    ({"index.js": "export default {fetch(){}}"}, "missing.js", r"No such module: missing\.js"),
    ({"index.js": {"cjs": "module.exports = {}"}}, "index.js", r"Main module must be an ES module"),
    ({"index.js": "export const x = 1"}, "index.js", r"TypeError: Handler does not export a fetch\(\) function"),
    ({"a.js": "import './b.js'; export default {fetch(){}}", "b.js": "import './a.js'"}, "a.js",
     r"circular import is not supported: a\.js -> b\.js -> a\.js"),
    ({}, "index.js", r"at least one module"),
    ({"index.js": {"js": "x", "text": "y"}}, "index.js", r"exactly one of"),
    ({"index.ts": "export default {}"}, "index.ts", r"does not end in '\.js'"),
    ({"index.js": "import t from './t.txt'; export default {fetch(){}}", "t.txt": {"text": 5}}, "index.js",
     r"'text' must be a string"),
    ({"index.js": "export default {fetch(){}}", "lib/broken.js": "export {"}, "index.js", None),
])
async def test_load_errors_name_module_and_position(loader, modules, main, pattern):
    from tunnel.loader import WorkerCode
    factory = CountingFactory(WorkerCode("2026-11-01", main, modules))
    stub = loader.get("bad-" + str(abs(hash((main, repr(modules))))), factory)
    if pattern is None:  # a broken module that nothing imports is never evaluated
        from tunnel.loader import WorkerScriptError
        with pytest.raises(WorkerScriptError):
            await stub.fetch(get())
        return
    with pytest.raises(WorkerLoadError, match=pattern) as info:
        await stub.fetch(get())
    assert info.value.status == 500


async def test_syntax_error_in_imported_module_names_that_module(loader):
    mods = {"index.js": "import {f} from './lib/bad.js'; export default {fetch(){ return f() }}",
            "lib/bad.js": "export function f() {\n  return 1;\n}\nlet = = 2;\n"}
    with pytest.raises(WorkerLoadError, match=r"SyntaxError: .*\n\s+at lib/bad\.js:4:\d+"):
        await run(loader, "bad-import", code(modules=mods))


async def test_factory_errors_are_load_errors(loader):
    stub = loader.get("factory-throws", CountingFactory(TypeError("boom from callback")))
    with pytest.raises(WorkerLoadError, match="TypeError: boom from callback") as info:
        await stub.fetch(get())
    assert info.value.js_name == "TypeError"

    async def wrong():
        return "not code"
    with pytest.raises(WorkerLoadError, match="TypeError: factory returned str"):
        await loader.get("factory-wrong", wrong).fetch(get())


async def test_factory_that_never_finishes_times_out():
    import asyncio

    from tunnel.loader import Loader

    async def hang():
        await asyncio.sleep(3600)

    async with Loader(shards=1, load_timeout_s=0.2) as ld:
        with pytest.raises(WorkerLoadError, match="did not finish within 0.2s"):
            await ld.get("hangs", hang).fetch(get())
