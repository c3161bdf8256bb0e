"""Validation of a tunnel's edge-side ``policy`` (phases, rules, matches and actions).

Each action is a one-key mapping ``{<kind>: <parameters>}``; the readers below are keyed by kind.
Request-side actions are only allowed in ``on_request``; ``on_response`` takes response header
actions, ``cors`` and ``custom_response``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from tunnel.config import credentials, patterns
from tunnel.config import validate as v
from tunnel.config.errors import Problems
from tunnel.config.ingress import check_path_glob, check_service
from tunnel.config.model import (
    AbSplit,
    BasicAuth,
    BearerAuth,
    Cors,
    CustomResponse,
    Deny,
    FeatureFlag,
    HeaderValues,
    IpRestriction,
    Match,
    Policy,
    RateLimit,
    Redirect,
    RemoveHeaders,
    Rule,
    UrlRewrite,
    Variant,
)

_METHOD = re.compile(r"^[A-Z]{1,20}$")
_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_REALM = re.compile(r'^[\x20-\x7e]{1,100}$')
_VARIANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ORIGIN = re.compile(r"^(\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)$")
_BAD_REALM = set('"\\')
# Framing and hop-by-hop headers belong to the edge and the connector; Tunnel-Error to the edge.
MANAGED_HEADERS = frozenset({"connection", "content-length", "host", "keep-alive", "proxy-connection", "te",
                             "trailer", "transfer-encoding", "upgrade", "tunnel-error"})
RESPONSE_ACTIONS = ("set_response_headers", "add_response_headers", "remove_response_headers", "cors",
                    "custom_response")


def parse_policy(p: Problems, path: str, raw: Any) -> Policy:
    """Validate a ``policy`` mapping (``on_request`` and ``on_response`` rule lists)."""
    m = v.mapping(p, path, raw, ("on_request", "on_response"))
    if m is None:
        return Policy()
    phases = {}
    for phase in ("on_request", "on_response"):
        rules_raw = v.items(p, v.join(path, phase), m.get(phase, []), single=False, nonempty=False)
        rules = []
        for i, item in enumerate(rules_raw or []):
            rule = _rule(p, v.join(v.join(path, phase), i), item, phase)
            if rule is not None:
                rules.append(rule)
        phases[phase] = tuple(rules)
    return Policy(**phases)


def _rule(p: Problems, path: str, raw: Any, phase: str) -> Rule | None:
    m = v.mapping(p, path, raw, ("match", "actions"), required=("actions",))
    if m is None:
        return None
    match = _match(p, v.join(path, "match"), m["match"], phase) if m.get("match") is not None else None
    actions_raw = v.items(p, v.join(path, "actions"), m.get("actions"), single=False) if "actions" in m else None
    actions = []
    for i, item in enumerate(actions_raw or []):
        apath = v.join(v.join(path, "actions"), i)
        if not isinstance(item, dict) or len(item) != 1:
            p.add(apath, "an action is a mapping with exactly one key, its kind (like `deny: {status: 403}`)")
            continue
        (kind, params), = item.items()
        reader = _ACTIONS.get(kind)
        if reader is None:
            p.add(v.join(apath, kind), f"unknown action (expected one of: {', '.join(_ACTIONS)})")
            continue
        if phase == "on_response" and kind not in RESPONSE_ACTIONS:
            p.add(v.join(apath, kind), f"not allowed in on_response (allowed there: {', '.join(RESPONSE_ACTIONS)})")
            continue
        before = len(p)
        action = reader(p, v.join(apath, kind), params, kind)
        if action is not None and len(p) == before:
            actions.append(action)
    return Rule(match=match, actions=tuple(actions))


# --- match ----------------------------------------------------------------------------------------

def _match(p: Problems, path: str, raw: Any, phase: str) -> Match | None:
    keys = ("host", "path", "method", "header", "query", "cookie", "client_ip")
    if phase == "on_response":
        keys += ("status",)
    m = v.mapping(p, path, raw, keys)
    if m is None:
        return None
    out: dict[str, Any] = {}
    if "host" in m:
        hosts = []
        for i, h in enumerate(v.items(p, v.join(path, "host"), m["host"]) or []):
            text = v.string(p, v.join(v.join(path, "host"), i), h)
            if text is not None and not patterns.is_host_pattern(text.lower()):
                p.add(v.join(v.join(path, "host"), i), f"must be a hostname, optionally with one leading '*.', not {h!r}")
            elif text is not None:
                hosts.append(text.lower())
        out["hosts"] = tuple(hosts)
    if "path" in m:
        globs = v.items(p, v.join(path, "path"), m["path"]) or []
        checked = (check_path_glob(p, v.join(v.join(path, "path"), i), g) for i, g in enumerate(globs))
        out["paths"] = tuple(g for g in checked if g is not None)  # normalised as request paths are
    if "method" in m:
        methods = v.items(p, v.join(path, "method"), m["method"]) or []
        out["methods"] = tuple(x.upper() for i, x in enumerate(methods)
                               if v.string(p, v.join(v.join(path, "method"), i), x.upper() if isinstance(x, str) else x,
                                           pattern=_METHOD, what="an HTTP method") is not None)
    for key, field, lower, value_check in (("header", "headers", True, v.header_value),
                                           ("query", "query", False, _any_string),
                                           ("cookie", "cookies", False, _any_string)):
        if key in m:
            pairs = []
            if not isinstance(m[key], dict) or not m[key]:
                p.add(v.join(path, key), "must be a non-empty mapping of names to value globs ('*': present)")
            else:
                for name, glob in m[key].items():
                    npath = v.join(v.join(path, key), name)
                    n = (v.header_name if key != "query" else _any_name)(p, npath, name)
                    g = value_check(p, npath, glob)
                    if n is not None and g is not None:
                        pairs.append((n.lower() if lower else n, g))
            out[field] = tuple(pairs)
    if "client_ip" in m:
        out["client_ip"] = _networks(p, v.join(path, "client_ip"), m["client_ip"], nonempty=True)
    if "status" in m:
        statuses = []
        for i, s in enumerate(v.items(p, v.join(path, "status"), m["status"]) or []):
            spath = v.join(v.join(path, "status"), i)
            if isinstance(s, str) and _STATUS_CLASS.match(s.lower()):
                statuses.append(s.lower())
            elif v.http_status(p, spath, s, low=100) is not None:
                statuses.append(s)
        out["status"] = tuple(statuses)
    return Match(**out)


def _any_string(p: Problems, path: str, value: Any) -> str | None:
    return v.string(p, path, value, empty=True)


def _any_name(p: Problems, path: str, value: Any) -> str | None:
    return v.string(p, path, value)


def _networks(p: Problems, path: str, raw: Any, *, nonempty: bool) -> tuple:
    nets = []
    for i, item in enumerate(v.items(p, path, raw, nonempty=nonempty) or []):
        ipath = v.join(path, i)
        text = v.string(p, ipath, item)
        if text is None:
            continue
        try:
            nets.append(patterns.parse_network(text))
        except ValueError as exc:
            p.add(ipath, f"must be an IP address or CIDR like 10.0.0.0/8 ({exc})")
    return tuple(nets)


# --- actions ---------------------------------------------------------------------------------------

def _unmanaged(p: Problems, path: str, name: str | None) -> str | None:
    if name is not None and name.lower() in MANAGED_HEADERS:
        p.add(path, f"{name} is managed by the edge and cannot be changed by a policy")
        return None
    return name


def _headers(p: Problems, path: str, raw: Any, kind: str) -> HeaderValues | None:
    pairs = v.header_map(p, path, raw)
    if pairs is not None:
        pairs = tuple(pair for pair in pairs if _unmanaged(p, v.join(path, pair[0]), pair[0]) is not None)
    return None if pairs is None else HeaderValues(kind=kind, target=kind.split("_")[1], headers=pairs)


def _remove(p: Problems, path: str, raw: Any, kind: str) -> RemoveHeaders | None:
    names = [_unmanaged(p, v.join(path, i), v.header_name(p, v.join(path, i), n))
             for i, n in enumerate(v.items(p, path, raw) or [])]
    return RemoveHeaders(kind=kind, target=kind.split("_")[1], names=tuple(n.lower() for n in names if n))


def _url_rewrite(p: Problems, path: str, raw: Any, kind: str) -> UrlRewrite | None:
    m = v.mapping(p, path, raw, ("from", "to"), required=("from", "to"))
    if m is None:
        return None
    pattern = v.string(p, v.join(path, "from"), m.get("from"))
    to = v.string(p, v.join(path, "to"), m.get("to"))
    if pattern is not None:
        try:
            if "(?P" in pattern:
                raise re.error("use JavaScript's (?<name>…) for named groups")
            # JavaScript spells named groups (?<name>…) and \k<name>; Python checks the rest.
            re.compile(re.sub(r"\\k<(\w+)>", r"(?P=\1)", re.sub(r"\(\?<(?![=!])", "(?P<", pattern)))
        except re.error as exc:
            p.add(v.join(path, "from"), f"not a valid regular expression: {exc}")
            return None
    if to is not None and not to.startswith("/"):
        p.add(v.join(path, "to"), f"must be a path starting with '/', not {to!r}")
        return None
    return None if pattern is None or to is None else UrlRewrite(pattern=pattern, replacement=to)


def _redirect(p: Problems, path: str, raw: Any, kind: str) -> Redirect | None:
    m = v.mapping(p, path, raw, ("location", "status"), required=("location",))
    if m is None:
        return None
    loc = v.string(p, v.join(path, "location"), m.get("location"), pattern=v.HEADER_VALUE,
                   what="a URL or path (printable ASCII, no line breaks)")
    status = m.get("status", 302)
    if status not in (301, 302, 303, 307, 308):
        p.add(v.join(path, "status"), "must be one of 301, 302, 303, 307, 308")
        return None
    return None if loc is None else Redirect(location=loc, status=status)


def _custom_response(p: Problems, path: str, raw: Any, kind: str) -> CustomResponse | None:
    m = v.mapping(p, path, raw, ("status", "body", "content_type", "headers"))
    if m is None:
        return None
    status = v.http_status(p, v.join(path, "status"), m.get("status", 200))
    body = v.string(p, v.join(path, "body"), m.get("body", ""), empty=True)
    ctype = v.string(p, v.join(path, "content_type"), m.get("content_type", "text/plain; charset=utf-8"),
                     pattern=v.HEADER_VALUE, what="a media type")
    headers = v.header_map(p, v.join(path, "headers"), m["headers"]) if "headers" in m else ()
    for name, _ in headers or ():
        _unmanaged(p, v.join(v.join(path, "headers"), name), name)
    if None in (status, body, ctype, headers):
        return None
    return CustomResponse(status=status, body=body, content_type=ctype, headers=headers)


def _hashes(p: Problems, path: str, raw: Any) -> tuple[str, ...]:
    out = []
    for i, h in enumerate(v.items(p, path, raw) or []):
        if credentials.is_credential_hash(h):
            out.append(credentials.normalize_hash(h))
        else:
            p.add(v.join(path, i), "must be a credential hash `sha256:<64 hex digits>` (see `tunnel hash-password`)")
    return tuple(out)


def _realm(p: Problems, path: str, value: Any) -> str | None:
    realm = v.string(p, path, value, pattern=_REALM, what="printable ASCII")
    if realm is not None and _BAD_REALM & set(realm):
        p.add(path, "cannot contain '\"' or '\\'")
        return None
    return realm


def _basic_auth(p: Problems, path: str, raw: Any, kind: str) -> BasicAuth | None:
    m = v.mapping(p, path, raw, ("realm", "credentials"), required=("credentials",))
    if m is None:
        return None
    realm = _realm(p, v.join(path, "realm"), m.get("realm", "restricted"))
    hashes = _hashes(p, v.join(path, "credentials"), m.get("credentials"))
    return None if realm is None else BasicAuth(realm=realm, credentials=hashes)


def _bearer_auth(p: Problems, path: str, raw: Any, kind: str) -> BearerAuth | None:
    m = v.mapping(p, path, raw, ("realm", "tokens"), required=("tokens",))
    if m is None:
        return None
    realm = _realm(p, v.join(path, "realm"), m.get("realm", "api"))
    hashes = _hashes(p, v.join(path, "tokens"), m.get("tokens"))
    return None if realm is None else BearerAuth(realm=realm, tokens=hashes)


def _ip_restriction(p: Problems, path: str, raw: Any, kind: str) -> IpRestriction | None:
    m = v.mapping(p, path, raw, ("allow", "deny"))
    if m is None:
        return None
    if "allow" not in m and "deny" not in m:
        p.add(path, "needs `allow`, `deny` or both (lists of CIDRs)")
        return None
    allow = _networks(p, v.join(path, "allow"), m.get("allow", []), nonempty=False)
    deny = _networks(p, v.join(path, "deny"), m.get("deny", []), nonempty=False)
    return IpRestriction(allow=allow, deny=deny)


def _key(p: Problems, path: str, value: Any) -> str | None:
    """``client_ip`` or ``{header: Name}`` → ``client_ip`` / ``header:<lowercased name>``."""
    if value == "client_ip":
        return value
    if isinstance(value, dict):
        m = v.mapping(p, path, value, ("header",), required=("header",))
        name = v.header_name(p, v.join(path, "header"), m.get("header")) if m and "header" in m else None
        return None if name is None else "header:" + name.lower()
    p.add(path, "must be client_ip or {header: <name>}")
    return None


def _rate_limit(p: Problems, path: str, raw: Any, kind: str) -> RateLimit | None:
    m = v.mapping(p, path, raw, ("key", "capacity", "per", "max_keys"), required=("capacity", "per"))
    if m is None:
        return None
    key = _key(p, v.join(path, "key"), m.get("key", "client_ip"))
    capacity = v.integer(p, v.join(path, "capacity"), m.get("capacity"), low=1, high=10**9,
                         what="a positive integer")
    per = patterns.parse_duration(m.get("per"))
    if "per" in m and per is None:
        p.add(v.join(path, "per"), "must be a positive duration like 60s, 500ms, 5m or 1h")
    max_keys = v.integer(p, v.join(path, "max_keys"), m.get("max_keys", 10000), low=1, high=10**7,
                         what="a positive integer")
    if None in (key, capacity, per, max_keys):
        return None
    return RateLimit(key=key, capacity=capacity, per_s=per, max_keys=max_keys)


def _name_list(p: Problems, path: str, raw: Any, check: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(x for i, x in enumerate(v.items(p, path, raw, nonempty=False) or [])
                 if check(p, v.join(path, i), x) is not None)


def _cors(p: Problems, path: str, raw: Any, kind: str) -> Cors | None:
    m = v.mapping(p, path, raw, ("allow_origins", "allow_methods", "allow_headers", "expose_headers",
                                 "allow_credentials", "max_age"), required=("allow_origins",))
    if m is None:
        return None
    origins = _name_list(p, v.join(path, "allow_origins"), m.get("allow_origins"),
                         lambda p_, path_, x: v.string(p_, path_, x, pattern=_ORIGIN,
                                                       what="an origin like https://app.example.test, or *"))
    methods = _name_list(p, v.join(path, "allow_methods"), m.get("allow_methods", ["GET", "HEAD", "POST"]),
                         lambda p_, path_, x: v.string(p_, path_, x, pattern=_METHOD, what="an HTTP method"))
    allow_headers = _name_list(p, v.join(path, "allow_headers"), m.get("allow_headers", []), v.header_name)
    expose = _name_list(p, v.join(path, "expose_headers"), m.get("expose_headers", []), v.header_name)
    creds = v.boolean(p, v.join(path, "allow_credentials"), m.get("allow_credentials", False))
    max_age = None
    if "max_age" in m:
        max_age = v.integer(p, v.join(path, "max_age"), m["max_age"], low=0, high=86400 * 7,
                            what="a number of seconds from 0 to 604800")
    if creds and "*" in origins:
        p.add(v.join(path, "allow_credentials"), "cannot be true when allow_origins contains '*'")
    return Cors(allow_origins=origins, allow_methods=methods, allow_headers=allow_headers,
                expose_headers=expose, allow_credentials=bool(creds), max_age=max_age)


def _ab_split(p: Problems, path: str, raw: Any, kind: str) -> AbSplit | None:
    m = v.mapping(p, path, raw, ("cookie", "variants", "max_age"), required=("cookie", "variants"))
    if m is None:
        return None
    cookie = v.string(p, v.join(path, "cookie"), m.get("cookie"), pattern=v.COOKIE_NAME, what="a cookie name")
    variants = []
    vpath = v.join(path, "variants")
    raw_variants = v.items(p, vpath, m.get("variants"), single=False) or []
    for i, item in enumerate(raw_variants):
        ipath = v.join(vpath, i)
        vm = v.mapping(p, ipath, item, ("name", "weight", "service"), required=("name", "weight", "service"))
        if vm is None:
            continue
        name = v.string(p, v.join(ipath, "name"), vm.get("name"), pattern=_VARIANT,
                        what="a variant name (letters, digits, '_', '.', '-')")
        weight = v.integer(p, v.join(ipath, "weight"), vm.get("weight"), low=0, high=10**6,
                           what="a non-negative integer")
        service = check_service(p, v.join(ipath, "service"), vm.get("service"))
        if None not in (name, weight, service):
            variants.append(Variant(name=name, weight=weight, service=service))
    if raw_variants and len(raw_variants) < 2:
        p.add(vpath, "needs at least two variants")
    if len({x.name for x in variants}) != len(variants):
        p.add(vpath, "variant names must be unique")
    if variants and len(variants) == len(raw_variants) and sum(x.weight for x in variants) <= 0:
        p.add(vpath, "the weights must add up to more than 0")
    max_age = v.integer(p, v.join(path, "max_age"), m.get("max_age", 86400 * 30), low=1, high=86400 * 400,
                        what="a number of seconds")
    if cookie is None or max_age is None:
        return None
    return AbSplit(cookie=cookie, variants=tuple(variants), max_age_s=max_age)


def _feature_flag(p: Problems, path: str, raw: Any, kind: str) -> FeatureFlag | None:
    m = v.mapping(p, path, raw, ("name", "percent", "sticky_by", "header", "cookie", "max_age"),
                  required=("name", "percent", "header"))
    if m is None:
        return None
    name = v.string(p, v.join(path, "name"), m.get("name"), pattern=v.IDENT,
                    what="a flag name (lowercase letters, digits, '_', '-')")
    percent = v.number(p, v.join(path, "percent"), m.get("percent"), low=0, high=100,
                       what="a percentage from 0 to 100")
    header = v.header_name(p, v.join(path, "header"), m.get("header"))
    sticky = m.get("sticky_by", "cookie")
    sticky_key = "cookie" if sticky == "cookie" else _key(p, v.join(path, "sticky_by"), sticky)
    cookie = v.string(p, v.join(path, "cookie"), m.get("cookie", f"ff-{name or 'flag'}"), pattern=v.COOKIE_NAME,
                      what="a cookie name")
    max_age = v.integer(p, v.join(path, "max_age"), m.get("max_age", 86400 * 30), low=1, high=86400 * 400,
                        what="a number of seconds")
    if None in (name, percent, header, sticky_key, cookie, max_age):
        return None
    return FeatureFlag(name=name, percent=percent, header=header, sticky_by=sticky_key, cookie=cookie,
                       max_age_s=max_age)


def _deny(p: Problems, path: str, raw: Any, kind: str) -> Deny | None:
    m = v.mapping(p, path, {} if raw is None else raw, ("status", "body"))
    if m is None:
        return None
    status = v.http_status(p, v.join(path, "status"), m.get("status", 403), low=400)
    body = v.string(p, v.join(path, "body"), m.get("body", ""), empty=True)
    return None if status is None or body is None else Deny(status=status, body=body)


_ACTIONS: dict[str, Callable[[Problems, str, Any, str], Any]] = {
    "set_request_headers": _headers,
    "add_request_headers": _headers,
    "remove_request_headers": _remove,
    "set_response_headers": _headers,
    "add_response_headers": _headers,
    "remove_response_headers": _remove,
    "url_rewrite": _url_rewrite,
    "redirect": _redirect,
    "custom_response": _custom_response,
    "basic_auth": _basic_auth,
    "bearer_auth": _bearer_auth,
    "ip_restriction": _ip_restriction,
    "rate_limit": _rate_limit,
    "cors": _cors,
    "ab_split": _ab_split,
    "feature_flag": _feature_flag,
    "deny": _deny,
}
ACTION_KINDS = tuple(_ACTIONS)
