"""`tunnel config check`, `tunnel workers render` and `tunnel hash-password`, run in-process."""

from __future__ import annotations

import io
import json

import yaml

from tunnel.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_accepts_the_reference(capsys, reference_text, tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(reference_text)
    code, out, _ = run(capsys, "config", "check", str(path))
    assert code == 0 and out.startswith(f"OK: {path}: 2 tunnel(s) (web, api); content sha256:")


def test_check_prints_every_error_and_fails(capsys, reference_doc, tmp_path):
    reference_doc["tunnels"]["web"]["ingress"].reverse()
    reference_doc["tunnels"]["web"]["policy"]["on_request"][7]["actions"][0]["rate_limit"]["capacity"] = "lots"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(reference_doc))
    code, out, _ = run(capsys, "config", "check", str(path))
    assert code == 1
    assert "  tunnels.web.ingress[0]: a catch-all rule (no hostname, no path) must be the last rule" in out
    assert "  tunnels.web.ingress[2]: the last rule must be a catch-all" in out
    assert "  tunnels.web.policy.on_request[7].actions[0].rate_limit.capacity: must be a positive integer" in out
    code, out, _ = run(capsys, "config", "check", str(path), "--json")
    assert code == 1 and json.loads(out)["ok"] is False and len(json.loads(out)["errors"]) == 3


def test_check_yaml_syntax_error_and_missing_file(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tunnels: {web: [\n")
    code, out, _ = run(capsys, "config", "check", str(path))
    assert code == 1 and "<yaml>: line" in out
    code, _, err = run(capsys, "config", "check", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err


def test_check_rule(capsys, reference_text, reference_path):
    lines = reference_text.splitlines()
    code, out, _ = run(capsys, "config", "check", reference_path, "--rule", "http://docs.web.localhost/guide",
                       "--rule", "http://api.localhost:8080/x")
    assert code == 0
    docs_line = next(i for i, line in enumerate(lines, 1) if "hostname: docs.web.localhost" in line)
    assert (f"http://docs.web.localhost/guide: tunnel web, rule 1 (tunnels.web.ingress[1], line {docs_line}): "
            "http://127.0.0.1:9001") in out
    assert "http://api.localhost:8080/x: tunnel api, rule 0 (tunnels.api.ingress[0], line" in out
    code, out, _ = run(capsys, "config", "check", reference_path, "--rule", "http://unknown.test/")
    assert code == 1 and "no tunnel serves the hostname 'unknown.test'" in out


def test_workers_render(capsys, reference_path):
    code, out, _ = run(capsys, "workers", "render", reference_path, "--tunnel", "web", "--json")
    rendered = json.loads(out)
    assert code == 0 and set(rendered) == {"tunnel-web", "custom-web", "metrics-web"}
    web, custom = rendered["tunnel-web"], rendered["custom-web"]
    # The policy is generated (trusted); the custom code beside it is loaded on its own, untrusted.
    assert web["main_module"] == "tunnel.js" and set(web["modules"]) == {"tunnel.js"} and web["trusted"]
    assert custom["main_module"] == "index.js" and set(custom["modules"]) == {"index.js", "stamp.js"}
    assert not custom["trusted"]
    assert web["hash"] in web["modules"]["tunnel.js"]
    code, out, _ = run(capsys, "workers", "render", reference_path, "--tunnel", "api", "--config-version", "3")
    assert code == 0 and "=== tunnel-api:" in out and "=== metrics-api:" in out and "=== config-3:" in out
    assert "--- tunnel.js (ES module) ---" in out
    code, _, err = run(capsys, "workers", "render", reference_path, "--tunnel", "nope")
    assert code == 1 and "tunnels: web, api" in err


def test_hash_password(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    code, out, _ = run(capsys, "hash-password", "--user", "ops")
    assert (code, out) == (0, "sha256:11b78eb048dc73c5a347094aa8bb96bc36e586d6ddefd72c6ddc2abd0386f9bc\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("ci-reader-token\n"))
    code, out, _ = run(capsys, "hash-password")
    assert out == "sha256:a5835c72ff5990869ba782ea1337bd3d4664a3f23efef3703ba73bce77a7a297\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert run(capsys, "hash-password")[0] == 2
