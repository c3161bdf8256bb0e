"""Redaction, content hashes, credential hashes and YAML positions."""

from __future__ import annotations

import copy
import hashlib

from tunnel.config import (
    REDACTED,
    content_hash,
    hash_password,
    hash_secret,
    load_yaml,
    parse_config,
    redact_document,
    verify_secret,
    yaml_line,
)


def test_reference_hashes_are_what_the_comments_say(reference_doc):
    assert hash_password("ops", "correct horse") == \
        "sha256:11b78eb048dc73c5a347094aa8bb96bc36e586d6ddefd72c6ddc2abd0386f9bc"
    assert hash_secret("ci-reader-token") == "sha256:a5835c72ff5990869ba782ea1337bd3d4664a3f23efef3703ba73bce77a7a297"
    assert hash_secret("web-reader-token") == reference_doc["tunnels"]["web"]["metrics_token"]
    assert verify_secret("web-reader-token", reference_doc["tunnels"]["web"]["metrics_token"].upper().replace(
        "SHA256:", "sha256:"))
    assert not verify_secret("api-token", reference_doc["tunnels"]["web"]["metrics_token"])


def test_redaction_hides_every_credential_hash_and_nothing_else(reference_doc):
    original = copy.deepcopy(reference_doc)
    redacted = redact_document(reference_doc)
    assert reference_doc == original  # the input is untouched
    text = repr(redacted)
    for secret in ("11b78eb0", "a5835c72", "48adbbcf"):
        assert secret not in text
    web = redacted["tunnels"]["web"]
    assert web["metrics_token"] == REDACTED and redacted["tunnels"]["api"]["metrics_token"] == REDACTED
    assert web["policy"]["on_request"][2]["actions"][0]["basic_auth"] == {"realm": "admin", "credentials": [REDACTED]}
    web["metrics_token"] = original["tunnels"]["web"]["metrics_token"]
    web["policy"]["on_request"][2]["actions"][0]["basic_auth"]["credentials"] = \
        original["tunnels"]["web"]["policy"]["on_request"][2]["actions"][0]["basic_auth"]["credentials"]
    web["policy"]["on_request"][4]["actions"][0]["bearer_auth"]["tokens"] = \
        original["tunnels"]["web"]["policy"]["on_request"][4]["actions"][0]["bearer_auth"]["tokens"]
    redacted["tunnels"]["api"]["metrics_token"] = original["tunnels"]["api"]["metrics_token"]
    assert redacted == original


def test_redaction_tolerates_odd_documents():
    assert redact_document({}) == {}
    odd = {"tunnels": {"a": None, "b": {"policy": {"on_request": [None, {"actions": [1, {"basic_auth": 3}]}]}}}}
    assert redact_document(odd) == odd


def test_content_hash_ignores_key_order_and_formatting(reference_doc, reference_text):
    reordered = dict(reversed(list(reference_doc.items())))
    assert content_hash(reordered) == content_hash(reference_doc) == parse_config(reference_doc).hash
    import json

    assert content_hash(json.loads(json.dumps(reference_doc, indent=4))) == content_hash(reference_doc)
    changed = copy.deepcopy(reference_doc)
    changed["tunnels"]["api"]["hostnames"] = ["api2.localhost"]
    assert content_hash(changed) != content_hash(reference_doc)
    assert content_hash({}) == "sha256:" + hashlib.sha256(b"{}").hexdigest()


def test_yaml_line_points_at_rules(reference_text):
    lines = reference_text.splitlines()
    line = yaml_line(reference_text, ["tunnels", "web", "ingress", 1])
    assert "hostname: docs.web.localhost" in lines[line - 1]
    assert yaml_line(reference_text, ["tunnels", "nope"]) is None
    assert load_yaml("") == {}
