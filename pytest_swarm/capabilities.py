"""Preflight: what the nodes' kernels can do, found by probing each node, not by reading configs.

Swarm needs IPVS for the ingress routing mesh (a published port answering on every node) and
for VIP service discovery. dockerd reads its IPVS parameters from ``/proc/sys/net/ipv4/vs`` in
each sandbox; that folder exists in a network namespace only when the kernel has IPVS (built in,
or the ip_vs module loaded). The probe asks the node itself, loading the module if it can.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import pytest
import testinfra

if TYPE_CHECKING:
    from .cluster import Cluster

IPVS = "ipvs"
# What each marker needs, and how a skip names it.
FEATURES = {
    "needs_routing_mesh": (IPVS, "IPVS (the ingress routing mesh balances through it)"),
    "needs_vip": (IPVS, "IPVS (VIP service discovery resolves through it)"),
}
# The cluster a test runs on when it is not the run's own (judged_on).
TESTED_ON = pytest.StashKey["Cluster"]()
IPVS_PROBE = "test -d /proc/sys/net/ipv4/vs || modprobe ip_vs 2>/dev/null; test -d /proc/sys/net/ipv4/vs"


class _HasHosts(Protocol):
    def host_spec(self, node: str) -> str: ...


def probe_capabilities(provider: _HasHosts, nodes: Sequence[str]) -> dict[str, dict[str, bool]]:
    """node -> {"ipvs": bool}, asked of each node."""
    found: dict[str, dict[str, bool]] = {}
    for node in nodes:
        host = testinfra.get_host(provider.host_spec(node))
        found[node] = {IPVS: host.run(IPVS_PROBE).rc == 0}
    return found


def judged_on(item: pytest.Item, cluster: Cluster) -> None:
    """Say that ``item`` runs on ``cluster``, a cluster of its own: its needs_routing_mesh and
    needs_vip markers are judged on that cluster's nodes, not on the run's (which then need not
    come up at all). Call it from a function-scoped fixture of the test."""
    item.stash[TESTED_ON] = cluster


def skip_reason(marker: str, missing_nodes: Sequence[str], unprobed: Mapping[str, str] | None = None) -> str:
    _, feature = FEATURES[marker]
    unknown = {n: why for n, why in (unprobed or {}).items() if n in missing_nodes}
    if unknown:
        return f"{marker}: {feature} could not be probed on node(s) " + "; ".join(
            f"{n}: {why}" for n, why in sorted(unknown.items())
        )
    return (
        f"{marker}: node(s) {', '.join(missing_nodes)} have no {feature} in their kernel; "
        "run this test where the nodes' kernels have it (most cloud VMs do)"
    )
