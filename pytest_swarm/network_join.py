"""Nodes join a new stack's overlay networks one node at a time, before the stack's tasks land.

Engines before 29.6 keep one bulk-sync answer channel per peer in their network database, and
set it for every sync they send, answers included. When a node joins a network it syncs with
every peer already in it and waits for the answer; if that peer is joining at the same moment
(its own sync to this node arriving meanwhile), this node's reply replaces the channel it was
waiting on, and its join waits out a 30 s timeout ("Bulk sync to node ... timed out" in its
log); two joins at once on one node do the same. A stack's tasks reach every node together, so
a fresh deploy of a stack with two networks stalls at random: on 3 dind nodes one deploy of the
reddit stack in 4 converged in 37 s instead of 10, and three envs deployed together stalled in
2 rounds of 3. A single global service on the networks stalled too (32.5 s): its tasks join
one network after another on each node, but all nodes at once.

So before such a stack is deployed, one small task per node joins all of its networks (a task
joins them one after another), each node after the previous one is in: the first node joins
with no peer to sync with, each next one syncs with peers that are not joining. When the
stack's tasks arrive, every node is in every network and joins none. The join services are
removed once the stack has converged. The stacks of a cluster do this one at a time. Engines
from 29.6 on wait for each answer on its own channel; there this step is skipped, and where the
provider says (uml: a task takes about 13 s to start there, so 3 nodes one by one cost more
than the stall; attach: the swarm is someone else's, where only the stacks are deployed).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker.errors
import yaml
from docker import DockerClient

from .cluster import STACK_LABEL, Cluster
from .commands import run_docker
from .errors import CommandError, StackError
from .images import BASE_IMAGE
from .waiting import Poll, wait_for

FIXED_IN = (29, 6)
IMAGE = BASE_IMAGE  # has sleep; every image the project builds starts from it, so it adds no layer
SERVICE = "network-join"
# One stack's joins at a time on a cluster: two stacks joining their networks together would be
# two joins at once on a node. Another cluster's nodes are others: its joins don't wait.
_JOINING: dict[str, threading.Lock] = {}
_JOINING_GUARD = threading.Lock()


def _one_at_a_time(cluster: Cluster) -> threading.Lock:
    with _JOINING_GUARD:
        return _JOINING.setdefault(cluster.manager_url, threading.Lock())


def engine_release(version: str) -> tuple[int, int]:
    """(major, minor) of an engine version such as ``20.10.24+dfsg1``; (0, 0) when unreadable."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def stalls_on_parallel_joins(engine_versions: Sequence[str]) -> bool:
    return any(engine_release(v) < FIXED_IN for v in engine_versions)


def networks_to_join(model: Mapping[str, Any]) -> list[str]:
    """The stack's own networks that its services use, in order of first use."""
    declared = model.get("networks") or {}
    used: list[str] = []
    for spec in (model.get("services") or {}).values():
        names = spec.get("networks") or {}
        for name in names if isinstance(names, list | dict) else []:
            if name not in used and not (declared.get(name) or {}).get("external"):
                used.append(name)
    return used


def join_compose(
    model: Mapping[str, Any], networks: Sequence[str], image: str, node_id: str, step: int
) -> dict[str, Any]:
    """A stack file: one task on node ``node_id`` that sleeps on ``networks``, declared as the
    stack declares them."""
    declared = model.get("networks") or {}
    return {
        "version": str(model.get("version") or "3.8"),
        "services": {
            f"{SERVICE}-{step}": {
                "image": image,
                "entrypoint": ["sleep", "infinity"],
                "stop_signal": "SIGKILL",  # nothing to shut down cleanly
                "networks": list(networks),
                "deploy": {"replicas": 1, "placement": {"constraints": [f"node.id == {node_id}"]}},
            }
        },
        "networks": {name: declared.get(name) or {} for name in networks},
    }


def networks_needing_joins(cluster: Cluster, stack: str, model: Mapping[str, Any]) -> list[str]:
    """The networks every node should join before ``stack`` is deployed: none when the engines
    answer parallel joins correctly, when the stack has fewer than two networks, or when its
    networks exist already (a redeploy: the nodes are in them)."""
    networks = networks_to_join(model)
    if len(networks) < 2 or not stalls_on_parallel_joins([n.engine_version for n in cluster.nodes()]):
        return []
    if cluster.client.api.networks(filters={"label": f"{STACK_LABEL}={stack}"}):
        return []
    return networks


def join_networks(
    cluster: Cluster,
    stack: str,
    model: Mapping[str, Any],
    networks: Sequence[str],
    timeout: float,
) -> list[str]:
    """Have each node that can run tasks join ``networks`` (of ``stack``), one node after the
    other, through a task running ``IMAGE``; returns the join services, to remove once the
    stack's tasks are in place (the first one creates the networks)."""
    nodes = [n for n in cluster.nodes() if n.state == "ready" and n.availability == "active"]
    made: list[str] = []
    with _one_at_a_time(cluster), tempfile.TemporaryDirectory(prefix="pytest-swarm-join-") as folder:
        for step, node in enumerate(nodes, start=1):
            path = Path(folder) / f"{SERVICE}-{step}.yml"
            path.write_text(yaml.safe_dump(join_compose(model, networks, IMAGE, node.id, step)))
            try:
                run_docker(
                    ["stack", "deploy", "--resolve-image", "never", "--detach=true", "-c", str(path), stack],
                    host=cluster.manager_url,
                    timeout=timeout,
                )
            except CommandError as exc:
                raise StackError(f"joining {node.name} to {stack}'s networks failed: {exc}") from exc
            made.append(f"{stack}_{SERVICE}-{step}")
            # a manager lists every network of the swarm, joined or not: there, wait for the task
            engine = cluster.engines.get(node.name) if node.role == "worker" else None
            _wait_joined(engine, cluster, node.name, stack, len(networks), made[-1], timeout)
    return made


def _wait_joined(
    engine: DockerClient | None,
    cluster: Cluster,
    node: str,
    stack: str,
    count: int,
    service: str,
    timeout: float,
) -> None:
    """Until ``node`` is in the stack's networks: seen on the worker's own ``engine`` (it lists a
    network as it joins it, before the task's container starts), else from the join task running."""

    def probe() -> Poll[None]:
        if engine is not None:
            found = len(engine.api.networks(filters={"label": f"{STACK_LABEL}={stack}"}))
            return Poll(found >= count, f"{found} of {count} networks on {node}")
        running = cluster.service(service).reload().running
        return Poll(running == 1, f"{service}: {running}/1 running")

    wait_for(probe, what=f"{node} in {stack}'s networks", timeout=timeout, interval=0.1)


def remove_join_services(cluster: Cluster, services: Sequence[str]) -> None:
    for service in services:
        try:
            cluster.client.api.remove_service(service)
        except docker.errors.NotFound:
            pass  # removed with its stack already
