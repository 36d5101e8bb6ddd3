"""uml: swarm nodes as User-Mode Linux kernels, each with a kernel of its own (IPVS included).

Where the host's kernel lacks what swarm needs (IPVS: the routing mesh, VIPs), every node boots
Debian's UML kernel as an ordinary process. The nodes share one cached root disk (built with
debootstrap from ``uml_node/``) and one cached disk holding the engine data with the run's images
already loaded; each node writes to copy-on-write files of its own in the run folder.

Network: one host bridge per session (``psw<id>``), one tap per node (``psw<id>n<k>``), a private
/24 no host route uses, and one iptables rule letting the nodes talk across the bridge (the host
engine sets FORWARD to DROP). Nothing is NAT-ed or routed out.

Engine API: dockerd in a node listens on its unix socket only. The host reaches it through ssh
(the cluster's own key): one ssh connection per node forwards ``<run>/<node>/docker.sock`` to the
node's socket and is the control master every testinfra command multiplexes over. So the engine
never listens on a network port, the API is authenticated and encrypted, and ``manager_url`` is a
``unix://`` URL like dind's (the docker CLI needs no TLS settings).

Everything a session creates is recorded in ``<run>/uml.json`` before it is created; ``down()``
and a later run's sweep remove exactly what is recorded (processes by pid and start time, links
and the rule by name), never anything found by a pattern.

The parts, by concern: uml_host (preflight), uml_disk (disks and their cache), uml_kernel (kernel
processes), uml_net (bridge, taps, iptables, subnets), uml_ssh (key, config, socket forward),
uml_state (the record, removal by it, the sweep); this module is the provider.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import docker

from .. import images
from ..cluster import Cluster
from ..commands import run
from ..errors import EngineUnreachable, ProvisioningError
from ..ownership import process_start_time
from ..waiting import Poll, wait_for
from .base import Engine, LocalEngine, Provider, ProviderRun, copy_images, wait_engine
from .engines import engine_client
from .local_nodes import LocalNodes
from .processes import alive, forward_socket, stop_recorded
from .uml_disk import base_disk, images_disk, write_config_disk
from .uml_host import missing_requirements
from .uml_kernel import console_tail, kernel_argv, kill_uml, node_memory, start_kernel
from .uml_net import FIRST_HOST, delete_link, free_subnet, ip, link_exists
from .uml_ssh import forward_argv, host_spec, make_key, write_ssh_config
from .uml_state import STATE_FILE, live_states, read_state, remove_session, sweep, write_state

BOOT_TIMEOUT = 180.0  # kernel + sshd + dockerd, three nodes booting on two cores
MEMORY_MB = 1200  # each node's kernel memory
REMOVAL_ATTEMPTS = 4  # a Ctrl-C during down() restarts the removal; this many in a row give it up


class UmlProvider(LocalNodes):
    """Nodes master-1, worker-1..N as UML kernels on a host bridge of the session's own."""

    name: ClassVar[str] = "uml"
    # A task starts in about 13 s on a UML node: joining 3 nodes one by one took 39 s before
    # every deploy, more than the 30 s stall it avoids on some of them.
    joins_networks_first: ClassVar[bool] = False
    # Loading images into a booted node over its tap takes minutes: they are baked into a disk.
    preloads_images: ClassVar[bool] = True
    node_kind: ClassVar[str] = "UML node"
    second_cluster_cost: ClassVar[str] = (
        "as many UML kernels again (about 250 MB of memory each, a disk with the stack's images) "
        "beside the run's own: 2 cores hold one reddit stack on UML nodes, not two"
    )

    def __init__(self, run: ProviderRun) -> None:
        super().__init__(run)
        self.client: docker.DockerClient | None = None  # the local engine, once asked for
        self.memory_mb = MEMORY_MB
        self.bridge = f"psw{self.session.id}"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._state: dict[str, Any] = {}
        self._guard = threading.Lock()  # state changes, and no new process once down() began
        self._closing = False

    # -- names and places -------------------------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.run_dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.run_dir / "ssh_config"

    def _node(self, node: str) -> dict[str, Any]:
        try:
            record: dict[str, Any] = self._state["nodes"][node]
        except KeyError:
            raise ProvisioningError(f"no UML node named {node!r} in cluster {self.session.id}") from None
        return record

    def _taken_names(self) -> Collection[str]:
        return self._state["nodes"]  # type: ignore[no-any-return]

    def address(self, node: str) -> str:
        return str(self._node(node)["address"])

    def host_spec(self, node: str) -> str:
        """A testinfra backend URL: ssh with the cluster's key, over the node's control master."""
        return host_spec(self.address(node), self.ssh_config, self.key_file)

    def log_tail(self, node: str, lines: int = 15) -> str:
        """The end of a node's console (kernel, init and dockerd output)."""
        return console_tail(self._node_dir(node) / "console.log", node, lines)

    def memory(self, node: str) -> dict[str, int]:
        """Host memory a node uses, in bytes (``ram``: its kernel's memory file; ``host``: all)."""
        record = self._node(node)
        return node_memory(record.get("pid"), record.get("start"))

    def _local(self) -> docker.DockerClient | None:
        """The local engine: where preloaded images come from, and whose networks the bridge's
        subnet avoids. Without images to preload, UML nodes need none."""
        if self.client is None:
            try:
                self.client = self.run.local()
            except EngineUnreachable:
                if self.preload:
                    raise
        return self.client

    # -- state -------------------------------------------------------------------------------
    def _save_state(self) -> None:
        write_state(self.session.id, self._state)

    def _record(self, **changes: Any) -> None:
        with self._guard:
            self._state.update(changes)
            self._save_state()

    def _record_node(self, node: str, **changes: Any) -> None:
        with self._guard:
            self._state["nodes"].setdefault(node, {}).update(changes)
            self._save_state()

    # -- lifecycle ----------------------------------------------------------------------------
    def _prepare(self) -> float:
        """Disks, the record, the cluster's key, the bridge."""
        reason = missing_requirements()
        if reason:
            raise ProvisioningError(reason)
        sweep(self.progress)
        base = base_disk(self.progress, self.timings)
        data = images_disk(base, self.preload, self._local(), self.progress, self.timings)
        started = time.monotonic()
        self.session.make_run_dir()
        self._state = {
            "session": self.session.id,
            "owner": self.session.owner,
            "base": str(base.image),
            "images": str(data),
            "shim": str(base.shim),
            "memory_mb": self.memory_mb,
            "nodes": {},
        }
        self._save_state()
        make_key(self.key_file, f"pytest-swarm-{self.session.id}")
        self._make_bridge()
        return started

    def attach(self, nodes: Sequence[str]) -> Cluster:
        """Reach the nodes of a kept cluster again (``--swarm-reuse``)."""
        started = time.monotonic()
        state = read_state(self.session.id)
        if state is None:
            raise ProvisioningError(
                f"kept UML cluster {self.session.id} has no {STATE_FILE} in its run folder"
            )
        self._state = state
        for node in nodes:
            record = self._node(node)
            if not alive(record.get("pid"), record.get("start")):
                raise ProvisioningError(f"kept UML node {node} is not running any more")
            if not alive(record.get("ssh_pid"), record.get("ssh_start")):
                self._connect(node, time.monotonic() + 60)
            client = engine_client(self.socket_url(node))
            wait_engine(client, node, 60, lambda node=node: self._why_dead(node))  # type: ignore[misc]
            self._engines[node] = Engine(node, client, self.address(node))
        self._wait_ready(list(nodes))
        return self._cluster_of(list(nodes), started)

    def _make_bridge(self) -> None:
        """The session's bridge on a free /24, and the rule that lets nodes talk across it."""
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        with images.file_lock("uml-network"):  # two sessions must not pick the same /24
            subnet = free_subnet(self._local(), [str(s["subnet"]) for s in live_states() if "subnet" in s])
            gateway = next(subnet.hosts())
            self._record(bridge=self.bridge, subnet=str(subnet), gateway=str(gateway), rule=rule)
            ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
            ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        # The host engine's FORWARD policy is DROP and br_netfilter sends bridged frames through it.
        run(["iptables", "-w", "-I", *rule[:1], "1", *rule[1:]], timeout=30)
        octets = str(subnet.network_address).split(".")
        pattern = f"{octets[0]}.{octets[1]}.{octets[2]}.*"
        write_ssh_config(self.ssh_config, pattern, self.key_file, self.run_dir)

    def _plan_node(self, node: str) -> None:
        """Name a node's tap, address and MAC, and write its configuration archive."""
        index = int(self._state.get("next_index", 0))
        subnet = ipaddress.IPv4Network(self._state["subnet"])
        address = str(subnet.network_address + FIRST_HOST + index)
        sid = self.session.id
        mac = f"02:{sid[0:2]}:{sid[2:4]}:{sid[4:6]}:{sid[6:8]}:{index:02x}"
        folder = self._node_dir(node)
        folder.mkdir(parents=True, exist_ok=True)
        self._record_node(
            node, index=index, tap=f"psw{sid}n{index}", address=address, mac=mac, prefix=subnet.prefixlen
        )
        self._record(next_index=max(index + 1, int(self._state.get("next_index", 0))))
        public_key = self.key_file.with_suffix(".pub").read_bytes()
        write_config_disk(folder / "config.tar", public_key, self._engine_labels(node))

    def _start_node(self, node: str) -> Engine:
        """Boot a node, open its ssh connection, wait for its engine."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        self._boot(node)
        self._connect(node, deadline)
        client = engine_client(self.socket_url(node))
        wait_engine(client, node, max(1.0, deadline - time.monotonic()), lambda: self._why_dead(node))
        engine = Engine(node, client, self.address(node))
        self._engines[node] = engine
        return engine

    def _boot(self, node: str) -> None:
        record = self._node(node)
        folder = self._node_dir(node)
        tap = str(record["tap"])
        with self._guard:
            if self._closing:
                raise ProvisioningError(f"{node}: the cluster is being removed")
            if not link_exists(tap):
                ip("tuntap", "add", "dev", tap, "mode", "tap")
                ip("link", "set", tap, "master", self.bridge)
                ip("link", "set", tap, "up")
        argv = kernel_argv(
            node,
            folder,
            memory_mb=self.memory_mb,
            base=str(self._state["base"]),
            data=str(self._state["images"]),
            tap=tap,
            mac=str(record["mac"]),
            address=f"{record['address']}/{record['prefix']}",
        )
        with self._guard:  # down() removes what is recorded: no kernel may start after it began
            if self._closing:
                raise ProvisioningError(f"{node}: the cluster is being removed")
            proc = start_kernel(argv, folder, str(self._state["shim"]))
            self._procs[node] = proc
            self._state["nodes"][node].update(pid=proc.pid, start=process_start_time(proc.pid))
            self._save_state()

    def _connect(self, node: str, deadline: float) -> None:
        """Open the node's ssh connection: the engine socket forward and the control master."""
        address = self.address(node)
        socket_path = self._node_dir(node) / "docker.sock"

        def sshd_listening() -> Poll[None]:
            dead = self._why_dead(node)
            if dead:
                raise ProvisioningError(f"{node}: {dead}")
            with socket.create_connection((address, 22), timeout=1):
                return Poll(True, "sshd listening")

        wait_for(
            sshd_listening,
            what=f"sshd on {node} ({address})",
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.2,
            transient=(OSError,),
        )

        def record(proc: subprocess.Popen[bytes]) -> None:
            with self._guard:  # down() removes what is recorded: none may start after it began
                if self._closing:
                    raise ProvisioningError(f"{node}: the cluster is being removed")
                self._state["nodes"][node].update(ssh_pid=proc.pid, ssh_start=process_start_time(proc.pid))
                self._save_state()

        forward_socket(
            forward_argv(self.ssh_config, socket_path, address),
            socket_path,
            deadline,
            record,
            lambda why: ProvisioningError(f"{node}: no ssh connection to {address}: {why}"),
        )

    def _why_dead(self, node: str) -> str:
        proc = self._procs.get(node)
        record = self._state["nodes"].get(node, {})
        if proc is not None:
            if proc.poll() is None:
                return ""
            return f"its UML kernel exited ({proc.returncode}); console:\n{self.log_tail(node)}"
        if alive(record.get("pid"), record.get("start")):
            return ""
        return f"its UML kernel is not running; console:\n{self.log_tail(node)}"

    # -- nodes during a run ------------------------------------------------------------------
    def _discard_node(self, node: str, engine: Engine | None) -> str:
        """Stop its kernel, remove its tap and files."""
        if engine is not None:
            engine.client.close()
        self._kill_node(node)
        problem = delete_link(self._node(node).get("tap"))
        with self._guard:
            self._state["nodes"].pop(node)
            self._save_state()
        shutil.rmtree(self._node_dir(node), ignore_errors=True)
        return f"its tap remains: {problem}" if problem else ""

    def stop_node(self, name: str) -> None:
        """A node failure: its kernel process is killed (SIGKILL), nothing shuts down cleanly."""
        self._kill_node(name)

    def _kill_node(self, name: str) -> None:
        record = self._node(name)
        problem = kill_uml(record.get("pid"), record.get("start"))
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.wait(10)
        stop_recorded(record.get("ssh_pid"), record.get("ssh_start"))
        self._record_node(name, pid=None, start=None, ssh_pid=None, ssh_start=None)
        if problem:
            raise ProvisioningError(f"{name}: {problem}")

    def start_node(self, name: str) -> None:
        """Boot a stopped node again on its own copy-on-write files; wait until it is Ready."""
        record = self._node(name)
        if alive(record.get("pid"), record.get("start")):
            raise ProvisioningError(f"{name} is running; stop it first")
        deadline = time.monotonic() + BOOT_TIMEOUT
        self._boot(name)
        self._connect(name, deadline)
        engine = self._engines[name]
        wait_engine(engine.client, name, max(1.0, deadline - time.monotonic()), lambda: self._why_dead(name))
        self._wait_ready(list(self._engines))

    def load_images(self, refs: Sequence[str]) -> None:
        """Make ``refs`` present on every node, over each node's engine socket (slow: preload instead)."""
        self._images.update(refs)
        started = time.monotonic()

        def load(node: str, tar: Path) -> None:
            # A client of its own: a load over the node's tap can outlast the usual 120 s timeout.
            client = engine_client(self.socket_url(node), timeout=1800)
            try:
                images.load_image_file(client, tar)
            finally:
                client.close()

        clients = {n: e.client for n, e in self._engines.items()}
        copied, nodes = copy_images(clients, refs, self.run_dir / "images.tar", load)
        if copied:
            self.progress(
                f"images loaded over the network on {len(nodes)} UML nodes in "
                f"{time.monotonic() - started:.1f} s: {', '.join(copied)} (preload them to skip this)"
            )

    def down(self) -> None:
        """Kill every node and ssh connection, remove taps, bridge, rule, disks' COW files, folder.

        A Ctrl-C while this runs (a second one, typically) restarts the removal instead of
        abandoning it half-way; it is raised once everything recorded is gone. After
        ``REMOVAL_ATTEMPTS`` interrupted removals the user means it: the last Ctrl-C is raised,
        what is left stays recorded for ``pytest-swarm down ID`` or the next run's sweep.
        """
        interrupted: KeyboardInterrupt | None = None
        problems: list[str] = []
        for attempt in range(1, REMOVAL_ATTEMPTS + 1):
            try:
                if attempt > 1:  # said inside the try: a Ctrl-C while saying it restarts too
                    self.progress(
                        f"UML cluster {self.session.id}: removal interrupted; removing again "
                        f"({attempt}/{REMOVAL_ATTEMPTS})"
                    )
                with self._guard:
                    self._closing = True  # boot threads still running start nothing new
                for engine in list(self._engines.values()):
                    engine.client.close()
                self._engines.clear()
                problems = remove_session(self.session.id)
                for proc in list(self._procs.values()):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
                self._procs.clear()
                break
            except KeyboardInterrupt as exc:  # removal is idempotent: run it again, whole
                interrupted = exc
        else:
            self.progress(
                f"UML cluster {self.session.id}: removal interrupted {REMOVAL_ATTEMPTS} times, given up; "
                f"`pytest-swarm down {self.session.id}` removes what is left"
            )
            assert interrupted is not None
            raise interrupted
        if interrupted is not None:
            raise interrupted
        if problems:
            raise ProvisioningError(f"UML cluster {self.session.id} removed, but: {'; '.join(problems)}")

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """Remove what the session's record lists: kernels, ssh connections, taps, bridge, rule."""
        return remove_session(session_id)

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Remove the UML sessions of dead runs, each by its record."""
        return sweep(progress)


if TYPE_CHECKING:  # mypy holds the class to the contract the registry promises
    _KIND: type[Provider] = UmlProvider
