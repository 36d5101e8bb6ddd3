"""dind: swarm nodes as containers of the local Docker engine, each running its own dockerd.

``--privileged`` fails on kernels whose capability bounding set lacks CAP_SYS_RESOURCE, so a
node gets every other capability, no seccomp/AppArmor confinement, all devices, the host's
cgroup tree and a cgroup parent of its own (its inner containers' cgroups stay apart from the
outer engine's). Each node's API socket lives in a host folder bind-mounted into the node:
the test runner reaches every engine without a TCP port.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import docker
import docker.errors
import docker.types

from .. import images
from ..cluster import Cluster
from ..errors import ProvisioningError, SwarmError
from ..ownership import (
    MACHINE_STATE_FILE,
    OWNER_LABEL,
    SESSION_LABEL,
    SSH_STATE_FILE,
    UML_STATE_FILE,
    cgroup_dirs,
    is_kept,
    owner_alive,
    recorded_here,
    remove_cgroup_tree,
    remove_run_dir,
    stale_run_dirs,
)
from .base import Engine, LocalEngine, Provider, ProviderRun, copy_images, wait_engine
from .engines import engine_client
from .local_nodes import LocalNodes

NODE_RECIPE = Path(__file__).parent / "dind_node"
NODE_REPO = "pytest-swarm/node"
NODE_MOUNT = "/pytest-swarm"
# On the session's network: its subnet was named at creation, so each node has a fixed address.
FIXED_ADDRESSES = "io.pytest-swarm.fixed-addresses"
ENGINE_TIMEOUT = 60.0


def node_image(client: docker.DockerClient, progress: images.Progress) -> str:
    """The node image, built when missing or when its recipe changed (the tag is its digest)."""
    ref = f"{NODE_REPO}:{images.recipe_digest(NODE_RECIPE)}"
    with images.file_lock("node-image"):
        if not images.image_exists(client, ref):
            progress(f"building the node image {ref} (Debian + docker.io, ~1 min, once)")
            images.build_image(client, NODE_RECIPE, [ref], what="the dind node image", progress=progress)
    return ref


class DindProvider(LocalNodes):
    """Nodes master-1, worker-1..N as containers on a network of the session's own."""

    name: ClassVar[str] = "dind"
    joins_networks_first: ClassVar[bool] = True
    second_cluster_cost: ClassVar[str] = ""  # a few containers: seconds (bench/README.md)

    def __init__(self, run: ProviderRun) -> None:
        super().__init__(run)
        self.client = run.local()
        self.network = self.session.prefix
        self._image = ""
        self._subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        self._gateway = ""
        self._ips: dict[str, str] = {}  # node -> its address on the network, kept across restarts
        self._ips_lock = threading.Lock()

    # -- names and places -------------------------------------------------------------------
    def _container_name(self, node: str) -> str:
        return f"{self.session.prefix}-{node}"

    def _container(self, node: str) -> docker.models.containers.Container:
        return self.client.containers.get(self._container_name(node))

    def address(self, node: str) -> str:
        attrs = self.client.api.inspect_container(self._container_name(node))
        return str(attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"])

    def host_spec(self, node: str) -> str:
        """A testinfra backend URL that runs commands inside the node."""
        return f"docker://{self._container_name(node)}"

    def log_tail(self, node: str, lines: int = 15) -> str:
        """The end of the node's dockerd log."""
        try:
            text = (self._node_dir(node) / "dockerd.log").read_text(errors="replace")
        except OSError:
            return f"({node}: no dockerd log)"
        return "\n".join(f"  {node}| {line}" for line in text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------
    def _prepare(self) -> float:
        started = time.monotonic()
        sweep(self.client, self.progress)
        self._image = node_image(self.client, self.progress)
        self.session.make_run_dir()
        self._create_network()
        return started

    def _create_network(self) -> None:
        """The session's bridge network, with a subnet it names: docker picks a free one, and the
        network is made again with it given. Only there does a node keep its address when it
        is started again: elsewhere two nodes started at once swap theirs (seen on engine
        20.10), and two managers swapped never get quorum back (raft asks each at the other's)."""
        picked = self.client.networks.create(self.network, driver="bridge", labels=self.session.labels)
        config = ((picked.attrs.get("IPAM") or {}).get("Config") or [{}])[0]
        picked.remove()
        subnet, gateway = config.get("Subnet"), config.get("Gateway")
        if not subnet:
            raise ProvisioningError(
                f"docker gave the network {self.network} no subnet: {picked.attrs.get('IPAM')}"
            )
        self._subnet = ipaddress.ip_network(subnet)
        self._gateway = gateway or str(next(self._subnet.hosts()))
        pool = docker.types.IPAMPool(subnet=subnet, gateway=self._gateway)
        self.client.networks.create(
            self.network,
            driver="bridge",
            labels={**self.session.labels, FIXED_ADDRESSES: "true"},
            ipam=docker.types.IPAMConfig(pool_configs=[pool]),
        )

    def _read_network(self, nodes: Sequence[str]) -> None:
        """A kept cluster's subnet and node addresses (a network made before addresses were fixed
        has none: its nodes get one from docker, as then)."""
        attrs = self.client.api.inspect_network(self.network)
        config = ((attrs.get("IPAM") or {}).get("Config") or [{}])[0]
        if (attrs.get("Labels") or {}).get(FIXED_ADDRESSES) and config.get("Subnet"):
            self._subnet = ipaddress.ip_network(config["Subnet"])
            self._gateway = config.get("Gateway") or str(next(self._subnet.hosts()))
            self._ips.update({node: self.address(node) for node in nodes})

    def _address_for(self, node: str) -> str | None:
        """The node's fixed address: the lowest of the subnet no other node holds (None on a
        network without a named subnet)."""
        if self._subnet is None:
            return None
        with self._ips_lock:
            if node not in self._ips:
                taken = {self._gateway, *self._ips.values()}
                self._ips[node] = next(str(ip) for ip in self._subnet.hosts() if str(ip) not in taken)
            return self._ips[node]

    def attach(self, nodes: Sequence[str]) -> Cluster:
        """Reach the nodes of a kept cluster again (``--swarm-reuse``)."""
        started = time.monotonic()
        self._image = node_image(self.client, self.progress)  # for a node added later
        self._read_network(nodes)
        for node in nodes:
            client = engine_client(self.socket_url(node))
            self._engines[node] = Engine(node, client, self.address(node))
        self._wait_ready(list(nodes))
        return self._cluster_of(list(nodes), started)

    def _start_node(self, node: str) -> Engine:
        node_dir = self._node_dir(node)
        node_dir.mkdir(parents=True, exist_ok=True)
        volume = self.client.volumes.create(f"{self._container_name(node)}-data", labels=self.session.labels)
        flags = [f"--cgroup-parent=/{self.session.cgroup_prefix}{node}"]
        flags += [f"--label={k}={v}" for k, v in sorted(self._engine_labels(node).items())]
        api = self.client.api
        host_config = api.create_host_config(
            network_mode=self.network,
            cap_add=["ALL"],
            cap_drop=["SYS_RESOURCE"],
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            device_cgroup_rules=["a *:* rwm"],
            tmpfs={"/run": ""},
            binds={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                str(node_dir): {"bind": NODE_MOUNT, "mode": "rw"},
                volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
            },
        )
        # `--security-opt systempaths=unconfined`: the engine needs /proc/sys writable.
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        endpoint = api.create_endpoint_config(ipv4_address=self._address_for(node))
        created = api.create_container(
            self._image,
            flags,
            name=self._container_name(node),
            hostname=node,
            labels={**self.session.labels, "io.pytest-swarm.node": node},
            environment={"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"},
            host_config=host_config,
            networking_config=api.create_networking_config({self.network: endpoint}),
        )
        api.start(created["Id"])
        container_id = str(created["Id"])
        client = engine_client(self.socket_url(node))
        wait_engine(client, node, ENGINE_TIMEOUT, lambda: self._why_dead(container_id, node))
        engine = Engine(node, client, self.address(node))
        self._engines[node] = engine
        return engine

    def _why_dead(self, container_id: str, node: str) -> str:
        try:
            state = self.client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:  # removed by a Ctrl-C's down(): this start ends now
            return "node container removed while it started"
        if state["Running"]:
            return ""
        return f"node container exited ({state['ExitCode']}); its dockerd log:\n{self.log_tail(node)}"

    # -- nodes during a run ------------------------------------------------------------------
    def _discard_node(self, node: str, engine: Engine | None) -> str:
        """Remove the node's container, volume and cgroup folders; its address is free again."""
        self._remove_container(node)
        with self._ips_lock:
            self._ips.pop(node, None)
        return ""

    def stop_node(self, name: str) -> None:
        """A node failure: its container is killed (no clean shutdown of its engine)."""
        self._container(name).kill()

    def start_node(self, name: str) -> None:
        container = self._container(name)
        container.start()
        engine = self._engines[name]
        wait_engine(engine.client, name, ENGINE_TIMEOUT, lambda: self._why_dead(container.id, name))
        self._wait_ready(list(self._engines))

    def load_images(self, refs: Sequence[str]) -> None:
        """Make ``refs`` present on every node: one ``docker save``, loaded in parallel."""
        self._images.update(refs)
        started = time.monotonic()
        clients = {n: e.client for n, e in self._engines.items()}
        copied, nodes = copy_images(clients, refs, self.session.run_dir / "images.tar")
        if copied:
            took = time.monotonic() - started
            self.progress(f"images loaded on {len(nodes)} nodes in {took:.1f} s: {', '.join(copied)}")

    def _remove_container(self, node: str) -> None:
        try:
            container = self._container(node)
        except docker.errors.NotFound:
            return
        container.remove(force=True, v=True)
        try:
            self.client.volumes.get(f"{self._container_name(node)}-data").remove(force=True)
        except docker.errors.NotFound:
            pass
        for folder in cgroup_dirs(f"{self.session.cgroup_prefix}{node}"):
            remove_cgroup_tree(folder)

    def down(self) -> None:
        """Remove every container, volume, network, cgroup folder and file of this session."""
        for engine in self._engines.values():
            engine.client.close()
        self._engines.clear()
        remove_session(self.client, self.session.id)

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """Remove the containers, network, volumes and cgroup folders labelled with the session."""
        return remove_session(local(), session_id)

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Remove what dead runs left on the local engine, and run folders no provider's record holds."""
        try:
            client = local()
        except SwarmError as exc:
            progress(f"dind: no local engine to sweep ({exc})")
            return []
        return sweep(client, progress)


def labelled(client: docker.DockerClient, label: str) -> list[tuple[str, str, dict[str, str]]]:
    """(kind, id or name, labels) of every container, network and volume carrying ``label``.

    Low-level list calls: one request per kind, no inspect per object that could fail when
    another run removes its own things meanwhile.
    """
    flt = {"label": label}
    found = [
        ("container", c["Id"], c.get("Labels") or {}) for c in client.api.containers(all=True, filters=flt)
    ]
    found += [("network", n["Id"], n.get("Labels") or {}) for n in client.api.networks(filters=flt)]
    volumes = client.api.volumes(filters=flt).get("Volumes") or []
    found += [("volume", v["Name"], v.get("Labels") or {}) for v in volumes]
    return found


def remove_session(client: docker.DockerClient, session_id: str) -> list[str]:
    """Remove everything labelled with ``session_id``; returns what could not be removed."""
    problems: list[str] = []
    things = labelled(client, f"{SESSION_LABEL}={session_id}")
    remove = {
        "container": lambda ref: client.api.remove_container(ref, force=True, v=True),
        "network": client.api.remove_network,
        "volume": lambda ref: client.api.remove_volume(ref, force=True),
    }
    for kind in ("container", "network", "volume"):  # containers first: they hold the others
        for _, ref, _labels in (t for t in things if t[0] == kind):
            try:
                remove[kind](ref)
            except docker.errors.NotFound:
                pass  # already gone
            except docker.errors.APIError as exc:
                problems.append(f"{kind} {ref[:12]}: {exc.explanation}")
        if kind == "container":  # a removed container's cgroups are empty: the nodes' folders go next
            for folder in cgroup_dirs(f"pytest-swarm-{session_id}-"):
                problems += remove_cgroup_tree(folder)
    remove_run_dir(session_id)
    return problems


def sweep(client: docker.DockerClient, progress: images.Progress) -> list[str]:
    """Remove what earlier runs left: their owner is gone and they were not kept."""
    owners: dict[str, str] = {}
    for _kind, _ref, labels in labelled(client, SESSION_LABEL):
        if recorded_here(labels):  # another run root's sessions are its own sweep's to judge
            owners.setdefault(labels.get(SESSION_LABEL, ""), labels.get(OWNER_LABEL, ""))
    stale = {sid for sid, owner in owners.items() if sid and not is_kept(sid) and not owner_alive(owner)}
    stale |= set(stale_run_dirs(unless_holding=(UML_STATE_FILE, MACHINE_STATE_FILE, SSH_STATE_FILE)))
    for sid in sorted(stale):
        remove_session(client, sid)
    if stale:
        progress(f"swept what earlier runs left: sessions {', '.join(sorted(stale))}")
    return sorted(stale)


if TYPE_CHECKING:  # mypy holds the class to the contract the registry promises
    _KIND: type[Provider] = DindProvider
