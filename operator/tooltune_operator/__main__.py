"""`tooltune-operator`: run the kopf operator (cluster-wide, or in TOOLTUNE_NAMESPACE only)."""

from __future__ import annotations

import kopf

from tooltune_operator.handlers import registry, watch_workloads
from tooltune_operator.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    kopf.configure(verbose=settings.debug)
    if settings.kueue_enabled:
        watch_workloads(registry)
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
