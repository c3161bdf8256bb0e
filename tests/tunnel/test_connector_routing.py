"""The connector's allow-list and ingress routing (pure functions)."""

from __future__ import annotations

import pytest

from tunnel.connector.routing import ConfigError, build_config, service_allowed


@pytest.mark.parametrize("service, allowed, ok", [
    ("http://127.0.0.1:4100", "http://127.0.0.1:4100", True),
    ("http://127.0.0.1:41000", "http://127.0.0.1:4100", False),  # not a text prefix
    ("http://127.0.0.1:9000", "http://127.0.0.1", True),  # any port on the host
    ("http://127.0.0.1:9000", "http://127.0.0.1:", True),
    ("http://localhost.evil.com:80", "http://localhost", False),
    ("https://127.0.0.1:4100", "http://127.0.0.1:4100", False),  # scheme matters
    ("http://127.0.0.1", "http://127.0.0.1:80", True),
])
def test_service_allowed(service, allowed, ok):
    assert service_allowed(service, allowed) is ok


def test_a_config_with_a_service_outside_the_allow_list_is_rejected_with_its_reason():
    raw = {"hostnames": ["web.localhost"], "ingress": [{"service": "http://127.0.0.1:41000"}], "services": []}
    with pytest.raises(ConfigError) as info:
        build_config(2, raw, ("http://127.0.0.1:4100",))
    assert "http://127.0.0.1:41000 is not allowed" in info.value.errors[0]
    assert build_config(2, raw, ("http://127.0.0.1",)).service_for("web.localhost", "/") == "http://127.0.0.1:41000"
