"""The node skeleton of the providers whose nodes run on this machine (dind: containers, uml:
UML kernels): master-1..M and worker-1..N, each engine reached through a unix socket in the run
folder, the swarm formed, labelled and probed the same way. master-1 forms the swarm and is the
one the run talks to; the other managers (``--swarm-managers``) are there for quorum.

A subclass says how a node starts, what its log says, where it is and how it goes; this class
holds the constructor, the tail of ``up``, ``add_node``, ``remove_node`` and ``keep``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import docker.errors

from ..capabilities import probe_capabilities
from ..cluster import Cluster
from ..errors import ProvisioningError, SwarmError
from .base import (
    Engine,
    ProviderRun,
    admit,
    apply_node_labels,
    forget,
    form_swarm,
    join_late,
    leave,
    new_node_name,
    parallel,
    wait_ready,
)

MANAGER = "master-1"


class LocalNodes(ABC):
    """Nodes this machine runs for the session; subclasses set ``name`` and the hooks below."""

    name: ClassVar[str]
    joins_networks_first: ClassVar[bool]
    owns_swarm: ClassVar[bool] = True
    can_change_nodes: ClassVar[bool] = True
    fixed_nodes_reason: ClassVar[str] = ""
    preloads_images: ClassVar[bool] = False
    gives_labels: ClassVar[tuple[str, ...]] = ("node", "engine")
    second_cluster_cost: ClassVar[str]
    node_kind: ClassVar[str] = "node"  # how progress lines name a node

    def __init__(self, run: ProviderRun) -> None:
        settings = run.settings
        self.run = run
        self.session = run.session
        self.workers = settings.workers
        self.managers = settings.manager_names
        self.node_labels = settings.node_labels
        self.engine_labels = settings.engine_labels
        self.timeout = settings.timeout
        self.progress = run.progress
        self.preload = list(run.preload)
        self.timings: dict[str, float] = {}
        self.cluster: Cluster | None = None
        self._engines: dict[str, Engine] = {}
        self._images: set[str] = set(self.preload)  # every image on the nodes: a new node gets them too

    # -- what a subclass provides ----------------------------------------------------------------
    @abstractmethod
    def _prepare(self) -> float:
        """Make what the nodes need before they start (sweep, images, network); returns the
        monotonic time the cluster's readiness is counted from."""

    def _plan_node(self, node: str) -> None:  # noqa: B027 (most nodes need no plan)
        """Name what a node will have (before it starts: a removal finds it by its record)."""

    @abstractmethod
    def _start_node(self, node: str) -> Engine:
        """Start a node and wait until its engine answers."""

    @abstractmethod
    def _discard_node(self, node: str, engine: Engine | None) -> str:
        """Remove a node that left the swarm (or never joined: ``engine`` None when it never
        answered), and all it had; returns a problem or ""."""

    @abstractmethod
    def log_tail(self, node: str, lines: int = 15) -> str:
        """The end of a node's log, each line prefixed with its name (for failure messages)."""

    @abstractmethod
    def address(self, node: str) -> str: ...

    @abstractmethod
    def host_spec(self, node: str) -> str: ...

    @abstractmethod
    def load_images(self, refs: Sequence[str]) -> None: ...

    @abstractmethod
    def down(self) -> None: ...

    # -- names and places -----------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.session.run_dir

    def _node_dir(self, node: str) -> Path:
        return self.run_dir / node

    def socket_url(self, node: str) -> str:
        """The node's engine API: a unix socket in its run folder (no TCP port anywhere)."""
        return f"unix://{self._node_dir(node) / 'docker.sock'}"

    def _engine_labels(self, node: str) -> dict[str, str]:
        return {**self.engine_labels.get("*", {}), **self.engine_labels.get(node, {})}

    def _taken_names(self) -> Collection[str]:
        return self._engines

    # -- the cluster ------------------------------------------------------------------------------
    def up(self) -> Cluster:
        """Start the nodes, form the swarm, label it; on any failure (or Ctrl-C) remove it all."""
        try:
            started = self._prepare()
            names = [*self.managers, *(f"worker-{i}" for i in range(1, self.workers + 1))]
            for name in names:
                self._plan_node(name)
            parallel(self._start_node, names)
            self.timings["engines"] = time.monotonic() - started
            self.progress(f"{len(names)} {self.node_kind} engines up ({self.timings['engines']:.1f} s)")
            form_swarm(self._engines[MANAGER], [self._engines[n] for n in names[1:]])
            self._wait_ready(names)
            apply_node_labels(self._engines[MANAGER].client, self.node_labels)
            others = f" + {len(self.managers) - 1} managers" if len(self.managers) > 1 else ""
            self.progress(f"swarm formed: {MANAGER} Leader{others} + {self.workers} workers")
            cluster = self._cluster_of(names, started)
            self.timings["ready"] = cluster.seconds_to_ready
            return cluster
        except BaseException:
            self.down()
            raise

    def _cluster_of(self, names: Sequence[str], started: float) -> Cluster:
        """The cluster of ``names`` (engines reached, nodes Ready), its nodes probed."""
        self.cluster = Cluster(
            provider=self.name,
            client=self._engines[MANAGER].client,
            manager_url=self.socket_url(MANAGER),
            addresses={n: self._engines[n].address for n in names},
            engines={n: self._engines[n].client for n in names},
        )
        self.cluster.capabilities = probe_capabilities(self, list(names))
        self.cluster.seconds_to_ready = time.monotonic() - started
        return self.cluster

    def _wait_ready(self, names: Sequence[str]) -> None:
        hint = lambda late: "\n".join(self.log_tail(n) for n in late)  # noqa: E731
        wait_ready(self._engines[MANAGER].client, names, self.timeout, hint)

    # -- nodes during a run -----------------------------------------------------------------------
    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str:
        """Start a new node (worker-N+1 or master-N+1) and join it; returns its name.

        A node that did not join leaves nothing behind (so the next node of that name can start).
        """
        if self.cluster is None:
            raise ProvisioningError("add_node needs a running cluster (call up() first)")
        name = new_node_name(role, self._taken_names())
        try:
            self._plan_node(name)
            engine = self._start_node(name)
            self.load_images(sorted(self._images))  # what the stacks run, before tasks land there
            manager = self._engines[MANAGER]
            join_late(manager, engine, role, self.timeout)
            self._wait_ready(list(self._engines))
            if labels:
                apply_node_labels(manager.client, {name: labels})
            admit(self.cluster, name, engine, probe_capabilities(self, [name]))
        except BaseException:
            try:
                self._forget(name)
            except (docker.errors.DockerException, SwarmError) as exc:
                self.progress(f"{name} did not join, and removing it failed too: {exc}")
            raise
        self.progress(f"node {name} joined as {role}")
        return name

    def remove_node(self, name: str) -> None:
        """Leave the swarm, drop the node from the node list, remove the node and what it had."""
        if name == MANAGER:
            raise ProvisioningError(f"{MANAGER} is the manager of this cluster and can't be removed")
        if name not in self._engines:
            raise ProvisioningError(f"no node {name} in this cluster ({', '.join(self._engines)})")
        problem = self._forget(name)
        if problem:
            raise ProvisioningError(f"{name} removed, but {problem}")

    def _forget(self, name: str) -> str:
        """Take ``name`` out of the swarm and the cluster's tables, and remove the node; returns
        a problem or ""."""
        manager = self._engines[MANAGER].client
        engine = self._engines.pop(name, None)
        node_id = leave(manager, engine) if engine is not None else None
        problem = self._discard_node(name, engine)
        forget(manager, self.cluster, name, node_id)
        return problem

    def keep(self) -> dict[str, str]:
        """What a later run needs to reach this cluster again."""
        return {
            "provider": self.name,
            "nodes": ",".join(self._engines),
            "DOCKER_HOST": self.socket_url(MANAGER),
        }
