"""Layering, checked: generators and the config model are pure and never import the edge.

- ``tunnel.config`` imports only the standard library, PyYAML and itself.
- ``generators`` imports only the standard library, ``tunnel.config`` and itself; the loader only
  inside ``GeneratedWorker.to_worker_code`` (a function-level import).
- Neither imports anything that does I/O (sockets, asyncio, HTTP, SQLite, subprocess, QuickJS).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"socket", "asyncio", "aiohttp", "websockets", "sqlite3", "subprocess", "quickjs", "httptools",
             "urllib.request", "http.client", "threading", "multiprocessing"}


def imports(path: Path):
    """(module name, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, id(node) in top


def allowed(name: str, package: str) -> bool:
    root = name.split(".")[0]
    if name in FORBIDDEN or root in FORBIDDEN:
        return False
    if root in sys.stdlib_module_names or root == "__future__":
        return True
    if package == "config":
        return root == "yaml" or name == "tunnel.config" or name.startswith("tunnel.config.")
    return root == "generators" or name == "tunnel.config" or name.startswith("tunnel.config.")


@pytest.mark.parametrize("package,folder", [("config", "tunnel/config"), ("generators", "generators")])
def test_pure_layers_import_only_what_they_may(package, folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name, top_level in imports(path):
            lazy_loader = (package == "generators" and path.name == "code.py" and not top_level
                           and name == "tunnel.loader")
            if not allowed(name, package) and not lazy_loader:
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert bad == []


def test_generators_import_without_the_loader():
    import subprocess

    code = ("import sys, generators, generators.routing; "
            "from tunnel.config import load_yaml, parse_config; "
            "c = parse_config({'tunnels': {'a': {'hostnames': ['a.test']}}}); "
            "generators.generate_tunnel_worker(c.tunnels['a']); generators.generate_config_worker(c, 1); "
            "print(sorted(m for m in sys.modules if m.startswith(('tunnel.loader', 'tunnel.edge', 'quickjs', "
            "'aiohttp', 'asyncio'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_only_keys_module_spells_the_key_formats():
    spelled = []
    for path in sorted((ROOT / "generators").rglob("*.py")):
        text = path.read_text()
        for fmt in ('f"tunnel-{', 'f"metrics-{', 'f"config-{'):
            if fmt in text and path.name != "keys.py":
                spelled.append(f"{path.name}: {fmt}")
    assert spelled == []
