"""Resolve and link a worker's modules into an evaluation plan for one QuickJS context.

The binding (quickjs-ng 0.17) cannot load modules: ``import`` of anything fails. So each ES
module is rewritten, with a real parser (tree-sitter-javascript), into a self-contained ES
module that talks to a small registry installed by the runtime (``js/runtime/opt-modules.js``):

- import statements are blanked; their bindings become ``const`` snapshots taken from the
  registry in a prologue placed *on line 1*, so every line number of the source is preserved;
- ``export`` declarations lose the keyword and register live getters
  (``__qjs_def(name, {get x(){return x}}, stars)``); ``export default expr`` becomes
  ``const __qjs_default = expr``; anonymous default functions/classes are named ``__qjs_default``;
- ``export … from`` and ``export *`` forward to the dependency's namespace (live);
- ``import.meta`` becomes ``__qjs_meta("name")`` and ``import(x)`` becomes ``__qjs_dyn("name")(x)``.

CommonJS modules are wrapped in ``function (exports, require, module, __filename, __dirname)``;
text, json and data modules become registry values. Modules are evaluated dependency-first
(post-order from the main module); cycles are rejected. Limitations are listed in docs/loader.md.

Fast path (a *native* plan): a main ES module that cannot import anything — the word ``import``
appears nowhere in it (no import statement, ``import.meta`` or ``import()``) and every ``export``
is followed by a declaration keyword (``default``, ``const``, ``let``, ``var``, ``function``,
``class``, ``async``; so no ``export {…}``, ``export *`` or ``… from``) — is evaluated as itself
by QuickJS, without rewriting it: its module semantics are then QuickJS's own (exports, live
bindings, line *and column* numbers exact; an anonymous default function or class is named
``default``, as the standard says, not ``__qjs_default``). These are text checks, so they can only send a module
to the full path needlessly (the word in a comment), never the reverse. A module under 4 KiB is
still parsed here (cheap), so that its syntax errors are reported as before; a larger one is not
parsed at all: if QuickJS rejects it, the engine links it again with ``plan(..., native=False)``,
which reports exactly what the full path reports. Generated workers and most hand-written
single-module workers take it: it saves the tree-sitter parse and queries (5.4 ms for the
generated 20-rule policy's 26 KB; the text checks take 0.1 ms).

``Plan.names`` are the optional globals (``GATED``: crypto, structuredClone, setTimeout, …) that
the reachable modules may use, for the engine to instantiate only the parts of the runtime a
worker can reach (see ``mentioned``). This module is pure: it imports neither asyncio nor quickjs.
"""

from __future__ import annotations

import ast
import json
import posixpath
import re
from dataclasses import dataclass

import tree_sitter
import tree_sitter_javascript

_LANGUAGE = tree_sitter.Language(tree_sitter_javascript.language())
_PARSER = tree_sitter.Parser(_LANGUAGE)
# run only on modules whose text contains "import" (meta, dyn) or, for CommonJS, "require"
_QUERY = tree_sitter.Query(_LANGUAGE, """
(meta_property) @meta
(call_expression function: (import) @dyn)
(call_expression function: (identifier) @req arguments: (arguments . (string) @reqarg .))
""")
_BLANK = re.compile(rb"[^\r\n]")
# URL / URLSearchParams named in code: an identifier, a property (globalThis.URL), a shorthand
# property ({URL}) or a destructured name (const {URL} = globalThis); never a comment or a string
_URL_WORD = re.compile(rb"(?<![\w$])URL(?:SearchParams)?(?![\w$])")
_URL_NODES = frozenset({"identifier", "property_identifier", "shorthand_property_identifier",
                        "shorthand_property_identifier_pattern"})
# a native module this small is still parsed (≈ 0.1 ms per KiB), so that its syntax errors are reported
# here as for every other module; a larger one is left to QuickJS (see plan)
_PARSE_NATIVE_BELOW = 4096
_EXPORT_DECL = re.compile(r"export\s+(?:default|const|let|var|function|class|async)(?![\w$])")
#: Globals of the runtime that are instantiated only for workers whose code names them (engine.py
#: maps them to the optional parts of the runtime). URL and URLSearchParams are decided exactly
#: (as identifiers, with tree-sitter); these conservatively (see ``mentioned``).
GATED = ("crypto", "CryptoKey", "structuredClone", "TextEncoder", "TextDecoder", "setTimeout", "setInterval",
         "clearTimeout", "clearInterval")


def _words(src: str, name: str):
    """Start offsets of ``name`` as a whole word (not inside a longer identifier) in ``src``.
    (str.find, not a regex: a look-behind makes ``re`` step through every character.)"""
    n = len(name)
    at = src.find(name)
    while at >= 0:
        end = at + n
        if (at == 0 or not (src[at - 1].isalnum() or src[at - 1] in "_$")) and \
                (end == len(src) or not (src[end].isalnum() or src[end] in "_$")):
            yield at
        at = src.find(name, end)


def _after_line_comment(src: str, at: int) -> bool:
    """True when the text at ``at`` is certainly not code: it follows a ``//`` on its line, the part
    of the line before that ``//`` holds no quote, backtick or slash (so the ``//`` starts a line
    comment, or lies in a template literal's or block comment's text), and the rest of the line no
    backtick or ``${`` (which could end a template literal, or open an expression in one)."""
    start = src.rfind("\n", 0, at) + 1
    k = src.find("//", start, at)
    if k < 0:
        return False
    for c in "'\"`/":
        if src.find(c, start, k) >= 0:
            return False
    end = src.find("\n", at)
    if end < 0:
        end = len(src)
    return src.find("`", k, end) < 0 and src.find("${", k, end) < 0


def mentioned(src: str, names=GATED) -> frozenset[str]:
    """The ``names`` that ``src`` may use: each is counted if it occurs as a whole word anywhere but
    after a line comment's ``//`` (see ``_after_line_comment``). Conservative: a name in a string
    (``globalThis["crypto"]``) or a block comment counts; only names built at run time (``"cry" +
    "pto"``) are missed, as for URL."""
    found = set()
    for probe, group in _probes(names):
        if probe not in src:  # one scan of the text for names that share a part (crypto, CryptoKey)
            continue
        for name in group:
            for at in _words(src, name):
                if not _after_line_comment(src, at):
                    found.add(name)
                    break
    return frozenset(found)


_PROBES = {"crypto": "rypto", "CryptoKey": "rypto", "TextEncoder": "coder", "TextDecoder": "coder",
           "setTimeout": "Timeout", "clearTimeout": "Timeout", "setInterval": "Interval", "clearInterval": "Interval",
           "URL": "URL", "URLSearchParams": "URL"}
_PROBE_GROUPS: dict[tuple, list] = {}


def _probes(names) -> list[tuple[str, list[str]]]:
    groups = _PROBE_GROUPS.get(names)
    if groups is None:
        by: dict[str, list[str]] = {}
        for name in names:
            by.setdefault(_PROBES.get(name, name), []).append(name)
        groups = _PROBE_GROUPS[names] = list(by.items())
    return groups


def _url_in_tree(root: tree_sitter.Node, src: bytes) -> bool:
    """Whether ``URL``/``URLSearchParams`` is an identifier or property somewhere in the parsed ``src``."""
    for m in _URL_WORD.finditer(src):
        node = root.descendant_for_byte_range(m.start(), m.end())
        if node is not None and node.type in _URL_NODES and node.start_byte == m.start() and node.end_byte == m.end():
            return True
    return False


def uses_url(src: str) -> bool:
    """Whether the ES module ``src`` names ``URL`` or ``URLSearchParams`` in code (tree-sitter)."""
    data = src.encode("utf-8", "surrogatepass")
    if not _URL_WORD.search(data):
        return False
    return _url_in_tree(_PARSER.parse(data).root_node, data)


def native_candidate(src: str) -> bool:
    """Whether the ES module ``src`` can be evaluated as itself: it cannot import anything (see the
    module docstring). A text check: it may refuse a module that would qualify, never the reverse."""
    for _ in _words(src, "import"):
        return False
    for at in _words(src, "export"):
        if not _EXPORT_DECL.match(src, at):
            return False
    return True


class LinkError(Exception):
    """The modules cannot be linked.

    Attributes:
        js_name: the JavaScript error name to report (``SyntaxError``, ``Error``, ``TypeError``).
    """

    def __init__(self, js_name: str, message: str):
        super().__init__(f"{js_name}: {message}")
        self.js_name = js_name
        self.js_message = message


@dataclass(frozen=True)
class Step:
    """One module to evaluate: ``kind`` is ``esm``, ``cjs``, ``text``, ``json`` or ``data``."""

    kind: str
    name: str
    payload: object


@dataclass(frozen=True)
class Plan:
    """The evaluation plan: steps in dependency order, and whether the URL polyfill is needed.

    ``native``: one step of kind ``native`` (the main module's own source, evaluated as itself);
    ``main`` and ``modules`` are kept so that the engine can link the full way if QuickJS rejects
    it. ``names``: the ``GATED`` globals the modules may use.
    """

    steps: tuple[Step, ...]
    uses_url: bool
    names: frozenset[str] = frozenset()
    native: bool = False
    main: str = ""
    modules: dict | None = None


def resolve(importer: str, spec: str, names: set[str] | dict) -> str | None:
    """Resolve an import specifier against the importing module's name.

    Args:
        importer: name of the importing module (``src/index.js``).
        spec: the specifier (``./util.js``, ``../lib/x.js``, ``util.js``, ``/abs.js``).
        names: the module names available.
    Returns:
        The module name, or ``None`` when no module matches.
    """
    if spec.startswith(("./", "../")):
        path = posixpath.normpath(posixpath.join(posixpath.dirname(importer), spec))
    elif spec.startswith("/"):
        path = posixpath.normpath(spec).lstrip("/")
    else:
        path = spec
    if path.startswith("../") or path == "..":
        return None
    return path if path in names else None


def _string_value(node: tree_sitter.Node) -> str:
    text = node.text.decode("utf-8")
    try:
        value = ast.literal_eval(text)
        if isinstance(value, str):
            return value
    except (ValueError, SyntaxError):
        pass
    return text[1:-1]


def _name_of(node: tree_sitter.Node) -> str:
    return _string_value(node) if node.type == "string" else node.text.decode("utf-8")


def _pattern_names(node: tree_sitter.Node, out: list[str]) -> None:
    t = node.type
    if t in ("identifier", "shorthand_property_identifier_pattern"):
        out.append(node.text.decode("utf-8"))
    elif t == "pair_pattern":
        _pattern_names(node.child_by_field_name("value"), out)
    elif t == "assignment_pattern":
        _pattern_names(node.child_by_field_name("left"), out)
    elif t in ("object_pattern", "array_pattern", "rest_pattern", "object_assignment_pattern"):
        for child in node.named_children:
            if t == "object_assignment_pattern" and child != node.named_children[0]:
                continue
            _pattern_names(child, out)


def _syntax_error(name: str, src: bytes, root: tree_sitter.Node) -> LinkError:
    bad = None
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            if bad is None or node.start_byte < bad.start_byte:
                bad = node
            continue
        if node.has_error:
            stack.extend(node.children)
    if bad is None:
        return LinkError("SyntaxError", f"invalid syntax\n    at {name}")
    row, col_bytes = bad.start_point
    line = src.split(b"\n")[row] if row < src.count(b"\n") + 1 else b""
    col = len(line[:col_bytes].decode("utf-8", "replace")) + 1
    if bad.is_missing:
        what = f"missing '{bad.type}'"
    else:
        token = bad.text.decode("utf-8", "replace").strip().split("\n")[0][:40]
        what = f"unexpected token '{token}'" if token else "unexpected end of input"
    return LinkError("SyntaxError", f"{what}\n    at {name}:{row + 1}:{col}")


def _js(s: str) -> str:
    return json.dumps(s)


class _Module:
    """Rewrites one ES or CommonJS module; collects its dependencies."""

    def __init__(self, name: str, kind: str, src: str, names: dict):
        self.name, self.kind, self.names = name, kind, names
        self.src = src.encode("utf-8", "surrogatepass")
        self.deps: list[str] = []
        self.edits: list[tuple[int, int, bytes]] = []
        self.uses_url = False
        tree = _PARSER.parse(self.src)
        if tree.root_node.has_error:
            raise _syntax_error(name, self.src, tree.root_node)
        self.root = tree.root_node

    def _dep(self, spec: str, required: bool = True) -> str | None:
        target = resolve(self.name, spec, self.names)
        if target is None:
            if required:
                raise LinkError("Error", f'No such module "{spec}".\n  imported from "{self.name}"')
            return None
        if target not in self.deps:
            self.deps.append(target)
        return target

    def _blank(self, node: tree_sitter.Node) -> None:
        seg = self.src[node.start_byte:node.end_byte]
        self.edits.append((node.start_byte, node.end_byte, _BLANK.sub(b" ", seg)))

    def _scan_dynamic(self) -> None:
        # the URL polyfill is needed when URL or URLSearchParams is named in code (an identifier, or
        # a property such as globalThis.URL), never for the word in a comment or a string
        self.uses_url = _url_in_tree(self.root, self.src)
        if b"import" not in self.src and (self.kind != "cjs" or b"require" not in self.src):
            return
        captures = tree_sitter.QueryCursor(_QUERY).captures(self.root)
        for node in captures.get("meta", []):
            self.edits.append((node.start_byte, node.end_byte, f"__qjs_meta({_js(self.name)})".encode()))
        for node in captures.get("dyn", []):
            call = node.parent
            args = call.child_by_field_name("arguments")
            if args is not None and args.named_child_count >= 1 and args.named_children[0].type == "string":
                self._dep(_string_value(args.named_children[0]), required=False)
            self.edits.append((node.start_byte, node.end_byte, f"__qjs_dyn({_js(self.name)})".encode()))
        if self.kind == "cjs":
            for node in captures.get("reqarg", []):
                fn = node.parent.parent.child_by_field_name("function")
                if fn is not None and fn.text == b"require":
                    self._dep(_string_value(node), required=False)

    def rewrite(self) -> str:
        """Return the rewritten source (see the module docstring)."""
        self._scan_dynamic()
        if self.kind == "cjs":
            body = self._apply()
            return (f"__qjs_cjs({_js(self.name)},function(exports,require,module,__filename,__dirname){{"
                    f"{body}\n}});")
        prologue: list[str] = []
        getters: list[str] = []
        stars: list[str] = []
        for node in self.root.named_children:
            if node.type == "hash_bang_line":
                self._blank(node)
            elif node.type == "import_statement":
                self._import(node, prologue)
            elif node.type == "export_statement":
                self._export(node, getters, stars)
        head = (f"__qjs_def({_js(self.name)},{{{','.join(getters)}}},{json.dumps(stars)});"
                + "".join(prologue))
        return head + self._apply()

    def _import(self, node: tree_sitter.Node, prologue: list[str]) -> None:
        source = node.child_by_field_name("source")
        target = self._dep(_string_value(source))
        self._blank(node)
        clause = next((c for c in node.named_children if c.type == "import_clause"), None)
        if clause is None:
            return
        picks: list[tuple[str, str]] = []
        for part in clause.named_children:
            if part.type == "identifier":
                picks.append(("default", part.text.decode()))
            elif part.type == "namespace_import":
                local = part.named_children[-1].text.decode()
                prologue.append(f"const {local}=__qjs_ns({_js(target)});")
            elif part.type == "named_imports":
                for spec in part.named_children:
                    if spec.type != "import_specifier":
                        continue
                    imported = _name_of(spec.child_by_field_name("name"))
                    alias = spec.child_by_field_name("alias")
                    local = alias.text.decode() if alias is not None else imported
                    picks.append((imported, local))
        if picks:
            locals_ = ",".join(local for _, local in picks)
            wanted = json.dumps([imported for imported, _ in picks])
            prologue.append(f"const [{locals_}]=__qjs_pick({_js(self.name)},{_js(target)},{wanted});")

    def _export(self, node: tree_sitter.Node, getters: list[str], stars: list[str]) -> None:
        source = node.child_by_field_name("source")
        decl = node.child_by_field_name("declaration")
        value = node.child_by_field_name("value")
        is_default = any(c.type == "default" for c in node.children)
        if source is not None:
            target = self._dep(_string_value(source))
            self._blank(node)
            clause = next((c for c in node.named_children if c.type in ("export_clause", "namespace_export")), None)
            if clause is None:
                stars.append(target)
            elif clause.type == "namespace_export":
                alias = _name_of(clause.named_children[-1])
                getters.append(f"get {_js(alias)}(){{return __qjs_ns({_js(target)})}}")
            else:
                for spec in clause.named_children:
                    if spec.type != "export_specifier":
                        continue
                    name = _name_of(spec.child_by_field_name("name"))
                    alias_node = spec.child_by_field_name("alias")
                    alias = _name_of(alias_node) if alias_node is not None else name
                    getters.append(f"get {_js(alias)}(){{return __qjs_ns({_js(target)})[{_js(name)}]}}")
            return
        if decl is not None:
            start = decl.start_byte
            self.edits.append((node.start_byte, start, _BLANK.sub(b" ", self.src[node.start_byte:start])))
            names: list[str] = []
            if decl.type in ("lexical_declaration", "variable_declaration"):
                for declarator in decl.named_children:
                    if declarator.type == "variable_declarator":
                        _pattern_names(declarator.child_by_field_name("name"), names)
            else:
                names.append(decl.child_by_field_name("name").text.decode())
            for n in names:
                exported = "default" if is_default else n
                getters.append(f"get {_js(exported)}(){{return {n}}}")
            return
        if value is not None:
            head = self.src[node.start_byte:value.start_byte]
            if value.type in ("function_expression", "generator_function", "class") and \
                    value.child_by_field_name("name") is None:
                self.edits.append((node.start_byte, value.start_byte, _BLANK.sub(b" ", head)))
                kw = [c for c in value.children if c.type in ("function", "class", "*")]
                at = kw[-1].end_byte
                self.edits.append((at, at, b" __qjs_default"))
            else:
                newlines = head.count(b"\n")
                self.edits.append((node.start_byte, value.start_byte, b"const __qjs_default=" + b"\n" * newlines))
                if not self.src[node.start_byte:node.end_byte].rstrip().endswith(b";"):
                    self.edits.append((node.end_byte, node.end_byte, b";"))
            getters.append('get "default"(){return __qjs_default}')
            return
        clause = next((c for c in node.named_children if c.type == "export_clause"), None)
        self._blank(node)
        if clause is not None:
            for spec in clause.named_children:
                if spec.type != "export_specifier":
                    continue
                local = _name_of(spec.child_by_field_name("name"))
                alias_node = spec.child_by_field_name("alias")
                alias = _name_of(alias_node) if alias_node is not None else local
                getters.append(f"get {_js(alias)}(){{return {local}}}")

    def _apply(self) -> str:
        out = self.src
        for start, end, rep in sorted(self.edits, key=lambda e: (e[0], e[1]), reverse=True):
            out = out[:start] + rep + out[end:]
        return out.decode("utf-8", "surrogatepass")


def plan(main: str, modules: dict[str, tuple[str, object]], native: bool = True) -> Plan:
    """Link ``modules`` starting from ``main``.

    Args:
        main: the main module's name; it must be an ES module.
        modules: name → ``(kind, payload)`` with kind ``js``, ``cjs``, ``text``, ``json`` (payload:
            JSON text) or ``data`` (payload: bytes).
        native: allow a native plan (see the module docstring); ``False``: always link the full way.
    Returns:
        The evaluation ``Plan`` (dependencies first, main last).
    Raises:
        LinkError: syntax error (with module name, line and column), missing module, bad import,
            circular import, or a main module that is not an ES module. A native plan for a main
            module of 4 KiB or more is made without parsing it (the parse is what a native plan
            saves): its syntax errors surface when QuickJS compiles it, and the engine then links
            it with ``native=False``, which raises this same LinkError.
    """
    if main not in modules:
        raise LinkError("Error", f"No such module: {main}")
    if modules[main][0] != "js":
        raise LinkError("TypeError", "Main module must be an ES module.")
    src = modules[main][1]
    if native and isinstance(src, str) and native_candidate(src):
        if len(src) < _PARSE_NATIVE_BELOW:  # cheap here: keep reporting its syntax errors as a LinkError
            data = src.encode("utf-8", "surrogatepass")
            root = _PARSER.parse(data).root_node
            if root.has_error:
                raise _syntax_error(main, data, root)
            url = _url_in_tree(root, data)
        else:  # only when it may be named in code (not a line comment) does it cost a parse
            url = bool(mentioned(src, ("URL", "URLSearchParams"))) and uses_url(src)
        return Plan((Step("native", main, src),), url, mentioned(src), True, main, modules)
    steps: list[Step] = []
    state: dict[str, int] = {}
    uses_url_ = False
    names: set[str] = set()

    def visit(name: str, chain: list[str]) -> None:
        nonlocal uses_url_
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(chain[chain.index(name):] + [name])
            raise LinkError("Error", f"circular import is not supported: {cycle}")
        state[name] = 1
        kind, payload = modules[name]
        if kind in ("js", "cjs"):
            mod = _Module(name, "esm" if kind == "js" else "cjs", payload, modules)
            code = mod.rewrite()
            uses_url_ = uses_url_ or mod.uses_url
            names.update(mentioned(payload))
            for dep in mod.deps:
                visit(dep, chain + [name])
            steps.append(Step("esm" if kind == "js" else "cjs", name, code))
        else:
            if isinstance(payload, str):  # text and json modules too: a worker may evaluate a text module
                names.update(mentioned(payload))
            steps.append(Step(kind, name, payload))
        state[name] = 2

    visit(main, [])
    return Plan(tuple(steps), uses_url_, frozenset(names))
