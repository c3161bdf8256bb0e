"""Layering: only tunnel/loader/engine.py touches the QuickJS binding; the linker stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_engine_imports_quickjs():
    offenders = []
    for package in ("tunnel", "generators"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if imports_of(path) & {"quickjs", "_quickjs"} and path != ROOT / "tunnel/loader/engine.py":
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    assert "quickjs" in imports_of(ROOT / "tunnel/loader/engine.py")


def test_linker_and_protocol_are_pure():
    for name in ("linker.py", "protocol.py", "errors.py", "http_types.py"):
        assert not imports_of(ROOT / "tunnel/loader" / name) & {"asyncio", "quickjs", "_quickjs", "socket"}, name
