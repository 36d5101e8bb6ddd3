"""The provider contract, and the swarm formation every provider shares.

A provider brings up (or attaches to) nodes whose engines it can reach; forming the swarm on
them, labelling and waiting for readiness is the same everywhere, so it lives here. Every
provider is built the same way, ``Kind(ProviderRun(...))``, and found by name in
``providers/registry.py``; what callers need to know of it is in ``Provider`` (no probing).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

import docker
import docker.errors

from .. import images
from ..cluster import Cluster, Node
from ..errors import ImageBuildError, ProvisioningError
from ..ownership import Session
from ..settings import Settings
from ..waiting import Poll, wait_for
from .engines import TRANSIENT, local_engine

T = TypeVar("T")
R = TypeVar("R")
LocalEngine = Callable[[], docker.DockerClient]


@dataclass(frozen=True)
class ProviderRun:
    """What every provider is built from: the resolved settings and what the run has made.

    Example:
        ``DindProvider(ProviderRun(settings, Session.new(), print, local=lambda: client))``
    """

    settings: Settings
    session: Session
    progress: images.Progress
    # The local engine's client (images are built there; dind nodes run there), made on first
    # use: a provider that needs none never asks for it.
    local: LocalEngine = local_engine
    # The images the run's stacks need, for a provider that ``preloads_images`` (else empty).
    preload: Sequence[str] = field(default_factory=tuple)


class Provider(Protocol):
    """Brings up or attaches to swarm nodes. ``up`` returns once every node is Ready/Active.

    The class attributes say what the rest of the code may count on, before one is built.
    """

    name: ClassVar[str]
    # down() removes the swarm and its nodes. False: the swarm is someone else's; down() takes
    # back only what the run put on it, and the lifecycle removes the stacks the run deployed.
    owns_swarm: ClassVar[bool]
    # add_node, remove_node, stop_node and start_node work; else they raise, and tests that
    # need them are skipped with ``fixed_nodes_reason``.
    can_change_nodes: ClassVar[bool]
    fixed_nodes_reason: ClassVar[str]
    # whether a new stack's nodes join its networks one by one first (pytest_swarm.network_join)
    joins_networks_first: ClassVar[bool]
    # wants the stack's images built before ``up`` (``ProviderRun.preload``): baked into node
    # disks (uml), or checked on the nodes before any suite runs (attach)
    preloads_images: ClassVar[bool]
    # the label kinds ("node", "engine") the nodes it brings up carry as the settings say: a
    # placement constraint on one of those that no node will carry is named before deploying
    gives_labels: ClassVar[tuple[str, ...]]
    # What a second cluster of this kind costs (the disruptive suite kills nodes of a cluster of
    # its own); "" when it comes up in seconds and the suite runs by default, else it runs only
    # with --swarm-disruptive and its skip says this.
    second_cluster_cost: ClassVar[str]

    def __init__(self, run: ProviderRun) -> None: ...

    def up(self) -> Cluster: ...
    def attach(self, nodes: Sequence[str]) -> Cluster:
        """Reach the nodes of a kept cluster again (``--swarm-reuse``); ``nodes`` from ``keep()``."""
        ...

    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str: ...
    def remove_node(self, name: str) -> None: ...
    def stop_node(self, name: str) -> None: ...
    def start_node(self, name: str) -> None: ...
    def load_images(self, refs: Sequence[str]) -> None: ...
    def address(self, node: str) -> str: ...
    def host_spec(self, node: str) -> str:
        """A testinfra backend URL running commands on ``node``; "" where there is none."""
        ...

    def keep(self) -> dict[str, str]:
        """The record a later run reattaches by (``provider``, ``nodes``, ``DOCKER_HOST``)."""
        ...

    def down(self) -> None:
        """Remove what this run made (all of it when ``owns_swarm``); idempotent."""
        ...

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """Remove what the run recorded as ``session_id`` made (kept, or left by a dead run), by
        its own record, then its run folder; returns what could not be removed."""
        ...

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Remove what earlier runs left (their owner is gone, their cluster not kept); returns
        the sessions swept."""
        ...


class FixedNodes:
    """For a provider whose nodes are not its to change (attach, ssh): the four node calls
    refuse, saying why (the class's ``fixed_nodes_reason``) and which providers can."""

    can_change_nodes: ClassVar[bool] = False
    fixed_nodes_reason: ClassVar[str]

    def _refuse(self, what: str) -> ProvisioningError:
        return ProvisioningError(
            f"{self.fixed_nodes_reason} ({what} asked); use --swarm-provider=dind, uml or machine "
            "for tests that change nodes"
        )

    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str:
        raise self._refuse("add_node")

    def remove_node(self, name: str) -> None:
        raise self._refuse(f"remove_node {name}")

    def stop_node(self, name: str) -> None:
        raise self._refuse(f"stop_node {name}")

    def start_node(self, name: str) -> None:
        raise self._refuse(f"start_node {name}")


@dataclass
class Engine:
    """A node's engine as the provider reaches it before the swarm exists."""

    name: str
    client: docker.DockerClient
    address: str  # the node's address on the cluster network (advertise address)


def parallel(func: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Run ``func`` over ``items`` in threads; the first exception is raised after all finish."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        futures = [pool.submit(func, item) for item in items]
    return [f.result() for f in futures]


def is_manager_name(name: str) -> bool:
    """Whether a node of that name joins as a manager: the lesson's names, master-N."""
    return name.startswith("master-")


def form_swarm(manager: Engine, others: Sequence[Engine]) -> None:
    """``swarm init`` on the manager with an explicit advertise address; the other managers
    (master-N) join one at a time (each join is a change of raft's membership), then the
    workers in parallel."""
    manager.client.swarm.init(advertise_addr=manager.address, listen_addr="0.0.0.0:2377")
    tokens = manager.client.swarm.attrs["JoinTokens"]
    for engine in (e for e in others if is_manager_name(e.name)):
        join(engine, manager.address, tokens["Manager"])
    workers = [e for e in others if not is_manager_name(e.name)]
    parallel(lambda engine: join(engine, manager.address, tokens["Worker"]), workers)


def join(engine: Engine, manager_address: str, token: str, availability: str = "active") -> None:
    request = {
        "RemoteAddrs": [f"{manager_address}:2377"],
        "JoinToken": token,
        "AdvertiseAddr": engine.address,
        "ListenAddr": "0.0.0.0:2377",
        "Availability": availability,  # the SDK's join_swarm has no such parameter
    }
    api = engine.client.api
    try:
        api._raise_for_status(api._post_json(api._url("/swarm/join"), data=request))
    except docker.errors.APIError as exc:
        raise ProvisioningError(
            f"{engine.name} could not join the swarm at {manager_address}:2377: {exc.explanation}"
        ) from exc


def new_node_name(role: str, taken: Collection[str]) -> str:
    """The first free ``worker-N`` (or ``master-N`` for a manager)."""
    prefix = "master" if role == "manager" else "worker"
    return next(f"{prefix}-{i}" for i in range(1, 1000) if f"{prefix}-{i}" not in taken)


def join_late(manager: Engine, engine: Engine, role: str, timeout: float) -> None:
    """Join ``engine`` to a swarm that may run stacks already: drained until the node has set
    up the ingress network, then active.

    Engine 20.10 can stall a node that joins two overlay networks at once for 30 s (see
    pytest_swarm/network_join.py). A node joining active gets the global services' tasks at
    once, and joins their networks while it still joins ingress (seen in worker-3's debug log:
    back_net and ingress 0.25 s apart, "Bulk sync to node ... timed out"). Drained, it joins
    ingress alone; the tasks' networks come once it is active.
    """
    token = manager.client.swarm.attrs["JoinTokens"]["Manager" if role == "manager" else "Worker"]
    join(engine, manager.address, token, availability="drain")
    node_id = engine.client.info()["Swarm"]["NodeID"]
    ingress = next((n["Name"] for n in manager.client.api.networks() if n.get("Ingress")), None)
    if ingress is not None:  # a swarm may run without one
        wait_for(
            lambda: Poll(_has_ingress_sandbox(engine, ingress), "its ingress sandbox is not set up yet"),
            what=f"{engine.name} joined the {ingress} network",
            timeout=timeout,
            interval=0.1,
            transient=TRANSIENT,
        )
    raw = manager.client.api.inspect_node(node_id)
    spec = {**raw["Spec"], "Availability": "active"}
    manager.client.api.update_node(node_id, raw["Version"]["Index"], spec)


def _has_ingress_sandbox(engine: Engine, ingress: str) -> bool:
    try:
        network = engine.client.api.inspect_network(ingress)
    except docker.errors.NotFound:
        return False
    return "ingress-sbox" in (network.get("Containers") or {})


def admit(cluster: Cluster, name: str, engine: Engine, capabilities: Mapping[str, dict[str, bool]]) -> None:
    """Record a node that joined during the run in the cluster's tables."""
    cluster.addresses[name] = engine.address
    cluster.engines[name] = engine.client
    cluster.capabilities.update(capabilities)


def leave(manager: docker.DockerClient, engine: Engine) -> str | None:
    """``engine`` leaves the swarm (if it still can); returns its node id for ``forget``."""
    node_id = next(
        (n["ID"] for n in manager.api.nodes() if n["Description"]["Hostname"] == engine.name), None
    )
    try:
        engine.client.swarm.leave(force=True)
    except TRANSIENT:
        pass  # a stopped node can't leave; the manager forgets it
    return node_id


def forget(manager: docker.DockerClient, cluster: Cluster | None, name: str, node_id: str | None) -> None:
    """Drop a removed node from the swarm's node list and from the cluster's tables."""
    if node_id is not None:
        manager.api.remove_node(node_id, force=True)
    if cluster is not None:
        for table in (cluster.addresses, cluster.engines, cluster.capabilities):
            table.pop(name, None)


def copy_images(
    engines: Mapping[str, docker.DockerClient],
    refs: Sequence[str],
    tar: Path,
    load: Callable[[str, Path], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Make ``refs`` present on every engine: one ``docker save`` of those missing anywhere,
    loaded in parallel where they lack, then checked on each of those engines.

    ``load(node, tar)`` loads on one node (default: through its client). Returns the images
    copied and the nodes they were loaded on (both empty when every node had everything).
    """
    wanted = sorted(set(refs))
    lacking = {n: [r for r in wanted if not images.image_exists(c, r)] for n, c in engines.items()}
    missing = sorted({r for refs_ in lacking.values() for r in refs_})
    nodes = [n for n, refs_ in lacking.items() if refs_]
    if not missing:
        return [], []

    def load_through_client(node: str, path: Path) -> None:
        images.load_image_file(engines[node], path)

    images.save_images(missing, tar)
    try:
        parallel(lambda node: (load or load_through_client)(node, tar), nodes)
    finally:
        tar.unlink(missing_ok=True)
    still = {n: [r for r in lacking[n] if not images.image_exists(engines[n], r)] for n in nodes}
    if any(still.values()):
        lost = {n: r for n, r in still.items() if r}
        raise ImageBuildError(f"images missing on nodes after docker load: {lost}")
    return missing, nodes


def apply_node_labels(client: docker.DockerClient, labels: Mapping[str, Mapping[str, str]]) -> None:
    """Add swarm node labels (``docker node update --label-add``) by hostname."""
    nodes = {Node(n).name: n for n in client.api.nodes()}
    for name, wanted in labels.items():
        if name == "*" or not wanted:
            continue
        if name not in nodes:
            raise ProvisioningError(
                f"swarm_node_labels names node {name!r}, which is not in the cluster "
                f"({', '.join(sorted(nodes))})"
            )
        raw = nodes[name]
        spec = dict(raw["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), **wanted}
        client.api.update_node(raw["ID"], raw["Version"]["Index"], spec)


def wait_ready(
    client: docker.DockerClient,
    expected: Sequence[str],
    timeout: float,
    on_timeout_hint: Callable[[list[str]], str] = lambda _nodes: "",
) -> list[Node]:
    """Wait until every expected node is Ready/Active and a Leader is elected."""

    def probe() -> Poll[list[Node]]:
        nodes = {n.name: n for n in (Node(raw) for raw in client.api.nodes())}
        not_ready = [n for n in expected if n not in nodes or not nodes[n].ready]
        leader = any(n.leader for n in nodes.values())
        states = ", ".join(
            f"{n}={nodes[n].state}/{nodes[n].availability}" if n in nodes else f"{n}=absent" for n in expected
        )
        state = f"{states}; leader {'elected' if leader else 'none'}"
        return Poll(not not_ready and leader, state, list(nodes.values()))

    try:
        poll = wait_for(
            probe,
            what="every node Ready/Active",
            timeout=timeout,
            interval=0.1,
            transient=TRANSIENT,
        )
    except Exception as exc:
        nodes = {Node(raw).name: Node(raw) for raw in _nodes_or_empty(client)}
        late = [n for n in expected if n not in nodes or not nodes[n].ready]
        hint = on_timeout_hint(late)
        raise ProvisioningError(f"{exc}\n{hint}".rstrip()) from exc
    return poll.value or []


def _nodes_or_empty(client: docker.DockerClient) -> list[dict[str, object]]:
    try:
        return list(client.api.nodes())
    except TRANSIENT:
        return []


def wait_engine(
    client: docker.DockerClient, name: str, timeout: float, check_alive: Callable[[], str]
) -> None:
    """Wait until an engine answers ``/_ping``; fail at once if its node died (check_alive says why)."""

    def probe() -> Poll[None]:
        dead = check_alive()
        if dead:
            raise ProvisioningError(f"{name}: {dead}")
        client.ping()
        return Poll(True, "answering")

    wait_for(probe, what=f"the engine of {name}", timeout=timeout, interval=0.1, transient=TRANSIENT)
