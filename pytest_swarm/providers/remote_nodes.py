"""Hosts reached over ssh, and the swarm on them (shared by the ssh and machine providers).

Each host is checked (``remote_access.prepare_host``), its engine reached through its ssh
connection's socket forward, and its hostname checked to be the node name it is listed under.
Then the swarm: formed on the manager (the first host) when no host is in one; else the
manager's swarm is used, and a host in none joins it. Node labels are added, images the stack
needs copied to each engine that lacks them, testinfra runs over the same connections.

Every change is written to the run's record first (``remote_state``); ``down`` and a later
sweep take back exactly what it lists.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import docker

from .. import images
from ..capabilities import probe_capabilities
from ..cluster import Cluster, Node
from ..errors import ProvisioningError
from .base import (
    Engine,
    ProviderRun,
    admit,
    copy_images,
    forget,
    form_swarm,
    join_late,
    leave,
    parallel,
    wait_engine,
    wait_ready,
)
from .engines import engine_client
from .processes import alive, stop_process
from .remote_access import Remote, SshAccess, open_forward, prepare_host
from .remote_state import GWBRIDGE, STACK_LABEL, RemoteState, socket_path, stop_connections, take_back

CONNECT_TIMEOUT = 60.0  # a host's connection up and its engine answering


class RemoteNodes:
    """The swarm on hosts reached over ssh, and what the run did there (its record)."""

    def __init__(self, run: ProviderRun, provider: str, user_config: Path | None = None) -> None:
        """``provider``: the name its record and cluster carry; ``user_config``: ``ssh -F``'s file."""
        settings = run.settings
        self.provider = provider
        self.session = run.session
        self.settings = settings
        self.progress = run.progress
        self.timeout = settings.timeout
        # labels the user gave name hosts that must exist; the defaults (the lesson's) need not
        self.labels_given = settings.sources.get("node_labels", "default") != "default"
        self.state = RemoteState(self.session.id)
        self.access = SshAccess(self.session.run_dir, user_config)
        self.user_config = user_config
        self.remotes: dict[str, Remote] = {}
        self.manager = ""
        self.cluster: Cluster | None = None
        self._engines: dict[str, Engine] = {}
        self._infos: dict[str, dict[str, object]] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._sudo: dict[str, bool] = {}
        self._images: set[str] = set()

    # -- places ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._engines)

    def socket_url(self, name: str) -> str:
        return f"unix://{socket_path(self.session.id, name)}"

    def address(self, name: str) -> str:
        """Where the test runner reaches the node: the host as listed."""
        return self.remotes[name].host

    def host_spec(self, name: str) -> str:
        return self.access.host_spec(self.remotes[name], self._sudo.get(name, False))

    def keep(self) -> dict[str, str]:
        return {
            "provider": self.provider,
            "nodes": ",".join(self._engines),
            "DOCKER_HOST": self.socket_url(self.manager),
        }

    # -- the record ----------------------------------------------------------------------------
    def start(self, manager: str) -> None:
        """The run folder, the record and the run's ssh config, before any host is reached."""
        if self.manager:
            return
        self.manager = manager
        self.session.make_run_dir()
        self.state.write(
            {
                "provider": self.provider,
                "session": self.session.id,
                "owner": self.session.owner,
                "manager": manager,
                "user_config": str(self.user_config or ""),
                "hosts": {},
                "formed": False,
                "joined": [],
                "labels": {},
                "stacks_before": [],
            }
        )
        self.access.write_config()

    # -- the cluster ----------------------------------------------------------------------------
    def up(self, remotes: Sequence[Remote], install: Collection[str] = ()) -> Cluster:
        """Reach every host, form or use the swarm, label it (``install``: the hosts where an
        engine may be installed, or the login user given the docker group). The caller calls
        ``down`` on failure."""
        started = time.monotonic()
        self.start(remotes[0].name)
        parallel(lambda remote: self.connect(remote, remote.name in install), list(remotes))
        names = [r.name for r in remotes]
        self._swarm(names)
        wait_ready(self._engines[self.manager].client, names, self.timeout)
        self._label(names)
        return self._cluster_of(names, started)

    def connect(self, remote: Remote, install: bool = False) -> Engine:
        """Check the host, open its connection, reach its engine; checks it is the node named."""
        name = remote.name
        self.remotes[name] = remote
        self.state.host(name, **remote.to_record())
        facts = prepare_host(self.access, remote, install=install, progress=self.progress)
        sock = socket_path(self.session.id, name)
        sock.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        proc = open_forward(self.access, remote, sock, deadline, self.state.recorder(name))
        self._procs[name] = proc
        client = engine_client(self.socket_url(name))

        def ended() -> str:
            if proc.poll() is None:
                return ""
            return f"its ssh connection ended: {(sock.parent / 'ssh.log').read_text(errors='replace')[-300:]}"

        wait_engine(client, name, max(1.0, deadline - time.monotonic()), ended)
        info = client.info()
        if info.get("Name") != name:
            client.close()
            raise ProvisioningError(
                f"{name}: the host at {remote} is called {info.get('Name')!r} (its hostname, which swarm "
                f"names the node by); list it as {info.get('Name')}={str(remote).removesuffix(':22')}, "
                "and use that name in swarm_node_labels"
            )
        address = facts.address or socket.gethostbyname(remote.host)
        had_gwbridge = bool(client.api.networks(names=[GWBRIDGE]))
        self.state.host(name, address=address, sudo=not facts.root and facts.sudo, gwbridge=had_gwbridge)
        self._sudo[name] = not facts.root and facts.sudo
        self._infos[name] = info
        engine = Engine(name, client, address)
        self._engines[name] = engine
        return engine

    def _swarm_of(self, name: str) -> dict[str, object]:
        swarm = self._infos[name].get("Swarm")
        return swarm if isinstance(swarm, dict) else {}

    def _swarm(self, names: Sequence[str]) -> None:
        """Form a swarm on hosts in none; else use the manager's, joining the hosts in none."""
        states = {n: str(self._swarm_of(n).get("LocalNodeState", "")) for n in names}
        manager, workers = self._engines[self.manager], [n for n in names if n != self.manager]
        if all(state == "inactive" for state in states.values()):
            self.state.update(formed=True, joined=workers)  # before: a kill mid-way is swept
            form_swarm(manager, [self._engines[n] for n in workers])
            self.progress(f"swarm formed on the hosts: {self.manager} Leader + {len(workers)} workers")
            return
        seen = ", ".join(f"{n}={s}" for n, s in states.items())
        if states[self.manager] != "active" or not self._swarm_of(self.manager).get("ControlAvailable"):
            raise ProvisioningError(
                f"{self.manager} (the first host listed) is no swarm manager but other hosts are in a "
                f"swarm ({seen}): list a manager of their swarm first, or make them leave it "
                "(docker swarm leave) so the run forms its own"
            )
        known = {raw["ID"] for raw in manager.client.api.nodes()}
        strangers = [
            n for n in workers if states[n] != "inactive" and self._swarm_of(n).get("NodeID") not in known
        ]
        if strangers:
            raise ProvisioningError(
                f"{', '.join(strangers)} are in another swarm than {self.manager}'s ({seen}): list "
                "hosts of one swarm, or make them leave theirs (docker swarm leave)"
            )
        services = manager.client.api.services()
        before = sorted({str((s["Spec"].get("Labels") or {}).get(STACK_LABEL, "")) for s in services} - {""})
        self.state.update(stacks_before=before)
        for name in [n for n in workers if states[n] == "inactive"]:
            self.state.add("joined", name)
            join_late(manager, self._engines[name], "worker", self.timeout)
        self.progress(f"using the swarm {self.manager} manages ({seen}); what the run adds goes at the end")

    def _label(self, names: Sequence[str]) -> None:
        """Add the labels the settings ask for that a node lacks (recorded first, as they were)."""
        client = self._engines[self.manager].client
        unknown = sorted(n for n in self.settings.node_labels if n != "*" and n not in names)
        if unknown and self.labels_given:
            raise ProvisioningError(
                f"swarm_node_labels names {', '.join(unknown)}, not a listed host ({', '.join(names)})"
            )
        raw = {Node(n).name: n for n in client.api.nodes()}
        for name in names:
            wanted = self.settings.labels_for(name, self.settings.node_labels)
            node = raw[name]
            spec = dict(node["Spec"])
            labels = dict(spec.get("Labels") or {})
            changed = {k: labels.get(k) for k, v in wanted.items() if labels.get(k) != v}
            if not changed:
                continue
            self.state.label(name, changed)
            spec["Labels"] = {**labels, **wanted}
            client.api.update_node(node["ID"], node["Version"]["Index"], spec)

    def _cluster_of(self, names: Sequence[str], started: float) -> Cluster:
        self.cluster = Cluster(
            provider=self.provider,
            client=self._engines[self.manager].client,
            manager_url=self.socket_url(self.manager),
            addresses={n: self.address(n) for n in names},
            engines={n: self._engines[n].client for n in names},
        )
        self.cluster.capabilities = probe_capabilities(self, list(names))
        self.cluster.seconds_to_ready = time.monotonic() - started
        return self.cluster

    def attach(self, names: Sequence[str]) -> Cluster:
        """Reach the hosts of a kept cluster again, over their connection if it still runs."""
        started = time.monotonic()
        record = self.state.read()
        if not record:
            raise ProvisioningError(f"kept cluster {self.session.id} has no record of its hosts")
        self.manager = str(record["manager"])
        for name in names:
            host = record["hosts"][name]
            self.remotes[name] = Remote.from_record(name, host)
            self._sudo[name] = bool(host.get("sudo"))
            sock = socket_path(self.session.id, name)
            if not (alive(host.get("ssh_pid"), host.get("ssh_start")) and sock.exists()):
                open_forward(
                    self.access, self.remotes[name], sock, time.monotonic() + 60, self.state.recorder(name)
                )
            client = engine_client(self.socket_url(name))
            wait_engine(client, name, CONNECT_TIMEOUT, lambda: "")
            self._engines[name] = Engine(name, client, str(host.get("address", "")))
        wait_ready(self._engines[self.manager].client, names, self.timeout)
        return self._cluster_of(names, started)

    # -- nodes during a run -----------------------------------------------------------------------
    def add(self, remote: Remote, role: str, labels: Mapping[str, str] | None, install: bool = False) -> None:
        """A new host joins (drained until it has the ingress network), with the run's images."""
        if self.cluster is None:
            raise ProvisioningError("add_node needs a running cluster (call up() first)")
        engine = self.connect(remote, install)
        self.load_images(sorted(self._images))
        self.state.add("joined", remote.name)
        manager = self._engines[self.manager]
        join_late(manager, engine, role, self.timeout)
        wait_ready(manager.client, self.names, self.timeout)
        if labels:
            self._label_one(remote.name, labels)
        admit(self.cluster, remote.name, engine, probe_capabilities(self, [remote.name]))
        self.cluster.addresses[remote.name] = self.address(remote.name)

    def _label_one(self, name: str, labels: Mapping[str, str]) -> None:
        client = self._engines[self.manager].client
        node = next(raw for raw in client.api.nodes() if Node(raw).name == name)
        spec = dict(node["Spec"])
        current = dict(spec.get("Labels") or {})
        self.state.label(name, {k: current.get(k) for k in labels})
        spec["Labels"] = {**current, **labels}
        client.api.update_node(node["ID"], node["Version"]["Index"], spec)

    def remove(self, name: str) -> None:
        """The host leaves the swarm and the run's tables; its connection ends."""
        manager = self._engines[self.manager].client
        engine = self._engines.pop(name)
        node_id = leave(manager, engine)
        forget(manager, self.cluster, name, node_id)
        engine.client.close()
        self.disconnect(name)
        record = self.state.read()
        self.state.update(
            joined=[n for n in record.get("joined", []) if n != name],
            hosts={n: h for n, h in record.get("hosts", {}).items() if n != name},
        )

    def disconnect(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            stop_process(proc)

    def reconnect(self, remote: Remote) -> None:
        """Reach a host again after it restarted (its address may have changed)."""
        self.disconnect(remote.name)
        old = self._engines.pop(remote.name, None)
        if old is not None:
            old.client.close()
        engine = self.connect(remote)
        if self.cluster is not None:
            self.cluster.engines[remote.name] = engine.client
            self.cluster.addresses[remote.name] = self.address(remote.name)
        wait_ready(self._engines[self.manager].client, self.names, self.timeout)

    def load_images(self, refs: Sequence[str]) -> None:
        """Copy what the stack needs to each engine lacking it: one ``docker save``, loaded over
        each host's ssh connection in parallel."""
        self._images.update(refs)
        started = time.monotonic()

        def load(node: str, tar: Path) -> None:
            client = engine_client(self.socket_url(node), timeout=1800)  # a slow link: minutes
            try:
                images.load_image_file(client, tar)
            finally:
                client.close()

        clients = {n: e.client for n, e in self._engines.items()}
        copied, nodes = copy_images(clients, refs, self.session.run_dir / "images.tar", load)
        if copied:
            self.progress(
                f"images copied over ssh to {', '.join(nodes)} in {time.monotonic() - started:.1f} s: "
                f"{', '.join(copied)}"
            )

    # -- the end ---------------------------------------------------------------------------------
    def down(self, skip: Sequence[str] = ()) -> list[str]:
        """Take back what the record lists (``skip``: hosts that go away whole), end every
        connection; returns what stays. Idempotent."""
        record = self.state.read()
        engines: dict[str, docker.DockerClient] = {n: e.client for n, e in self._engines.items()}
        try:
            problems = take_back(record, engines, self.socket_url(self.manager), skip) if record else []
        finally:
            for client in engines.values():
                client.close()
            self._engines.clear()
            for name in list(self._procs):
                self.disconnect(name)
            stop_connections(record)
        return problems
