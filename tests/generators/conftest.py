"""Shared fixtures: the reference config, generated workers, and a way to run them.

``run`` loads a GeneratedWorker in the real loader (tunnel.loader) with a fake tunnel binding
that records what the worker forwards, and returns the response.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import quickjs

from tunnel.config import load_yaml, parse_config

REFERENCE = Path("/work/shared/examples/edge-config.yaml")
_LOCAL = Path(__file__).resolve().parents[3] / "shared" / "examples" / "edge-config.yaml"
if _LOCAL.exists():
    REFERENCE = _LOCAL


def reference_doc() -> dict[str, Any]:
    return copy.deepcopy(_REFERENCE_DOC)


_REFERENCE_DOC = load_yaml(REFERENCE.read_text())


@pytest.fixture()
def doc() -> dict[str, Any]:
    return reference_doc()


@pytest.fixture(scope="session")
def reference_config():
    return parse_config(reference_doc())


def compile_module(source: str) -> None:
    """Compile an ES module with QuickJS; a SyntaxError raises. Imports of siblings are fine.

    quickjs-ng reports a missing import as ``ReferenceError: could not load module`` only after
    parsing succeeded, so that error means the syntax is good.
    """
    try:
        quickjs.Context().module(source)
    except quickjs.JSException as exc:
        if "could not load module" not in str(exc):
            raise


@dataclass
class FakeTunnel:
    """The TUNNEL binding: records each forwarded request and answers like an origin."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Server": "origin", "X-Origin": "yes"})
    body: bytes = b"origin says hi"
    seen: list[tuple[Any, Any]] = field(default_factory=list)

    async def fetch(self, request, opts=None):
        from tunnel.loader import Response

        self.seen.append((request, opts))
        return Response(self.status, headers=dict(self.headers), body=self.body)
