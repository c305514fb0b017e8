"""`tooltune-operator`: run the kopf operator (cluster-wide, or in TOOLTUNE_NAMESPACE only)."""

from __future__ import annotations

import os

import kopf

from tooltune_operator import handlers  # noqa: F401  (registers the handlers)


def main() -> None:
    namespace = os.environ.get("TOOLTUNE_NAMESPACE", "")
    kopf.configure(verbose=os.environ.get("TOOLTUNE_DEBUG") == "1")
    kopf.run(
        standalone=True,  # one operator per cluster; no peering objects needed
        clusterwide=not namespace,
        namespaces=[namespace] if namespace else [],
        # kopf's own probe endpoint; an empty TOOLTUNE_LIVENESS_ENDPOINT turns it off (local runs, benchmarks)
        liveness_endpoint=os.environ.get("TOOLTUNE_LIVENESS_ENDPOINT", "http://0.0.0.0:8081/healthz") or None,
    )


if __name__ == "__main__":
    main()
