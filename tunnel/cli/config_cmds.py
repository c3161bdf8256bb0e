"""`tunnel config …`, `tunnel workers …` and `tunnel hash-password` (config model and generators).

Exit codes: 0 success, 1 the config is invalid (or the URL matches nothing), 2 a usage or file
problem. `config push/pull/status/history/diff/rollback` and `workers list` need a running edge
and are added beside these.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunnel.cli import versions_cmds
from tunnel.config import Config, ConfigError, hash_password, hash_secret, load_yaml, match_ingress, parse_config
from tunnel.config.document import yaml_line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the config, workers and hash-password commands."""
    config = subparsers.add_parser("config", help="check (and, with an edge, manage) the versioned config",
                                   description="Work with the edge config (format: docs/config.md).")
    config_sub = config.add_subparsers(dest="config_command", metavar="COMMAND")
    config_sub.required = True
    check = config_sub.add_parser(
        "check", help="validate a config file", description=(
            "Validate FILE exactly as the edge does and generate every worker; print OK or every error "
            "with its path. Exit 0 when valid, 1 when not, 2 when FILE cannot be read."))
    check.add_argument("file", metavar="FILE", help="YAML or JSON config file ('-' for standard input)")
    check.add_argument("--rule", metavar="URL", action="append", default=[],
                       help="also print which ingress rule serves URL (repeatable)")
    check.add_argument("--json", action="store_true",
                       help='print {"ok", "errors", "hash", "tunnels", "rules"} instead of text')
    check.set_defaults(func=cmd_config_check)

    workers = subparsers.add_parser("workers", help="show generated workers",
                                    description="Show the workers generated from a config.")
    workers_sub = workers.add_subparsers(dest="workers_command", metavar="COMMAND")
    workers_sub.required = True
    render = workers_sub.add_parser(
        "render", help="print a tunnel's generated modules", description=(
            "Print exactly the WorkerCode the edge loads for tunnel ID: tunnel-ID (policy and custom modules) "
            "and metrics-ID, every module included."))
    render.add_argument("file", metavar="FILE", help="YAML or JSON config file ('-' for standard input)")
    render.add_argument("--tunnel", required=True, metavar="ID", help="the tunnel to render")
    render.add_argument("--config-version", type=int, metavar="V",
                        help="also render config-V, the routing worker of this file as version V")
    render.add_argument("--json", action="store_true",
                        help='print {"tunnel-ID": {"compatibility_date", "main_module", "modules", "hash"}, …}')
    render.set_defaults(func=cmd_workers_render)

    versions_cmds.register(config_sub, workers_sub)

    hashing = subparsers.add_parser(
        "hash-password", help="print the sha256: form of a credential for the config",
        description=("Read a secret (prompted twice on a terminal, else the first line of standard input) and "
                     "print its config form, sha256:<hex>. With --user, hash 'USER:secret' for basic_auth; "
                     "without, hash the secret itself (bearer_auth tokens, metrics_token)."))
    hashing.add_argument("--user", metavar="USER", help="basic-auth user name")
    hashing.set_defaults(func=cmd_hash_password)


def _read_config(path: str) -> tuple[str | None, Config | None, list[str]]:
    """``(text, config, errors)``; text is None when the file cannot be read."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, None, [f"{path}: cannot read: {exc}"]
    try:
        return text, parse_config(load_yaml(text)), []
    except ConfigError as exc:
        return text, None, exc.errors


def _generate_all(config: Config) -> None:
    """Run every generator, as the edge will (a generator failure is a bug: let it raise)."""
    from generators import (
        generate_config_worker,
        generate_custom_worker,
        generate_metrics_worker,
        generate_tunnel_worker,
    )

    generate_config_worker(config, 1)
    for tunnel in config.tunnels.values():
        generate_tunnel_worker(tunnel)
        generate_custom_worker(tunnel)
        generate_metrics_worker(tunnel)


def describe_rule(config: Config, text: str, url: str) -> dict[str, Any]:
    """Which tunnel and ingress rule serve ``url``: index, path in the file, line, service."""
    from generators import build_routing_table

    parts = urlsplit(url if "://" in url else "http://" + url)
    host, path = parts.netloc.rpartition("@")[2], parts.path or "/"
    found = build_routing_table(config).lookup(host)
    if found is None:
        return {"url": url, "tunnel": None, "error": f"no tunnel serves the hostname {parts.hostname or host!r}"}
    tunnel = config.tunnels[found[0]]
    rule = match_ingress(tunnel.ingress, host, path)
    if rule is None:
        return {"url": url, "tunnel": tunnel.name, "rule": None, "service": None,
                "note": f"tunnel {tunnel.name} has no ingress rules: the connector's --url serves it"}
    return {"url": url, "tunnel": tunnel.name, "rule": rule.index, "path": f"tunnels.{tunnel.name}.ingress[{rule.index}]",
            "line": yaml_line(text, ["tunnels", tunnel.name, "ingress", rule.index]), "service": rule.service}


def cmd_config_check(args: argparse.Namespace) -> int:
    """`tunnel config check FILE [--rule URL]…`."""
    text, config, errors = _read_config(args.file)
    if config is not None:
        _generate_all(config)
    rules = [describe_rule(config, text or "", url) for url in args.rule] if config is not None else []
    if args.json:
        print(json.dumps({"ok": config is not None, "errors": errors, "hash": config.hash if config else None,
                          "tunnels": list(config.tunnels) if config else [], "rules": rules}, indent=2))
    elif config is None:
        print(f"{args.file}: {len(errors)} error(s)")
        for error in errors:
            print(f"  {error}")
    else:
        names = ", ".join(config.tunnels) or "none"
        print(f"OK: {args.file}: {len(config.tunnels)} tunnel(s) ({names}); content {config.hash}")
        for r in rules:
            if "error" in r:
                print(f"{r['url']}: {r['error']}")
            elif r["rule"] is None:
                print(f"{r['url']}: {r['note']}")
            else:
                where = f"{r['path']}, line {r['line']}" if r["line"] else r["path"]
                print(f"{r['url']}: tunnel {r['tunnel']}, rule {r['rule']} ({where}): {r['service']}")
    if text is None:
        if not args.json:
            print(errors[0], file=sys.stderr)
        return 2
    if config is None or any("error" in r for r in rules):
        return 1
    return 0


def cmd_workers_render(args: argparse.Namespace) -> int:
    """`tunnel workers render FILE --tunnel ID [--config-version V] [--json]`."""
    from generators import (
        generate_config_worker,
        generate_custom_worker,
        generate_metrics_worker,
        generate_tunnel_worker,
    )

    text, config, errors = _read_config(args.file)
    if config is None:
        print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 2 if text is None else 1
    tunnel = config.tunnels.get(args.tunnel)
    if tunnel is None:
        print(f"no tunnel {args.tunnel!r} in {args.file} (tunnels: {', '.join(config.tunnels) or 'none'})",
              file=sys.stderr)
        return 1
    custom = generate_custom_worker(tunnel)
    workers = [generate_tunnel_worker(tunnel), *([custom] if custom else []), generate_metrics_worker(tunnel)]
    if args.config_version is not None:
        if args.config_version < 1:
            print("--config-version must be a positive integer", file=sys.stderr)
            return 2
        workers.append(generate_config_worker(config, args.config_version))
    if args.json:
        print(json.dumps({w.key: {**w.as_dict(), "hash": w.hash} for w in workers}, indent=2))
        return 0
    for worker in workers:
        print(f"=== {worker.key}: main module {worker.main_module}, compatibility date {worker.compatibility_date}, "
              f"content {worker.hash} ===")
        for name, module in worker.modules.items():
            if isinstance(module, str):
                kind, code = "ES module", module
            else:
                (kind, code), = module.items()
                code = code if isinstance(code, str) else json.dumps(code, indent=2, ensure_ascii=False)
            print(f"--- {name} ({kind}) ---")
            print(code.rstrip("\n").encode("utf-8", "backslashreplace").decode("utf-8"))
        print()
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """`tunnel hash-password [--user USER]`: print ``sha256:<hex>``."""
    if sys.stdin.isatty():
        secret = getpass.getpass("Password: " if args.user else "Secret: ")
        if getpass.getpass("Again: ") != secret:
            print("the two entries differ; nothing printed", file=sys.stderr)
            return 1
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        print("an empty secret cannot be hashed", file=sys.stderr)
        return 2
    try:
        print(hash_password(args.user, secret) if args.user is not None else hash_secret(secret))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
