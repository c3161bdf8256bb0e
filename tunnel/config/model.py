"""The validated config: frozen dataclasses built only by :func:`tunnel.config.parse_config`.

Values are normalised on the way in (hostnames and header names lowercased, methods
uppercased, durations in seconds, CIDRs parsed, credential hashes lowercased), so consumers
(the generators, the edge, the connector) never re-check them.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Union

from tunnel.config import patterns

#: What a tunnel's ``worker.limits`` may ask for (the loader's ``WorkerCode.limits`` takes the same).
WORKER_LIMIT_RANGES = {"cpu_ms": (1, 60_000), "memory_mb": (4, 2048)}

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# --- connector side ----------------------------------------------------------------------------

@dataclass(frozen=True)
class IngressRule:
    """One connector-side rule: where a request for ``hostname``/``path`` goes (``service``).

    ``hostname`` and ``path`` are None when the rule does not constrain them; the last rule of a
    tunnel's ingress has both None (the catch-all). ``service`` is an ``http(s)://host[:port]`` URL
    or ``http_status:<code>``.
    """

    index: int
    service: str
    hostname: str | None = None
    path: str | None = None

    @property
    def is_catch_all(self) -> bool:
        """True for a rule that matches every request."""
        return self.hostname is None and self.path is None

    def matches(self, host: str, path: str) -> bool:
        """True when this rule matches a request for normalised ``host`` and URL ``path``."""
        if self.hostname is not None and not patterns.host_matches(self.hostname, host):
            return False
        return self.path is None or patterns.glob_match(self.path, path)


# --- edge side: policy --------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """Conditions of a rule; every given condition must hold (None = not constrained).

    ``headers``/``query``/``cookies`` are ``(name, glob)`` pairs (header names lowercased);
    ``status`` (on_response only) holds codes (``404``) and classes (``"5xx"``).
    """

    hosts: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    headers: tuple[tuple[str, str], ...] | None = None
    query: tuple[tuple[str, str], ...] | None = None
    cookies: tuple[tuple[str, str], ...] | None = None
    client_ip: tuple[Network, ...] | None = None
    status: tuple[int | str, ...] | None = None


@dataclass(frozen=True)
class HeaderValues:
    """``set_*_headers`` / ``add_*_headers``: ``(name, value)`` pairs; ``target`` is request or response."""

    kind: str
    target: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RemoveHeaders:
    """``remove_request_headers`` / ``remove_response_headers``: lowercased names."""

    kind: str
    target: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class UrlRewrite:
    """Replace the first match of regex ``pattern`` in the path with ``replacement`` (``$1`` groups)."""

    pattern: str
    replacement: str
    kind: str = "url_rewrite"


@dataclass(frozen=True)
class Redirect:
    """Answer with ``status`` and ``Location: location`` exactly as written."""

    location: str
    status: int = 302
    kind: str = "redirect"


@dataclass(frozen=True)
class CustomResponse:
    """Answer with a fixed response (a maintenance page, for example)."""

    status: int
    body: str
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    kind: str = "custom_response"


@dataclass(frozen=True)
class BasicAuth:
    """Require HTTP basic auth; ``credentials`` are ``sha256:<hex>`` hashes of ``user:password``."""

    realm: str
    credentials: tuple[str, ...]
    kind: str = "basic_auth"


@dataclass(frozen=True)
class BearerAuth:
    """Require ``Authorization: Bearer <token>``; ``tokens`` are ``sha256:<hex>`` hashes."""

    realm: str
    tokens: tuple[str, ...]
    kind: str = "bearer_auth"


@dataclass(frozen=True)
class IpRestriction:
    """Refuse clients outside ``allow`` (when given) or inside ``deny``, by ``request.cf.clientIp``."""

    allow: tuple[Network, ...]
    deny: tuple[Network, ...]
    kind: str = "ip_restriction"


@dataclass(frozen=True)
class RateLimit:
    """At most ``capacity`` requests per ``per_s`` seconds per key (``client_ip`` or ``header:<name>``)."""

    key: str
    capacity: int
    per_s: float
    max_keys: int = 10000
    kind: str = "rate_limit"


@dataclass(frozen=True)
class Cors:
    """CORS headers for allowed origins; preflight requests are answered at the edge."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    allow_credentials: bool
    max_age: int | None
    kind: str = "cors"


@dataclass(frozen=True)
class Variant:
    """One side of an A/B split: its cookie value, weight and ingress service URL."""

    name: str
    weight: int
    service: str


@dataclass(frozen=True)
class AbSplit:
    """Weighted, cookie-sticky choice of the service a request is forwarded to."""

    cookie: str
    variants: tuple[Variant, ...]
    max_age_s: int = 86400 * 30
    kind: str = "ab_split"


@dataclass(frozen=True)
class FeatureFlag:
    """A percentage rollout that sets request header ``header`` to ``on``/``off``, sticky per user.

    ``sticky_by`` is ``cookie`` (cookie ``cookie`` remembers the roll), ``client_ip`` or
    ``header:<name>`` (a stable hash of the flag name and that value decides).
    """

    name: str
    percent: float
    header: str
    sticky_by: str
    cookie: str
    max_age_s: int = 86400 * 30
    kind: str = "feature_flag"


@dataclass(frozen=True)
class Deny:
    """Refuse the request with ``status`` (403 by default)."""

    status: int = 403
    body: str = ""
    kind: str = "deny"


Action = Union[HeaderValues, RemoveHeaders, UrlRewrite, Redirect, CustomResponse, BasicAuth, BearerAuth,
               IpRestriction, RateLimit, Cors, AbSplit, FeatureFlag, Deny]


@dataclass(frozen=True)
class Rule:
    """A policy rule: when ``match`` holds (None: always), run ``actions`` in order."""

    match: Match | None
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Policy:
    """A tunnel's edge-side policy, compiled into its ``tunnel-<id>`` worker."""

    on_request: tuple[Rule, ...] = ()
    on_response: tuple[Rule, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the policy has no rules at all."""
        return not self.on_request and not self.on_response


# --- edge side: metrics and custom code -------------------------------------------------------

@dataclass(frozen=True)
class MetricLabel:
    """A label of a custom metric and where its value comes from.

    ``source``: ``method``, ``status_class``, ``path_template`` (``values`` = templates) or
    ``header`` (``header`` = lowercased name, ``values`` = allow-list). Anything unlisted → ``other``.
    """

    name: str
    source: str
    values: tuple[str, ...] = ()
    header: str | None = None


@dataclass(frozen=True)
class MetricDefinition:
    """A custom counter or histogram of a tunnel (``buckets`` for histograms only)."""

    name: str
    type: str
    help: str
    labels: tuple[MetricLabel, ...] = ()
    buckets: tuple[float, ...] = ()


@dataclass(frozen=True)
class CustomWorker:
    """The tunnel's own JavaScript: ``modules`` maps a relative name to a module value.

    A value is a string (an ES module when the name ends in ``.js``) or a one-key mapping
    ``{"js"|"cjs"|"text"|"json": ...}``, as the loader's WorkerCode takes them. ``limits`` are the
    tunnel's own CPU and memory limits for this code.
    """

    main_module: str
    modules: Mapping[str, Any]
    limits: Mapping[str, float] | None = None  # {"cpu_ms", "memory_mb"} over the edge's defaults


@dataclass(frozen=True)
class TunnelConfig:
    """One tunnel: hostnames (lowercased), connector ingress, edge policy, metrics, custom worker."""

    name: str
    hostnames: tuple[str, ...]
    ingress: tuple[IngressRule, ...] = ()
    policy: Policy = field(default_factory=Policy)
    metrics: tuple[MetricDefinition, ...] = ()
    metrics_token: str | None = None
    worker: CustomWorker | None = None
    https_only: bool = False  # plain-HTTP requests are redirected (308) to HTTPS

    @property
    def has_policy(self) -> bool:
        """True when the tunnel has at least one policy rule."""
        return not self.policy.is_empty

    @property
    def needs_worker(self) -> bool:
        """False when ``tunnel-<id>`` would be a pure pass-through (no policy, no custom worker).

        The edge may then forward directly and skip the loader; the generated worker would only
        call ``env.TUNNEL.fetch(request)``.
        """
        return self.has_policy or self.worker is not None

    @property
    def normalizes_paths(self) -> bool:
        """True when something matches this tunnel's request paths (its policy, custom code, or an
        ingress rule with a path): the edge then normalises each path once, for the match and the
        forward alike (``tunnel.http1.normalize_target``; docs/config.md, "How requests are matched")."""
        return self.needs_worker or any(rule.path is not None for rule in self.ingress)

    def ingress_services(self) -> tuple[str, ...]:
        """Every service the connector may dial for this tunnel (ingress rules and ab_split variants)."""
        seen: dict[str, None] = {}
        for rule in self.ingress:
            seen.setdefault(rule.service, None)
        for rule in self.policy.on_request:
            for action in rule.actions:
                if isinstance(action, AbSplit):
                    for variant in action.variants:
                        seen.setdefault(variant.service, None)
        return tuple(seen)


@dataclass(frozen=True)
class Config:
    """A whole validated config document. ``tunnels`` is read-only, in document order."""

    tunnels: Mapping[str, TunnelConfig] = field(default_factory=lambda: MappingProxyType({}))
    canonical_json: str = "{}"

    @property
    def document(self) -> dict[str, Any]:
        """A fresh copy of the raw document this config was validated from."""
        return json.loads(self.canonical_json)

    @property
    def hash(self) -> str:
        """The document's content hash (``sha256:<hex>`` of its canonical JSON)."""
        from tunnel.config.document import canonical_hash  # document imports nothing of the model

        return canonical_hash(self.canonical_json)
