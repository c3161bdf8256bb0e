"""Generators: pure functions from validated config (:mod:`tunnel.config`) to worker code.

    generate_tunnel_worker(tunnel)           -> GeneratedWorker  (key tunnel-<id>)
    generate_custom_worker(tunnel)           -> GeneratedWorker | None  (key custom-<id>: custom code
                                                beside a policy, reached as env.CUSTOM)
    generate_metrics_worker(tunnel)          -> GeneratedWorker  (key metrics-<id>)
    generate_config_worker(config, version)  -> GeneratedWorker  (key config-<version>)
    build_routing_table(config)              -> RoutingTable     (the config worker's answers, in Python)
    observed_headers / exchange / merge_expositions                (feeding metrics-<id>, merging its output)

No I/O, no import of the edge, the tunnel protocol or the loader's internals;
:meth:`GeneratedWorker.to_worker_code` imports ``tunnel.loader`` only when called.
The workers' contracts are in docs/workers.md.
"""

from generators.code import COMPATIBILITY_DATE, GeneratedWorker, js
from generators.config_worker import config_answer, generate_config_worker
from generators.exposition import exchange, merge_expositions, observed_headers
from generators.keys import config_key, custom_key, metrics_key, parse_key, tunnel_key
from generators.metrics_worker import exposed_name, generate_metrics_worker
from generators.routing import RoutingTable, build_routing_table
from generators.tunnel_worker import generate_custom_worker, generate_tunnel_worker

__all__ = [
    "COMPATIBILITY_DATE", "GeneratedWorker", "RoutingTable", "build_routing_table", "config_answer", "config_key",
    "custom_key", "exchange", "exposed_name", "generate_config_worker", "generate_custom_worker",
    "generate_metrics_worker", "generate_tunnel_worker", "js",
    "merge_expositions", "metrics_key", "observed_headers", "parse_key", "tunnel_key",
]
