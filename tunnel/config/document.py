"""The raw document: YAML in, canonical JSON, content hash, credential redaction, YAML positions."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

import yaml

from tunnel.config.errors import ConfigError

REDACTED = "<redacted>"


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: a config never needs them, and a few nested aliases expand
    into a document too large to hash or store (the "billion laughs")."""

    def compose_node(self, parent, index):  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              event.start_mark)
        return super().compose_node(parent, index)


#: libyaml's loader when PyYAML was built with it: 3× faster on a 10,000-tunnel file. Its composer
#: is C and recursive, so aliases and depth are checked on the event stream first (iterative).
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_events(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_FAST_LOADER):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecursionError
        elif isinstance(event, _CLOSE):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              event.start_mark)


def load_yaml(text: str) -> dict[str, Any]:
    """Parse YAML (or JSON) text into a raw document; a syntax error becomes a ConfigError."""
    try:
        if _FAST_LOADER is not None:
            _check_events(text)
            doc = yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 - libyaml's SafeLoader
        else:
            doc = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError([f"<yaml>: nested more than {MAX_DEPTH} levels deep"]) from None
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own bound (1,000 flow levels)
            raise ConfigError([f"<yaml>: nested more than {MAX_DEPTH} levels deep"]) from None
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"<yaml>: {where}{problem}"]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(["<root>: must be a mapping"])
    check_depth(doc)
    return doc


#: No config needs more nesting than this; deeper documents are refused before anything walks them.
MAX_DEPTH = 64


def check_depth(doc: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ConfigError when ``doc`` (parsed YAML or JSON) nests deeper than ``limit`` levels.

    Iterative, so a hostile document cannot exhaust the stack of the code that checks it.
    """
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    raise ConfigError([f"<root>: nested more than {limit} levels deep"])
                stack.append((child, depth + 1))


def canonical_json(doc: Any) -> str:
    """The canonical JSON text of a document: sorted keys, no spaces, ASCII only.

    Raises ValueError for values JSON cannot hold (YAML dates, for instance).
    """
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the document holds a value JSON cannot represent ({exc}); quote it") from None


def content_hash(doc: Any) -> str:
    """The content hash of a document: ``sha256:<hex>`` of its canonical JSON (key order ignored)."""
    return canonical_hash(canonical_json(doc))


def canonical_hash(canonical: str) -> str:
    """``sha256:<hex>`` of canonical JSON text (what ``content_hash`` and ``Config.hash`` return)."""
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def redact_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``doc`` with every credential hash replaced by ``"<redacted>"``.

    Covers ``basic_auth.credentials``, ``bearer_auth.tokens`` and each tunnel's ``metrics_token``;
    the rest of the document is unchanged. Works on invalid documents too (it only looks).
    """
    out = copy.deepcopy(dict(doc))
    tunnels = out.get("tunnels")
    if not isinstance(tunnels, dict):
        return out
    for tunnel in tunnels.values():
        if not isinstance(tunnel, dict):
            continue
        if "metrics_token" in tunnel and tunnel["metrics_token"] is not None:
            tunnel["metrics_token"] = REDACTED
        policy = tunnel.get("policy")
        if not isinstance(policy, dict):
            continue
        for phase in ("on_request", "on_response"):
            rules = policy.get(phase)
            for rule in rules if isinstance(rules, list) else ():
                actions = rule.get("actions") if isinstance(rule, dict) else None
                for action in actions if isinstance(actions, list) else ():
                    if not isinstance(action, dict):
                        continue
                    for kind, field in (("basic_auth", "credentials"), ("bearer_auth", "tokens")):
                        params = action.get(kind)
                        if isinstance(params, dict) and field in params:
                            secrets = params[field]
                            params[field] = [REDACTED] * len(secrets) if isinstance(secrets, list) else REDACTED
    return out


def yaml_line(text: str, path: list[str | int]) -> int | None:
    """The 1-based line where the node at ``path`` (keys and list indexes) starts in YAML ``text``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for step in path:
        if isinstance(node, yaml.MappingNode):
            node = next((val for key, val in node.value if key.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            node = None
        if node is None:
            return None
    return node.start_mark.line + 1
