"""Edge config: raw document (YAML/JSON) → validated, frozen objects, in one place.

    doc = load_yaml(text)            # raw dict; YAML errors → ConfigError
    config = parse_config(doc)       # frozen Config; every problem → ConfigError(.errors = ["path: message", …])
    redact_document(doc)             # for /config, pull, diff: credential hashes → "<redacted>"
    content_hash(doc)                # "sha256:<hex>" of the canonical JSON

The format is documented in docs/config.md; the model in :mod:`tunnel.config.model`.
"""

from tunnel.config.credentials import hash_password, hash_secret, verify_secret
from tunnel.config.document import REDACTED, canonical_json, content_hash, load_yaml, redact_document, yaml_line
from tunnel.config.errors import ConfigError
from tunnel.config.ingress import match_ingress
from tunnel.config.model import (
                                 AbSplit,
                                 BasicAuth,
                                 BearerAuth,
                                 Config,
                                 Cors,
                                 CustomResponse,
                                 CustomWorker,
                                 Deny,
                                 FeatureFlag,
                                 HeaderValues,
                                 IngressRule,
                                 IpRestriction,
                                 Match,
                                 MetricDefinition,
                                 MetricLabel,
                                 Policy,
                                 RateLimit,
                                 Redirect,
                                 RemoveHeaders,
                                 Rule,
                                 TunnelConfig,
                                 UrlRewrite,
                                 Variant,
)
from tunnel.config.parse import parse_config
from tunnel.config.patterns import glob_match, host_matches, normalize_host

__all__ = [
                                 "REDACTED",
                                 "AbSplit",
                                 "BasicAuth",
                                 "BearerAuth",
                                 "Config",
                                 "ConfigError",
                                 "Cors",
                                 "CustomResponse",
                                 "CustomWorker",
                                 "Deny",
                                 "FeatureFlag",
                                 "HeaderValues",
                                 "IngressRule",
                                 "IpRestriction",
                                 "Match",
                                 "MetricDefinition",
                                 "MetricLabel",
                                 "Policy",
                                 "RateLimit",
                                 "Redirect",
                                 "RemoveHeaders",
                                 "Rule",
                                 "TunnelConfig",
                                 "UrlRewrite",
                                 "Variant",
                                 "canonical_json",
                                 "content_hash",
                                 "glob_match",
                                 "hash_password",
                                 "hash_secret",
                                 "host_matches",
                                 "load_yaml",
                                 "match_ingress",
                                 "normalize_host",
                                 "parse_config",
                                 "redact_document",
                                 "verify_secret",
                                 "yaml_line",
]
