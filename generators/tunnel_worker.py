"""``tunnel-<id>``: a tunnel's policy compiled into a readable JavaScript worker.

The main module runs the ``on_request`` rules, then the tunnel's custom modules if it has any
(included under ``custom/``), forwards with ``env.TUNNEL.fetch(request[, {service}])``, and runs
the ``on_response`` rules on every response. The contract is in docs/workers.md.
"""

from __future__ import annotations

from typing import Any

from generators.code import GeneratedWorker, finish_module, freeze, js, module_hash
from generators.keys import custom_key, tunnel_key
from generators.policy_js import helpers_for
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
    RateLimit,
    Redirect,
    RemoveHeaders,
    Rule,
    TunnelConfig,
    UrlRewrite,
)

MAIN_MODULE = "tunnel.js"
CUSTOM_PREFIX = "custom/"
_ANSWERS = (CustomResponse, Redirect, Deny)  # always end the phase


class _Emitter:
    """Collects generated lines, the helpers they call and the per-isolate constants."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.used: set[str] = set()
        self.state: list[str] = []

    def call(self, helper: str, *args: str) -> str:
        self.used.add(helper)
        return f"{helper}({', '.join(args)})"

    def const(self, name: str, expression: str) -> str:
        self.state.append(f"const {name} = {expression};")
        return name

    def line(self, indent: int, text: str = "") -> None:
        self.lines.append(("  " * indent + text) if text else "")


def generate_tunnel_worker(tunnel: TunnelConfig) -> GeneratedWorker:
    """Compile ``tunnel``'s policy into the ``tunnel-<id>`` worker.

    A tunnel with custom code and no policy gets its custom modules here (under ``custom/``),
    behind a pass-through main module. With a policy too, ``tunnel-<id>`` holds only the
    policy (generated, so ``trusted``: the loader keeps it, and its rate-limit windows, away from
    any user's code) and forwards through ``env.CUSTOM``, the custom code loaded on its own as
    ``custom-<id>`` (``generate_custom_worker``).
    Pure and deterministic: the same TunnelConfig gives byte-identical modules and hash.
    """
    e = _Emitter()
    policy = tunnel.policy
    custom = tunnel.worker
    inline = custom is not None and policy.is_empty  # the custom modules travel in this worker
    modules: dict[str, Any] = {}
    if inline:
        for name, value in custom.modules.items():
            modules[CUSTOM_PREFIX + name] = value

    summary = (f"policy of tunnel {tunnel.name}: {len(policy.on_request)} on_request rule(s), "
               f"{len(policy.on_response)} on_response rule(s)"
               + (f", custom worker ({len(custom.modules)} module(s) under {CUSTOM_PREFIX})" if inline else "")
               + (f", custom worker {custom_key(tunnel.name)} (env.CUSTOM)" if custom is not None and not inline else ""))
    if inline:
        e.line(0, f"import custom from {js('./' + CUSTOM_PREFIX + custom.main_module)};")
        e.line(0)

    if policy.is_empty:
        _emit_passthrough(e, inline)
    else:
        _emit_main(e)
        _emit_on_request(e, tunnel)
        _emit_on_response(e, tunnel)
        _emit_forward(e, custom is not None, any(isinstance(a, AbSplit) for r in policy.on_request for a in r.actions))
    body = "\n".join(e.lines)
    helpers = helpers_for(e.used)
    if helpers:
        body += "\n// ---- helpers (fixed code, the same for every tunnel) ----\n\n" + "\n\n".join(helpers) + "\n"
    if e.state:
        body += "\n// ---- per-isolate state and precompiled values ----\n\n" + "\n".join(e.state) + "\n"
    key = tunnel_key(tunnel.name)
    text, digest = finish_module(key, summary, body, modules)
    return GeneratedWorker(key=key, main_module=MAIN_MODULE, modules=freeze({MAIN_MODULE: text, **modules}),
                           hash=digest, trusted=not inline)


def generate_custom_worker(tunnel: TunnelConfig) -> GeneratedWorker | None:
    """The ``custom-<id>`` worker of a tunnel that has both a policy and custom code: the custom
    modules as given (its main module is the tunnel's ``worker.main_module``), never trusted. None
    when ``tunnel-<id>`` carries the custom code itself (no policy) or there is none."""
    custom = tunnel.worker
    if custom is None or tunnel.policy.is_empty:
        return None
    modules = dict(custom.modules)
    return GeneratedWorker(key=custom_key(tunnel.name), main_module=custom.main_module, modules=freeze(modules),
                           hash=module_hash({"main": custom.main_module, **modules}), trusted=False)


def _emit_passthrough(e: _Emitter, custom: bool) -> None:
    e.line(0, "// No policy: every request goes straight through.")
    e.line(0, "export default {")
    e.line(1, "fetch(request, env, ctx) {")
    e.line(2, "return custom.fetch(request, env, ctx);" if custom else "return env.TUNNEL.fetch(request);")
    e.line(1, "},")
    e.line(0, "};")
    e.line(0)


def _emit_main(e: _Emitter) -> None:
    e.used.update({"begin", "finish"})
    e.line(0, "export default {")
    e.line(1, "fetch(request, env, ctx) {")
    e.line(2, "const st = begin(request);")
    e.line(2, "const answer = onRequest(st);")
    e.line(2, "if (answer !== null) return finish(st, onResponse(st, answer));  // no await: answered in this turn")
    e.line(2, "return Promise.resolve(forward(st, env, ctx)).then((response) => finish(st, onResponse(st, response)));")
    e.line(1, "},")
    e.line(0, "};")
    e.line(0)


def _emit_forward(e: _Emitter, custom: bool, split: bool) -> None:
    e.used.add("outgoing")
    target = "env.CUSTOM" if custom else "env.TUNNEL"
    e.line(0, "// Forward " + ("to the custom worker (custom-<id>), which reaches the tunnel itself." if custom
                              else "through the tunnel."))
    e.line(0, "function forward(st, env, ctx) {")
    e.line(1, "const request = outgoing(st);")
    if split:
        e.line(1, f"return st.service === undefined ? {target}.fetch(request) : {target}.fetch(request, {{ service: st.service }});")
    else:
        e.line(1, f"return {target}.fetch(request);")
    e.line(0, "}")
    e.line(0)


def _condition(e: _Emitter, match: Match | None, tag: str, *, response: str | None = None) -> str:
    """The JavaScript test for ``match`` (``"true"`` when there is none). Its values become
    per-isolate constants, compiled once (globs into matchers, CIDRs into masks)."""
    if match is None:
        return "true"
    tests = []
    if match.hosts is not None:
        tests.append(e.call("matchHost", "st", e.const(f"HOSTS_{tag}", js(list(match.hosts)))))
    if match.paths is not None:
        tests.append(e.call("matchPath", "st", e.const(f"PATHS_{tag}", _globs(match.paths))))
    if match.methods is not None:
        tests.append(e.call("matchMethod", "st", e.const(f"METHODS_{tag}", js(list(match.methods)))))
    if match.headers is not None:
        pairs = [(name.lower(), glob) for name, glob in match.headers]
        tests.append(e.call("matchHeaders", "st", e.const(f"HEADERS_{tag}", _glob_pairs(pairs))))
    if match.query is not None:
        tests.append(e.call("matchQuery", "st", e.const(f"QUERY_{tag}", _glob_pairs(match.query))))
    if match.cookies is not None:
        tests.append(e.call("matchCookies", "st", e.const(f"COOKIES_{tag}", _glob_pairs(match.cookies))))
    if match.client_ip is not None:
        e.used.add("cidrs")
        nets = e.const(f"CLIENT_IP_{tag}", f"cidrs({js([str(n) for n in match.client_ip])})")
        tests.append(e.call("matchClientIp", "st", nets))
    if match.status is not None and response is not None:
        tests.append(e.call("matchStatus", response, e.const(f"STATUS_{tag}", js(list(match.status)))))
    e.used.update({"glob"} if match.paths is not None or match.headers or match.query or match.cookies else set())
    return " && ".join(tests) or "true"


def _globs(globs) -> str:
    return "[" + ", ".join(f"glob({js(g)})" for g in globs) + "]"


def _glob_pairs(pairs) -> str:
    return "[" + ", ".join(f"[{js(name)}, glob({js(g)})]" for name, g in pairs) + "]"


def _kinds(rule: Rule) -> str:
    return ", ".join(a.kind for a in rule.actions) or "no actions"


def _emit_on_request(e: _Emitter, tunnel: TunnelConfig) -> None:
    policy = tunnel.policy
    e.line(0, "// ---- policy.on_request: rules in order; an answer ends the phase ----")
    e.line(0, "function onRequest(st) {")
    e.line(1, "let answer = null;")
    # CORS in on_response: answer preflight requests here, so they never reach the origin.
    for i, rule in enumerate(policy.on_response):
        if any(isinstance(a, Cors) for a in rule.actions) and (rule.match is None or rule.match.status is None):
            cond = _condition(e, rule.match, f"RES_{i}")
            test = e.call("isPreflight", "st") + ("" if cond == "true" else f" && {cond}")
            e.line(1, f"// CORS preflight for on_response[{i}]")
            e.line(1, f"if ({test}) return {e.call('preflight')};")
    for i, rule in enumerate(policy.on_request):
        e.line(0)
        e.line(1, f"// on_request[{i}]: {_kinds(rule)}")
        cond = _condition(e, rule.match, f"REQ_{i}")
        indent = 1
        if cond != "true":
            e.line(1, f"if ({cond}) {{")
            indent = 2
        for j, action in enumerate(rule.actions):
            if _emit_request_action(e, indent, action, f"REQ_{i}_{j}"):
                break
        if cond != "true":
            e.line(1, "}")
    e.line(1, "return answer;")
    e.line(0, "}")
    e.line(0)


def _emit_request_action(e: _Emitter, ind: int, a: Any, tag: str) -> bool:
    """Emit one on_request action; True when it always answers (the rest is unreachable)."""
    if isinstance(a, HeaderValues):
        helper = {"set_request_headers": "setRequestHeaders", "add_request_headers": "addRequestHeaders",
                  "set_response_headers": "setResponseHeaders", "add_response_headers": "addResponseHeaders"}[a.kind]
        values = e.const(f"SET_{tag}", js([list(p) for p in a.headers]))
        e.line(ind, e.call(helper, "st", values) + ";")
    elif isinstance(a, RemoveHeaders):
        helper = "removeRequestHeaders" if a.target == "request" else "removeResponseHeaders"
        names = e.const(f"NAMES_{tag}", js(list(a.names)))
        e.line(ind, e.call(helper, "st", names) + ";")
    elif isinstance(a, UrlRewrite):
        pattern = e.const(f"REWRITE_{tag}", f"new RegExp({js(a.pattern)})")
        e.line(ind, e.call("urlRewrite", "st", pattern, js(a.replacement)) + ";")
    elif isinstance(a, Redirect):
        e.line(ind, f"return {e.call('redirect', js(a.location), js(a.status))};")
        return True
    elif isinstance(a, CustomResponse):
        e.line(ind, f"return {_custom_response(e, a)};")
        return True
    elif isinstance(a, Deny):
        body = a.body or (f"{a.status} Forbidden\n" if a.status == 403 else f"{a.status} Denied\n")
        e.line(ind, f"return {e.call('refuse', js(a.status), js('denied'), js(body), '[]')};")
        return True
    elif isinstance(a, BasicAuth):
        _maybe_answer(e, ind, e.call("basicAuth", "st", js(a.realm), js(list(a.credentials))))
    elif isinstance(a, BearerAuth):
        _maybe_answer(e, ind, e.call("bearerAuth", "st", js(a.realm), js(list(a.tokens))))
    elif isinstance(a, IpRestriction):
        e.used.add("cidrs")
        allow = e.const(f"ALLOW_{tag}", f"cidrs({js([str(n) for n in a.allow])})")
        deny = e.const(f"DENY_{tag}", f"cidrs({js([str(n) for n in a.deny])})")
        _maybe_answer(e, ind, e.call("ipRestriction", "st", allow, deny))
    elif isinstance(a, RateLimit):
        e.used.add("rateLimiter")
        limiter = e.const(f"RATE_LIMIT_{tag}",
                          f"rateLimiter({js(a.capacity)}, {js(round(a.per_s * 1000))}, {js(a.max_keys)})")
        _maybe_answer(e, ind, e.call("rateLimit", "st", limiter, js(a.key)))
    elif isinstance(a, Cors):
        e.line(ind, e.call("cors", "st", js(_cors_data(a))) + ";")
        e.line(ind, f"if ({e.call('isPreflight', 'st')}) return {e.call('preflight')};")
    elif isinstance(a, AbSplit):
        variants = [{"name": v.name, "weight": v.weight, "service": v.service} for v in a.variants]
        e.line(ind, e.call("abSplit", "st", js(a.cookie), js(variants), js(a.max_age_s)) + ";")
    elif isinstance(a, FeatureFlag):
        data = {"name": a.name, "percent": a.percent, "header": a.header, "sticky_by": a.sticky_by,
                "cookie": a.cookie, "max_age": a.max_age_s}
        flag = e.const(f"FLAG_{tag}", f"Object.assign({js(data)}, {{ buckets: new Map() }})")
        e.line(ind, e.call("featureFlag", "st", flag) + ";")
    else:  # pragma: no cover - the config model admits no other action
        raise TypeError(f"unknown action {a!r}")
    return False


def _maybe_answer(e: _Emitter, ind: int, call: str) -> None:
    e.line(ind, f"if ((answer = {call}) !== null) return answer;")


def _custom_response(e: _Emitter, a: CustomResponse) -> str:
    return e.call("reply", js(a.status), js(a.content_type), js(a.body), js([list(p) for p in a.headers]))


def _cors_data(a: Cors) -> dict[str, Any]:
    return {"allow_origins": list(a.allow_origins), "allow_methods": list(a.allow_methods),
            "allow_headers": list(a.allow_headers), "expose_headers": list(a.expose_headers),
            "allow_credentials": a.allow_credentials, "max_age": a.max_age}


def _emit_on_response(e: _Emitter, tunnel: TunnelConfig) -> None:
    e.line(0, "// ---- policy.on_response: runs on every response, the policy's own included ----")
    e.line(0, "function onResponse(st, response) {")
    for i, rule in enumerate(tunnel.policy.on_response):
        e.line(1, f"// on_response[{i}]: {_kinds(rule)}")
        cond = _condition(e, rule.match, f"RES_{i}", response="response")
        indent = 1
        if cond != "true":
            e.line(1, f"if ({cond}) {{")
            indent = 2
        for j, a in enumerate(rule.actions):
            if isinstance(a, Cors):
                e.line(indent, e.call("cors", "st", js(_cors_data(a))) + ";")
            elif isinstance(a, CustomResponse):
                e.line(indent, f"response = {_custom_response(e, a)};")
            else:
                _emit_request_action(e, indent, a, f"RES_{i}_{j}")
        if cond != "true":
            e.line(1, "}")
    e.line(1, "return response;")
    e.line(0, "}")
    e.line(0)
