"""Payloads of control frames (tunnel/protocol/messages.py): heads and handshake documents."""

from __future__ import annotations

import json

import pytest

from tunnel.errors import ProtocolError
from tunnel.protocol.messages import RequestHead, ResponseHead, decode_document, encode_document


def test_request_head_golden_both_ways():
    head = RequestHead("GET", "/x?y=1", [("host", "web.localhost")])
    wire = b'["GET","/x?y=1",[["host","web.localhost"]],false,null]'
    assert head.encode() == wire
    assert RequestHead.decode(wire) == head


def test_upgrade_request_with_service_golden_both_ways():
    head = RequestHead("GET", "/ws", [("upgrade", "websocket"), ("connection", "upgrade")], True, "api")
    wire = b'["GET","/ws",[["upgrade","websocket"],["connection","upgrade"]],true,"api"]'
    assert head.encode() == wire
    assert RequestHead.decode(wire) == head


def test_response_head_golden_both_ways():
    head = ResponseHead(302, "Found", [("location", "/next")])
    wire = b'[302,"Found",[["location","/next"]]]'
    assert head.encode() == wire
    assert ResponseHead.decode(wire) == head


def test_latin1_header_bytes_travel_as_utf8_json_and_come_back_unchanged():
    raw = bytes(range(0x80, 0x100)) + b'"\\'
    head = ResponseHead(200, "OK", [("x-bin", raw.decode("latin-1"))])
    wire = head.encode()
    # 0x80–0xFF cost two UTF-8 bytes each (not a 6-byte \u00XX escape); quote and backslash two.
    assert wire == b'[200,"OK",[["x-bin","' + raw.decode("latin-1").encode("utf-8")[:-2] + b'\\"\\\\"]]]'
    assert ResponseHead.decode(wire).headers[0][1].encode("latin-1") == raw


def test_ascii_escaped_json_from_an_older_peer_still_decodes():
    wire = json.dumps([200, "OK", [["x", "\xff"]]]).encode("ascii")
    assert b"\\u00ff" in wire
    assert ResponseHead.decode(wire) == ResponseHead(200, "OK", [("x", "\xff")])


def test_a_64_kib_head_of_high_bytes_fits_a_control_frame():
    # The edge admits up to 64 KiB of raw head; the peer refuses HEADERS over 256 KiB.
    head = RequestHead("GET", "/", [("x-fill", "\xff" * 64 * 1024)])
    assert len(head.encode()) == 2 * 64 * 1024 + len(b'["GET","/",[["x-fill",""]],false,null]')


def test_handshake_document_round_trip():
    doc = {"code": "unauthorized", "message": "unknown token"}
    assert encode_document(doc) == b'{"code":"unauthorized","message":"unknown token"}'
    assert decode_document(encode_document(doc), "REFUSE") == doc


@pytest.mark.parametrize("payload, match", [
    (b"[not json", "REFUSE is not valid JSON"),
    (b"\xff\xfe\x00", "REFUSE is not valid JSON"),
    (b"[1, 2]", "REFUSE must be a JSON object"),
    (b"null", "REFUSE must be a JSON object"),
    (b"[" * 200_000, "REFUSE is nested too deeply"),
])
def test_bad_handshake_document(payload, match):
    with pytest.raises(ProtocolError, match=match):
        decode_document(payload, "REFUSE")


@pytest.mark.parametrize("wire, match", [
    (b'{"method":"GET"}', "5-element array"),
    (b'["GET","/",[],false]', "5-element array"),
    (b'["GET","/",[],false,null', "not valid JSON"),
    (b'[' * 100_000, "nested too deeply"),
    (b'["","/",[],false,null]', "bad method"),
    (b'["G T","/",[],false,null]', "bad method"),
    (b'["G\\u00c9T","/",[],false,null]', "bad method"),
    (b'[1,"/",[],false,null]', "bad method"),
    (b'["GET","",[],false,null]', "bad target"),
    (b'["GET","/a b",[],false,null]', "bad target"),
    (b'["GET",7,[],false,null]', "bad target"),
    (b'["GET","/",[],1,null]', "bad upgrade or service"),
    (b'["GET","/",[],false,3]', "bad upgrade or service"),
    (b'["GET","/",{},false,null]', "headers must be an array"),
    (b'["GET","/",[["a"]],false,null]', "\\[name, value\\] pair"),
    (b'["GET","/",[["a","b","c"]],false,null]', "\\[name, value\\] pair"),
    (b'["GET","/",[["","b"]],false,null]', "bad header"),
    (b'["GET","/",[["a:b","c"]],false,null]', "bad header"),
    (b'["GET","/",[["a b","c"]],false,null]', "bad header"),
    (b'["GET","/",[["a",1]],false,null]', "bad header"),
])
def test_bad_request_head(wire, match):
    with pytest.raises(ProtocolError, match=match):
        RequestHead.decode(wire)


@pytest.mark.parametrize("wire, match", [
    (b'[200,"OK"]', "3-element array"),
    (b'[99,"OK",[]]', "bad status"),
    (b'[1000,"OK",[]]', "bad status"),
    (b'["200","OK",[]]', "bad status"),
    (b'[true,"OK",[]]', "bad status"),
    (b'[200.0,"OK",[]]', "bad status"),
    (b'[200,null,[]]', "bad reason"),
    (b'[200,"OK",null]', "headers must be an array"),
])
def test_bad_response_head(wire, match):
    with pytest.raises(ProtocolError, match=match):
        ResponseHead.decode(wire)


SPLITTERS = {"CR": "\\r", "LF": "\\n", "NUL": "\\u0000"}


@pytest.mark.parametrize("char", SPLITTERS)
@pytest.mark.parametrize("where, template, match", [
    ("header name", '["GET","/",[["x{c}y","v"]],false,null]', "bad header"),
    ("header value", '["GET","/",[["x","a{c}b"]],false,null]', "bad header"),
    ("target", '["GET","/a{c}b",[],false,null]', "bad target"),
    ("method", '["GE{c}T","/",[],false,null]', "bad method"),
])
def test_cr_lf_nul_refused_in_request_heads(char, where, template, match):
    with pytest.raises(ProtocolError, match=match):
        RequestHead.decode(template.replace("{c}", SPLITTERS[char]).encode())


@pytest.mark.parametrize("char", SPLITTERS)
@pytest.mark.parametrize("template, match", [
    ('[200,"OK",[["x{c}y","v"]]]', "bad header"),
    ('[200,"OK",[["x","a{c}b"]]]', "bad header"),
    ('[200,"O{c}K",[]]', "bad reason"),
])
def test_cr_lf_nul_refused_in_response_heads(char, template, match):
    with pytest.raises(ProtocolError, match=match):
        ResponseHead.decode(template.replace("{c}", SPLITTERS[char]).encode())
