from generators import config_key, metrics_key, parse_key, tunnel_key


def test_key_formats_round_trip():
    assert tunnel_key("web") == "tunnel-web" and metrics_key("web") == "metrics-web"
    assert config_key(12) == "config-12"
    assert parse_key("tunnel-web") == ("tunnel", "web")
    assert parse_key("metrics-a-b") == ("metrics", "a-b")
    assert parse_key("config-12") == ("config", "12")
    assert parse_key("config-0") is None and parse_key("other") is None and parse_key("tunnel-") is None
