"""`tunnel config push|pull|status|history|diff|rollback` and `tunnel workers list` (admin API).

Exit codes: 0 done (also for a push identical to the active version), 1 refused (invalid config,
stale base) or the edge could not be reached.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys

import yaml

from tunnel.cli.admin_client import AdminError, add_admin_arguments, call


def register(config_sub: argparse._SubParsersAction, workers_sub: argparse._SubParsersAction) -> None:
    """Add the commands that manage an edge's config versions."""
    p = config_sub.add_parser("push", help="send a config file to the edge as the next version",
                              description="Validate FILE at the edge, load its workers, store it as the next "
                                          "version and activate it. An invalid config changes nothing.")
    p.add_argument("file", metavar="FILE", help="YAML or JSON config ('-' for standard input)")
    p.add_argument("--base", type=int, metavar="V",
                   help="the version this config was based on (default: the one active when the command starts); "
                        "the edge refuses the push if another version became active since")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_push)

    p = config_sub.add_parser("pull", help="print the active config (or version V), credential hashes redacted")
    p.add_argument("version", type=int, nargs="?", metavar="V")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_pull)

    p = config_sub.add_parser("status", help="the active version and what each connector acknowledged")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_status)

    p = config_sub.add_parser("history", help="every version with its time, author and hash")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_history)

    p = config_sub.add_parser("diff", help="unified diff between two versions (credential hashes redacted)")
    p.add_argument("a", type=int, metavar="A")
    p.add_argument("b", type=int, metavar="B")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_diff)

    p = config_sub.add_parser("rollback", help="activate an earlier version again, as a new version")
    p.add_argument("version", type=int, nargs="?", metavar="V", help="default: the version before the active one")
    p.add_argument("--base", type=int, metavar="V", help="refuse unless V is still the active version")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_rollback)

    p = workers_sub.add_parser("list", help="workers cached by the edge's loader")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_workers_list)


def _fail(exc: AdminError) -> int:
    body = exc.body if isinstance(exc.body, dict) else {}
    print(f"error: {body.get('error') or exc}", file=sys.stderr)
    for line in body.get("errors", []):
        print(f"  {line}", file=sys.stderr)
    return 1


def cmd_push(args) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        base = args.base if args.base is not None else call(args, "GET", "/api/config")["version"]
        result = call(args, "POST", "/api/config", {"yaml": text, "base": base})
    except AdminError as exc:
        if exc.status == 409:
            print(f"error: {exc.body.get('error') if isinstance(exc.body, dict) else exc}", file=sys.stderr)
            return 1
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
    else:
        print(result["message"] if not result["changed"] else f"pushed: {result['message']} ({result['hash']})")
    return 0


def cmd_pull(args) -> int:
    try:
        result = call(args, "GET", "/api/config" + (f"?version={args.version}" if args.version else ""))
    except AdminError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"# version {result['version']} ({result['hash']}), by {result['author']} at {result['created_at']}")
        print(_yaml(result["config"]), end="")
    return 0


def cmd_status(args) -> int:
    try:
        result = call(args, "GET", "/api/config/status")
    except AdminError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"active version: {result['active_version']}")
    print(f"{'CONNECTOR':<16} {'TUNNEL':<16} {'ACKED':>6}  LAST ERROR")
    for c in result["connectors"]:
        print(f"{c['id']:<16} {c.get('tunnel') or '-':<16} {c['acked_version'] or '-':>6}  {c['last_error'] or ''}")
    return 0


def cmd_history(args) -> int:
    try:
        result = call(args, "GET", "/api/config/history")
    except AdminError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'VERSION':>7}  {'CREATED':<20}  {'AUTHOR':<28}  HASH")
    for v in result:
        print(f"{v['version']:>7}  {v['created_at']:<20}  {v['author'][:28]:<28}  {v['hash']}")
    return 0


def cmd_diff(args) -> int:
    try:
        a = call(args, "GET", f"/api/config?version={args.a}")
        b = call(args, "GET", f"/api/config?version={args.b}")
    except AdminError as exc:
        return _fail(exc)
    lines = difflib.unified_diff(_yaml(a["config"]).splitlines(keepends=True), _yaml(b["config"]).splitlines(keepends=True),
                                 fromfile=f"version {args.a}", tofile=f"version {args.b}")
    sys.stdout.writelines(lines)
    return 0


def cmd_rollback(args) -> int:
    try:
        result = call(args, "POST", "/api/config/rollback", {"version": args.version, "base": args.base})
    except AdminError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"rolled back to the content of version {result['rolled_back_to']}: {result['message']}")
    return 0


def cmd_workers_list(args) -> int:
    try:
        result = call(args, "GET", "/api/workers")
    except AdminError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
        return 0
    quarantined = result.get("quarantined", {})
    print(f"{'KEY':<32} {'MEMORY KiB':>10} {'REQUESTS':>9} {'IDLE s':>8} {'CPU ms':>7} {'HEAP MiB':>8} {'SHARD':>5}")
    for key, w in sorted(result.get("per_worker", {}).items()):
        limits = w.get("limits", {})
        note = f"  quarantined {quarantined[key]} s" if key in quarantined else ""
        print(f"{key:<32} {w['memory_bytes'] // 1024:>10} {w['requests']:>9} {w['idle_s']:>8} "
              f"{limits.get('cpu_ms', ''):>7} {limits.get('memory_mb', ''):>8} {w.get('shard', ''):>5}{note}")
    print(f"hits {result['hits']}, misses {result['misses']}, loads {result['loads']}, "
          f"evictions {result['evictions']}, moves {result.get('moves', 0)}")
    for key, seconds in sorted(quarantined.items()):
        if key not in result.get("per_worker", {}):
            print(f"{key}: quarantined for {seconds} s more")
    return 0


def _yaml(document) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
