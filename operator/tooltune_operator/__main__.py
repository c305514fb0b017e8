"""`tooltune-operator`: run the kopf operator (cluster-wide, or in TOOLTUNE_NAMESPACE only)."""

from __future__ import annotations

import gc

import kopf

from tooltune_operator.handlers import registry, watch_workloads
from tooltune_operator.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    kopf.configure(verbose=settings.debug)
    if settings.kueue_enabled:
        watch_workloads(registry)
    # Everything imported so far lives as long as the process: out of the collector's sight, its full
    # collections (which a burst of watch events sets off) stop walking its 60,000 objects each time.
    gc.freeze()
    kopf.run(
        registry=registry,
        memo=kopf.Memo(settings=settings),
        standalone=True,  # one operator per cluster; no peering objects needed
        clusterwide=not settings.namespace,
        namespaces=[settings.namespace] if settings.namespace else [],
        liveness_endpoint=settings.liveness_endpoint or None,
    )


if __name__ == "__main__":
    main()
