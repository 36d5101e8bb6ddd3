"""attach: an existing swarm, reached through DOCKER_HOST (TLS from DOCKER_TLS_VERIFY and
DOCKER_CERT_PATH) or a docker context.

The swarm and its nodes belong to someone else: node names and addresses come from the swarm
itself (Description.Hostname, Status.Addr), a node's own engine and a testinfra host only where
``swarm_attach_nodes`` names them. Nothing is added to, removed from, stopped or started in the
swarm; images must already be on the nodes or in a registry they pull from; ``down()`` takes back
only what this run put there (node labels it added, probe containers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import docker
import docker.errors
import testinfra

from .. import images
from ..capabilities import IPVS, IPVS_PROBE
from ..cluster import Cluster, Node
from ..commands import TLS_CERT_PATHS
from ..errors import EngineUnreachable, ProvisioningError
from ..ownership import SESSION_LABEL, remove_run_dir
from .base import FixedNodes, LocalEngine, Provider, ProviderRun, wait_ready
from .engines import TRANSIENT, Endpoint, endpoint_of, engine_client, env_tls

FIXED_NODES = "the attach provider cannot add nodes to an existing swarm"
PROBE_TRIES = 3  # images tried for the engine-side IPVS probe (one without a shell is skipped)


class AttachProvider(FixedNodes):
    """An existing swarm: read, deployed to, probed; never resized or removed."""

    name: ClassVar[str] = "attach"
    # someone else's swarm: nothing but the stacks goes on it (and its nodes get no image copied)
    owns_swarm: ClassVar[bool] = False  # the lifecycle removes the stacks it deployed; the swarm stays
    fixed_nodes_reason: ClassVar[str] = FIXED_NODES  # add/remove/stop/start_node refuse (FixedNodes)
    joins_networks_first: ClassVar[bool] = False
    preloads_images: ClassVar[bool] = True  # checked on the nodes before any suite runs
    gives_labels: ClassVar[tuple[str, ...]] = ()  # the swarm's labels are its own: a finding
    # no second cluster to attach to: the disruptive suite is skipped with fixed_nodes_reason
    second_cluster_cost: ClassVar[str] = "a second swarm to attach to, which the run can't make"

    def __init__(self, run: ProviderRun, *, environ: Mapping[str, str] | None = None) -> None:
        """``environ`` (default: the process's) is where DOCKER_HOST and the TLS settings are read."""
        settings = run.settings
        self.session = run.session
        self.context = settings.context
        self.overrides = settings.attach_nodes
        self.node_labels = settings.node_labels
        # labels the user gave name nodes that must exist; the defaults (the lesson's) need not
        self.labels_given = settings.sources.get("node_labels", "default") != "default"
        self.timeout = settings.timeout
        self.progress = run.progress
        self.preload = list(run.preload)
        self.environ = dict(os.environ if environ is None else environ)
        self.endpoint: Endpoint | None = None
        self.client: docker.DockerClient | None = None
        self.cluster: Cluster | None = None
        self._addresses: dict[str, str] = {}
        self._engines: dict[str, docker.DockerClient] = {}
        self._added_labels: dict[str, dict[str, str | None]] = {}  # node -> key -> value before
        self.unprobed: dict[str, str] = {}  # node -> why its capabilities are unknown

    # -- reaching the swarm -----------------------------------------------------------------
    def _manager(self) -> tuple[docker.DockerClient, dict[str, object]]:
        endpoint = endpoint_of(self.context, self.environ)
        self.endpoint = endpoint
        try:
            client = engine_client(endpoint.url, endpoint.tls)
            info = client.info()
        except (docker.errors.DockerException, *TRANSIENT) as exc:
            raise EngineUnreachable(
                f"attach: no Docker engine answers at {endpoint.url} ({endpoint.source}): {exc}; "
                "set DOCKER_HOST (with DOCKER_TLS_VERIFY/DOCKER_CERT_PATH for TLS) or --swarm-context "
                "to a manager of the swarm"
            ) from exc
        swarm = info.get("Swarm") or {}
        state = swarm.get("LocalNodeState", "")
        if state != "active":
            client.close()
            raise ProvisioningError(
                f"attach: the engine at {endpoint.url} ({endpoint.source}) is in no swarm "
                f"(LocalNodeState={state or 'unknown'}); run `docker swarm init` there, or point "
                "DOCKER_HOST / --swarm-context at a manager of an existing swarm"
            )
        if not swarm.get("ControlAvailable"):
            managers = (
                ", ".join(str(m.get("Addr", "")) for m in swarm.get("RemoteManagers") or []) or "unknown"
            )
            client.close()
            raise ProvisioningError(
                f"attach: the engine at {endpoint.url} ({endpoint.source}) is a swarm worker "
                f"({info.get('Name', '?')}), not a manager; swarm commands run only on managers: point "
                f"DOCKER_HOST / --swarm-context at a manager (managers at {managers})"
            )
        return client, info

    def up(self) -> Cluster:
        """Reach the manager, read the nodes, reach the engines named, check labels and images."""
        started = time.monotonic()
        try:
            return self._up(started)
        except BaseException:
            self.down()
            raise

    def _up(self, started: float) -> Cluster:
        client, info = self._manager()
        self.client = client
        swarm = info.get("Swarm") or {}
        raw_nodes = list(client.api.nodes())
        nodes = {Node(raw).name: Node(raw) for raw in raw_nodes}
        unknown = sorted(set(self.overrides) - set(nodes))
        if unknown:
            raise ProvisioningError(
                f"swarm_attach_nodes names {', '.join(unknown)}, not in the swarm "
                f"({', '.join(sorted(nodes))}); use the names `docker node ls` shows"
            )
        manager_id = str(swarm.get("NodeID", "") if isinstance(swarm, Mapping) else "")
        for name, node in sorted(nodes.items()):
            given = self.overrides.get(name, {})
            self._addresses[name] = given.get("address") or node_address(node)
            if "engine" in given:
                self._engines[name] = self._node_engine(name, node.id, given["engine"])
            elif node.id == manager_id:
                self._engines[name] = client
        names = sorted(nodes)
        wait_ready(client, names, self.timeout)
        self._label()
        self.check_images(self.preload)
        assert self.endpoint is not None
        if self.endpoint.cert_path:
            TLS_CERT_PATHS[self.endpoint.url] = self.endpoint.cert_path
        self.cluster = Cluster(
            provider=self.name,
            client=client,
            manager_url=self.endpoint.url,
            addresses=dict(self._addresses),
            engines=dict(self._engines),
        )
        self.cluster.capabilities = self._probe(names)
        self.cluster.unprobed = dict(self.unprobed)
        self.cluster.seconds_to_ready = time.monotonic() - started
        unreached = [n for n in names if n not in self._engines]
        self.progress(
            f"attached to the swarm at {self.endpoint.url} ({self.endpoint.source}): {len(names)} nodes"
            + (f"; no engine given for {', '.join(unreached)}" if unreached else "")
        )
        return self.cluster

    def _node_engine(self, name: str, node_id: str, url: str) -> docker.DockerClient:
        """A node's own engine, checked to be that node (a swapped socket would mislead every test)."""
        # a node's TCP engine takes the TLS the environment gives the manager's
        tls = env_tls(self.environ) if url.startswith("tcp://") else None
        try:
            engine = engine_client(url, tls)
            answered = str((engine.info().get("Swarm") or {}).get("NodeID", ""))
        except (docker.errors.DockerException, *TRANSIENT) as exc:
            raise ProvisioningError(
                f"swarm_attach_nodes {name}:engine={url}: no engine answers there ({exc}); "
                "fix the URL or leave the node's engine out"
            ) from exc
        if answered != node_id:
            engine.close()
            raise ProvisioningError(
                f"swarm_attach_nodes {name}:engine={url} answers as swarm node {answered or '(none)'}, "
                f"not {name} ({node_id}); give that node's own engine"
            )
        return engine

    def attach(self, nodes: Sequence[str]) -> Cluster:
        """A kept record names an attached swarm: attaching again is the same as ``up``."""
        return self.up()

    # -- labels ---------------------------------------------------------------------------------
    def _label(self) -> None:
        """Add the labels the settings ask for that a node lacks; ``down`` takes them back."""
        assert self.client is not None
        raw = {Node(n).name: n for n in self.client.api.nodes()}
        for name, wanted in self.node_labels.items():
            if name == "*" or not wanted:
                continue
            if name not in raw:
                if self.labels_given:
                    raise ProvisioningError(
                        f"swarm_node_labels names node {name!r}, which is not in the swarm "
                        f"({', '.join(sorted(raw))})"
                    )
                self.progress(f"attach: no node {name} in this swarm; its default labels are not applied")
                continue
            node = raw[name]
            spec = dict(node["Spec"])
            labels = dict(spec.get("Labels") or {})
            changed = {k: labels.get(k) for k, v in wanted.items() if labels.get(k) != v}
            if not changed:
                continue
            spec["Labels"] = {**labels, **wanted}
            self.client.api.update_node(node["ID"], node["Version"]["Index"], spec)
            self._added_labels[name] = changed
            self.progress(
                f"attach: labelled {name} with {', '.join(sorted(changed))} (taken back at the end)"
            )

    def _unlabel(self) -> None:
        if self.client is None or not self._added_labels:
            return
        raw = {Node(n).name: n for n in self.client.api.nodes()}
        for name, before in self._added_labels.items():
            if name not in raw:
                continue
            spec = dict(raw[name]["Spec"])
            labels = dict(spec.get("Labels") or {})
            for key, value in before.items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            spec["Labels"] = labels
            self.client.api.update_node(raw[name]["ID"], raw[name]["Version"]["Index"], spec)
        self._added_labels.clear()

    # -- images ---------------------------------------------------------------------------------
    def check_images(self, refs: Sequence[str]) -> None:
        """Every image on every node, or in a registry the manager can read: else name what lacks.

        Raises:
            ProvisioningError: one line per image and node that lacks it.
        """
        assert self.client is not None
        wanted = sorted(set(refs))
        if not wanted:
            return
        nodes = sorted(self._addresses)
        in_registry: dict[str, str] = {}  # ref -> "" when the registry has it, else why not

        def registry(ref: str) -> str:
            if ref not in in_registry:
                try:
                    self.client.api.inspect_distribution(ref)  # type: ignore[union-attr]
                    in_registry[ref] = ""
                except docker.errors.APIError as exc:
                    in_registry[ref] = str(exc.explanation or exc)
            return in_registry[ref]

        lacking: list[str] = []
        for ref in wanted:
            for node in nodes:
                engine = self._engines.get(node)
                if engine is not None and images.image_exists(engine, ref):
                    continue
                why = registry(ref)
                if not why:
                    continue  # the node pulls it when a task starts there
                where = "not on its engine" if engine is not None else "its engine is not reachable"
                lacking.append(f"  {ref} on {node} ({where}; not in a registry: {why})")
        if lacking:
            raise ProvisioningError(
                "attach: images the stack needs are missing:\n"
                + "\n".join(lacking)
                + "\nput each on its node (docker save REF | docker -H <node engine> load) or push it to "
                "a registry the nodes pull from; the attach provider does not copy images"
            )

    def load_images(self, refs: Sequence[str]) -> None:
        """Nothing is copied to someone else's nodes: only checked (see ``check_images``)."""
        self.check_images(refs)

    # -- capabilities ---------------------------------------------------------------------------
    def _probe(self, names: Sequence[str]) -> dict[str, dict[str, bool]]:
        found: dict[str, dict[str, bool]] = {}
        for name in names:
            spec = self.host_spec(name)
            if spec:
                found[name] = {IPVS: testinfra.get_host(spec).run(IPVS_PROBE).rc == 0}
            elif name in self._engines:
                present, why = probe_ipvs_on_engine(self._engines[name], self.session.labels, self.preload)
                found[name] = {IPVS: bool(present)}
                if present is None:
                    self.unprobed[name] = why
            else:
                found[name] = {IPVS: False}
                self.unprobed[name] = (
                    f"{name}'s engine and host are unknown (give swarm_attach_nodes {name}:engine=... "
                    f"or {name}:host=...)"
                )
        return found

    # -- places -------------------------------------------------------------------------------
    def address(self, node: str) -> str:
        return self._addresses[node]

    def host_spec(self, node: str) -> str:
        """The testinfra host given for ``node`` (``swarm_attach_nodes NODE:host=``), else ""."""
        return str(self.overrides.get(node, {}).get("host", ""))

    def keep(self) -> dict[str, str]:
        return {
            "provider": self.name,
            "nodes": ",".join(sorted(self._addresses)),
            "DOCKER_HOST": self.endpoint.url if self.endpoint else "",
        }

    def down(self) -> None:
        """Take back the labels this run added, remove the configs and secrets it made, and
        close the clients; the swarm stays."""
        try:
            self._unlabel()
            self._remove_made_externals()
        finally:
            for engine in {id(e): e for e in self._engines.values()}.values():
                engine.close()
            self._engines.clear()
            if self.client is not None:
                self.client.close()
                self.client = None

    def _remove_made_externals(self) -> None:
        """The configs and secrets this run made for a stack's ``external`` ones, found by the
        run's session label (the run's stacks are gone by now)."""
        if self.client is None:
            return
        mine = {"label": f"{SESSION_LABEL}={self.session.id}"}
        for item in [*self.client.configs.list(filters=mine), *self.client.secrets.list(filters=mine)]:
            try:
                item.remove()
            except docker.errors.APIError as exc:
                self.progress(f"attach: {item.name} (made by this run) not removed: {exc}")

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """The swarm is someone else's: only the run's record goes."""
        remove_run_dir(session_id)
        return []

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Nothing of an attached swarm is swept (a dead run's folder goes with dind's sweep)."""
        return []


def node_address(node: Node) -> str:
    """Status.Addr; a manager may report 0.0.0.0 there, then its ManagerStatus.Addr host part."""
    addr = node.addr
    if addr in ("", "0.0.0.0"):
        manager_addr = str(node.attrs.get("ManagerStatus", {}).get("Addr", ""))
        addr = manager_addr.rpartition(":")[0] or addr
    return addr


def probe_ipvs_on_engine(
    engine: docker.DockerClient, labels: Mapping[str, str], preferred: Sequence[str]
) -> tuple[bool | None, str]:
    """Does a fresh network namespace on the node's kernel have IPVS? (True/False, or None: unknown).

    A short-lived container with no network, from an image already on the node (the stack's
    images first), runs the same check as the host probe (without modprobe: it is not privileged).
    """
    present = [ref for ref in preferred if images.image_exists(engine, ref)]
    present += [t for img in engine.api.images() for t in (img.get("RepoTags") or []) if t != "<none>:<none>"]
    candidates = list(dict.fromkeys(present))[:PROBE_TRIES]
    if not candidates:
        return None, "no image on the node to run the IPVS probe in"
    for ref in candidates:
        container_id = ""
        try:
            created = engine.api.create_container(
                ref,
                ["test -d /proc/sys/net/ipv4/vs"],
                entrypoint=["sh", "-c"],
                labels=dict(labels),
                host_config=engine.api.create_host_config(network_mode="none"),
            )
            container_id = str(created["Id"])
            engine.api.start(container_id)
            code = int(engine.api.wait(container_id, timeout=60)["StatusCode"])
        except (docker.errors.APIError, *TRANSIENT):
            continue  # e.g. no sh in this image
        finally:
            if container_id:
                try:
                    engine.api.remove_container(container_id, force=True)
                except docker.errors.APIError:
                    pass  # already gone
        if code in (0, 1):
            return code == 0, ""
    return None, f"the IPVS probe could not run in {', '.join(candidates)} (no sh?)"


if TYPE_CHECKING:  # mypy holds the class to the contract the registry promises
    _KIND: type[Provider] = AttachProvider
