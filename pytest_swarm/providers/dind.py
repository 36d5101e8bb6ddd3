"""dind: swarm nodes as containers of the local Docker engine, each running its own dockerd.

``--privileged`` fails on kernels whose capability bounding set lacks CAP_SYS_RESOURCE, so a
node gets every other capability, no seccomp/AppArmor confinement, all devices, the host's
cgroup tree and a cgroup parent of its own (its inner containers' cgroups stay apart from the
outer engine's). Each node's API socket lives in a host folder bind-mounted into the node:
the test runner reaches every engine without a TCP port.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker
import docker.errors

from .. import images
from ..capabilities import probe_capabilities
from ..cluster import Cluster
from ..errors import EngineUnreachable, ProvisioningError, SwarmError
from ..ownership import (
    MACHINE_STATE_FILE,
    OWNER_LABEL,
    SESSION_LABEL,
    UML_STATE_FILE,
    Session,
    cgroup_dirs,
    is_kept,
    owner_alive,
    remove_cgroup_tree,
    remove_run_dir,
    stale_run_dirs,
)
from .base import (
    TRANSIENT,
    Engine,
    admit,
    apply_node_labels,
    copy_images,
    engine_client,
    forget,
    form_swarm,
    join_late,
    leave,
    new_node_name,
    parallel,
    wait_engine,
    wait_ready,
)

NODE_RECIPE = Path(__file__).parent / "dind_node"
NODE_REPO = "pytest-swarm/node"
NODE_MOUNT = "/pytest-swarm"
ENGINE_TIMEOUT = 60.0


def local_engine() -> docker.DockerClient:
    """The engine the nodes run on (DOCKER_HOST or the default socket)."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, *TRANSIENT) as exc:
        raise EngineUnreachable(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} "
            f"({type(exc).__name__}); start dockerd (e.g. apt-get install docker.io && dockerd &) "
            "or set DOCKER_HOST"
        ) from exc
    return client


def node_image(client: docker.DockerClient, progress: images.Progress) -> str:
    """The node image, built when missing or when its recipe changed (the tag is its digest)."""
    ref = f"{NODE_REPO}:{images.recipe_digest(NODE_RECIPE)}"
    with images.file_lock("node-image"):
        if not images.image_exists(client, ref):
            progress(f"building the node image {ref} (Debian + docker.io, ~1 min, once)")
            images.build_image(client, NODE_RECIPE, [ref], what="the dind node image", progress=progress)
    return ref


class DindProvider:
    """Nodes master-1, worker-1..N as containers on a network of the session's own."""

    name = "dind"
    joins_networks_first = True

    def __init__(
        self,
        session: Session,
        *,
        workers: int,
        node_labels: Mapping[str, Mapping[str, str]],
        engine_labels: Mapping[str, Mapping[str, str]],
        timeout: float,
        progress: images.Progress,
        client: docker.DockerClient | None = None,
    ) -> None:
        self.session = session
        self.workers = workers
        self.node_labels = node_labels
        self.engine_labels = engine_labels
        self.timeout = timeout
        self.progress = progress
        self.client = client or local_engine()
        self.network = session.prefix
        self._engines: dict[str, Engine] = {}
        self._images: set[str] = set()  # every image loaded so far: a new node gets them too
        self._image = ""
        self.cluster: Cluster | None = None

    # -- names and places -------------------------------------------------------------------
    def _container_name(self, node: str) -> str:
        return f"{self.session.prefix}-{node}"

    def _node_dir(self, node: str) -> Path:
        return self.session.run_dir / node

    def socket_url(self, node: str) -> str:
        return f"unix://{self._node_dir(node) / 'docker.sock'}"

    def _container(self, node: str) -> docker.models.containers.Container:
        return self.client.containers.get(self._container_name(node))

    def address(self, node: str) -> str:
        attrs = self.client.api.inspect_container(self._container_name(node))
        return str(attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"])

    def host_spec(self, node: str) -> str:
        """A testinfra backend URL that runs commands inside the node."""
        return f"docker://{self._container_name(node)}"

    def dockerd_log_tail(self, node: str, lines: int = 15) -> str:
        try:
            text = (self._node_dir(node) / "dockerd.log").read_text(errors="replace")
        except OSError:
            return f"({node}: no dockerd log)"
        return "\n".join(f"  {node}| {line}" for line in text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------
    def up(self) -> Cluster:
        """Start the nodes, form the swarm, label it; on any failure (or Ctrl-C) remove it all."""
        started = time.monotonic()
        try:
            sweep(self.client, self.progress)
            self._image = node_image(self.client, self.progress)
            self.session.make_run_dir()
            self.client.networks.create(self.network, driver="bridge", labels=self.session.labels)
            names = ["master-1", *(f"worker-{i}" for i in range(1, self.workers + 1))]
            parallel(self._start_node, names)
            self.progress(f"{len(names)} node engines up ({time.monotonic() - started:.1f} s)")
            form_swarm(self._engines["master-1"], [self._engines[n] for n in names[1:]])
            self._wait_ready(names)
            apply_node_labels(self._engines["master-1"].client, self.node_labels)
            self.progress(f"swarm formed: master-1 Leader + {self.workers} workers")
            manager = self._engines["master-1"]
            self.cluster = Cluster(
                provider=self.name,
                client=manager.client,
                manager_url=self.socket_url("master-1"),
                addresses={n: self._engines[n].address for n in names},
                engines={n: self._engines[n].client for n in names},
            )
            self.cluster.capabilities = probe_capabilities(self, names)
            self.cluster.seconds_to_ready = time.monotonic() - started
            return self.cluster
        except BaseException:
            self.down()
            raise

    def attach(self, nodes: Sequence[str]) -> Cluster:
        """Reach the nodes of a kept cluster again (``--swarm-reuse``)."""
        started = time.monotonic()
        self._image = node_image(self.client, self.progress)  # for a node added later
        for node in nodes:
            client = engine_client(self.socket_url(node))
            self._engines[node] = Engine(node, client, self.address(node))
        manager = self._engines["master-1"]
        self._wait_ready(list(nodes))
        self.cluster = Cluster(
            provider=self.name,
            client=manager.client,
            manager_url=self.socket_url("master-1"),
            addresses={n: e.address for n, e in self._engines.items()},
            engines={n: e.client for n, e in self._engines.items()},
        )
        self.cluster.capabilities = probe_capabilities(self, list(nodes))
        self.cluster.seconds_to_ready = time.monotonic() - started
        return self.cluster

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
        created = api.create_container(
            self._image,
            flags,
            name=self._container_name(node),
            hostname=node,
            labels={**self.session.labels, "io.pytest-swarm.node": node},
            environment={"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"},
            host_config=host_config,
        )
        api.start(created["Id"])
        container_id = str(created["Id"])
        client = engine_client(self.socket_url(node))
        wait_engine(client, node, ENGINE_TIMEOUT, lambda: self._why_dead(container_id, node))
        engine = Engine(node, client, self.address(node))
        self._engines[node] = engine
        return engine

    def _engine_labels(self, node: str) -> dict[str, str]:
        return {**self.engine_labels.get("*", {}), **self.engine_labels.get(node, {})}

    def _why_dead(self, container_id: str, node: str) -> str:
        state = self.client.api.inspect_container(container_id)["State"]
        if state["Running"]:
            return ""
        return f"node container exited ({state['ExitCode']}); its dockerd log:\n{self.dockerd_log_tail(node)}"

    def _wait_ready(self, names: Sequence[str]) -> None:
        manager = self._engines["master-1"].client
        hint = lambda late: "\n".join(self.dockerd_log_tail(n) for n in late)  # noqa: E731
        wait_ready(manager, names, self.timeout, hint)

    # -- nodes during a run ------------------------------------------------------------------
    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str:
        """Start a new node (worker-N+1 or master-N+1) and join it; returns its name."""
        if self.cluster is None:
            raise ProvisioningError("add_node needs a running cluster (call up() first)")
        name = new_node_name(role, self._engines)
        try:
            engine = self._start_node(name)
            self.load_images(sorted(self._images))  # what the stacks run, before tasks land there
            manager = self._engines["master-1"]
            join_late(manager, engine, role, self.timeout)
            self._wait_ready(list(self._engines))
            if labels:
                apply_node_labels(manager.client, {name: labels})
            admit(self.cluster, name, engine, probe_capabilities(self, [name]))
        except BaseException:
            try:
                self._forget(name)  # a node that did not join leaves nothing behind
            except (docker.errors.DockerException, SwarmError) as exc:
                self.progress(f"{name} did not join, and removing it failed too: {exc}")
            raise
        self.progress(f"node {name} joined as {role}")
        return name

    def remove_node(self, name: str) -> None:
        """Leave the swarm, remove the node from the node list, and remove its container."""
        if name == "master-1":
            raise ProvisioningError("master-1 is the manager of this cluster and can't be removed")
        manager = self._engines["master-1"].client
        node_id = leave(manager, self._engines.pop(name))
        self._remove_container(name)
        forget(manager, self.cluster, name, node_id)

    def _forget(self, name: str) -> None:
        """Undo what a failed ``add_node`` made of ``name``: its swarm entry and its container."""
        manager = self._engines["master-1"].client
        engine = self._engines.pop(name, None)
        node_id = leave(manager, engine) if engine is not None else None
        self._remove_container(name)
        forget(manager, self.cluster, name, node_id)

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

    def keep(self) -> dict[str, str]:
        """What a later run needs to reach this cluster again."""
        return {
            "provider": self.name,
            "nodes": ",".join(self._engines),
            "DOCKER_HOST": self.socket_url("master-1"),
        }

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
        owners.setdefault(labels.get(SESSION_LABEL, ""), labels.get(OWNER_LABEL, ""))
    stale = {sid for sid, owner in owners.items() if sid and not is_kept(sid) and not owner_alive(owner)}
    stale |= set(stale_run_dirs(unless_holding=(UML_STATE_FILE, MACHINE_STATE_FILE)))
    for sid in sorted(stale):
        remove_session(client, sid)
    if stale:
        progress(f"swept what earlier runs left: sessions {', '.join(sorted(stale))}")
    return sorted(stale)
