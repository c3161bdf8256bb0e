"""Golden files: the generated code for the reference config, byte for byte.

After an intended change to a generator, regenerate them with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/generators/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from generators import generate_config_worker, generate_custom_worker, generate_metrics_worker, generate_tunnel_worker

GOLDEN = Path(__file__).parent / "golden"


def cases(config):
    web, api = config.tunnels["web"], config.tunnels["api"]
    return {
        "tunnel-web.js": generate_tunnel_worker(web).modules["tunnel.js"],
        "tunnel-web.json": json.dumps(generate_tunnel_worker(web).as_dict(), indent=2, sort_keys=True) + "\n",
        "custom-web.json": json.dumps(generate_custom_worker(web).as_dict(), indent=2, sort_keys=True) + "\n",
        "tunnel-api.js": generate_tunnel_worker(api).modules["tunnel.js"],
        "metrics-web.js": generate_metrics_worker(web).modules["metrics.js"],
        "metrics-api.js": generate_metrics_worker(api).modules["metrics.js"],
        "config-1.js": generate_config_worker(config, 1).modules["config.js"],
    }


@pytest.mark.parametrize("name", ["tunnel-web.js", "tunnel-web.json", "custom-web.json", "tunnel-api.js", "metrics-web.js",
                                  "metrics-api.js", "config-1.js"])
def test_golden(reference_config, name):
    text = cases(reference_config)[name]
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed; if intended, regenerate with UPDATE_GOLDEN=1 and review"


def test_golden_modules_compile(reference_config, compile_js):
    for name, text in cases(reference_config).items():
        if name.endswith(".js"):
            compile_js(text)
