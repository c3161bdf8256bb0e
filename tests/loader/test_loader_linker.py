"""The module linker on its own (pure Python + tree-sitter; no QuickJS)."""

from __future__ import annotations

import pytest

from tunnel.loader.linker import LinkError, plan, resolve

NAMES = {"src/index.js", "src/util.js", "lib/x.js", "util.js"}


@pytest.mark.parametrize("importer,spec,expected", [
    ("src/index.js", "./util.js", "src/util.js"),
    ("src/index.js", "../lib/x.js", "lib/x.js"),
    ("src/index.js", "util.js", "util.js"),
    ("src/index.js", "/lib/x.js", "lib/x.js"),
    ("src/index.js", "./nope.js", None),
    ("src/index.js", "../../x.js", None),
    ("index.js", "./src/../util.js", "util.js"),
])
def test_resolve(importer, spec, expected):
    assert resolve(importer, spec, NAMES) == expected


def test_plan_is_dependency_first_and_skips_unreachable_modules():
    mods = {"index.js": ("js", "import './a.js'; import b from './b.txt'; export default {}"),
            "a.js": ("js", "import './c.js'"), "c.js": ("js", ""), "b.txt": ("text", "t"), "unused.js": ("js", "x")}
    p = plan("index.js", mods)
    assert [s.name for s in p.steps] == ["c.js", "a.js", "b.txt", "index.js"]
    assert [s.kind for s in p.steps] == ["esm", "esm", "text", "esm"]
    assert p.uses_url is False
    assert plan("index.js", {"index.js": ("js", "new URL('http://a')")}).uses_url is True


def test_rewrite_preserves_line_numbers_and_ignores_lookalikes():
    src = ("// import x from './nope.js'\nconst s = \"export default 1\";\nconst t = `import ${s}`;\n"
           "const re = /import\\s+x from 'y'/;\nimport {a} from './a.js';\nexport const b = a;\nexport default b;\n")
    p = plan("index.js", {"index.js": ("js", src), "a.js": ("js", "export const a = 1")})
    out = p.steps[-1].payload
    assert out.count("\n") == src.count("\n")
    lines = out.split("\n")
    assert "// import x from './nope.js'" in lines[0]  # comment untouched (after the line-1 prologue)
    assert lines[1] == 'const s = "export default 1";'
    assert lines[2] == "const t = `import ${s}`;"
    assert lines[3] == "const re = /import\\s+x from 'y'/;"
    assert lines[4].strip() == ""
    assert lines[5] == "       const b = a;"
    assert lines[6].startswith("const __qjs_default=") and "b;" in lines[6]


@pytest.mark.parametrize("mods,pattern", [
    ({"index.js": ("js", "let a = ;")}, r"SyntaxError: .*\n    at index\.js:1:\d+"),
    ({"index.js": ("js", "import x from 'missing.js'")}, r'No such module "missing\.js"'),
    ({"index.js": ("cjs", "module.exports = 1")}, r"Main module must be an ES module"),
    ({"index.js": ("js", "import './b.js'"), "b.js": ("js", "import './index.js'")}, r"circular import"),
])
def test_link_errors(mods, pattern):
    with pytest.raises(LinkError, match=pattern):
        plan("index.js", mods)


def test_utf8_columns_are_characters_not_bytes():
    with pytest.raises(LinkError, match=r"at index\.js:1:16"):
        plan("index.js", {"index.js": ("js", "const é = 'ü'; )")})
