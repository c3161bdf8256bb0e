"""Import contracts between the project's layers, checked by reading the source with ``ast``.

- ``tunnel/protocol/`` is sans-I/O: no asyncio, sockets, TLS, selectors or HTTP/WebSocket library.
- ``generators/`` turn validated config into module text: they never reach into the edge, the
  connector, the session or the tunnel protocol, nor an HTTP/WebSocket library.
- ``tunnel/loader/`` knows nothing of tunnels: no edge, connector or generators.
- Exactly one module of the packages touches the ``quickjs`` binding.

Imports are collected from ``import``/``from … import`` statements anywhere in a module
(including inside functions and ``TYPE_CHECKING`` blocks), relative imports resolved against the
module's package, plus string literals passed to ``importlib.import_module`` / ``__import__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROTOCOL_FORBIDDEN = ("asyncio", "socket", "ssl", "selectors", "aiohttp", "websockets", "httptools", "uvloop")
GENERATORS_FORBIDDEN = ("tunnel.edge", "tunnel.connector", "tunnel.session", "tunnel.protocol", "aiohttp",
                        "websockets")
LOADER_FORBIDDEN = ("tunnel.edge", "tunnel.connector", "generators")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the text of ``module``) may import.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                found.add(base)
            found.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
    return found


def matches(name: str, forbidden: tuple[str, ...]) -> str | None:
    for prefix in forbidden:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def modules_under(directory: str) -> list[Path]:
    paths = sorted((ROOT / directory).rglob("*.py"))
    assert paths, f"no Python modules under {directory}/: the contract would pass vacuously"
    return paths


def violations(directory: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in modules_under(directory):
        names = imported_modules(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
        for name in sorted(names):
            if matches(name, forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_protocol_core_imports_no_io():
    assert violations("tunnel/protocol", PROTOCOL_FORBIDDEN) == []


def test_generators_do_not_import_the_tunnel_runtime():
    assert violations("generators", GENERATORS_FORBIDDEN) == []


def test_loader_knows_nothing_of_tunnels():
    assert violations("tunnel/loader", LOADER_FORBIDDEN) == []


def test_exactly_one_module_imports_quickjs():
    importers = [f"{path.relative_to(ROOT)}" for directory in ("tunnel", "generators")
                 for path in modules_under(directory)
                 if any(matches(name, ("quickjs",)) for name in
                        imported_modules(path.read_text(encoding="utf-8"), module_name(path),
                                         path.name == "__init__.py"))]
    if not importers:
        pytest.skip("no module imports quickjs yet")
    assert len(importers) == 1, f"only one module may touch the QuickJS binding, found {importers}"
    assert importers[0].startswith("tunnel/loader/"), importers


# ---------------------------------------------------------------- the scanner itself


SAMPLE = '''
import os, socket as sock
import asyncio.subprocess
from ssl import SSLContext
from . import frames
from .. import edge
from ..connector.agent import run
from tunnel import session
import importlib
importlib.import_module("websockets.client")
__import__("uvloop")

def later():
    import selectors
'''


def test_scanner_finds_every_form_of_import():
    names = imported_modules(SAMPLE, "tunnel.protocol.codec")
    assert {"os", "socket", "asyncio.subprocess", "ssl", "ssl.SSLContext", "tunnel.protocol",
            "tunnel.protocol.frames", "tunnel", "tunnel.edge", "tunnel.connector.agent",
            "tunnel.connector.agent.run", "tunnel.session", "importlib", "websockets.client", "uvloop",
            "selectors"} == names
    assert {matches(n, PROTOCOL_FORBIDDEN) for n in names} - {None} == {
        "socket", "asyncio", "ssl", "websockets", "uvloop", "selectors"}
    assert {matches(n, GENERATORS_FORBIDDEN) for n in names} - {None} == {
        "tunnel.protocol", "tunnel.edge", "tunnel.connector", "tunnel.session", "websockets"}


def test_relative_import_from_a_package_init_resolves_against_the_package():
    assert imported_modules("from .edge import server", "tunnel", is_package=True) == {"tunnel.edge",
                                                                                        "tunnel.edge.server"}


def test_prefix_match_is_by_dotted_component():
    assert matches("asyncio_compat", PROTOCOL_FORBIDDEN) is None
    assert matches("tunnel.edgecase", LOADER_FORBIDDEN) is None
    assert matches("generators.keys", LOADER_FORBIDDEN) == "generators"


def test_contracts_fail_on_a_tree_that_breaks_them(tmp_path, monkeypatch):
    (tmp_path / "tunnel" / "protocol").mkdir(parents=True)
    (tmp_path / "tunnel" / "protocol" / "codec.py").write_text("from asyncio import sleep\n")
    (tmp_path / "tunnel" / "loader").mkdir()
    (tmp_path / "tunnel" / "loader" / "engine.py").write_text("import quickjs\n")
    (tmp_path / "tunnel" / "loader" / "child.py").write_text("from ..edge import registry\n")
    (tmp_path / "generators").mkdir()
    (tmp_path / "generators" / "routing.py").write_text("import quickjs\nfrom tunnel.protocol import frames\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations("tunnel/protocol", PROTOCOL_FORBIDDEN) == ["tunnel/protocol/codec.py imports asyncio",
                                                              "tunnel/protocol/codec.py imports asyncio.sleep"]
    assert violations("tunnel/loader", LOADER_FORBIDDEN) == ["tunnel/loader/child.py imports tunnel.edge",
                                                             "tunnel/loader/child.py imports tunnel.edge.registry"]
    assert violations("generators", GENERATORS_FORBIDDEN) == ["generators/routing.py imports tunnel.protocol",
                                                              "generators/routing.py imports tunnel.protocol.frames"]
    with pytest.raises(AssertionError, match="only one module may touch the QuickJS binding"):
        test_exactly_one_module_imports_quickjs()
