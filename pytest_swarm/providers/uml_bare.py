"""uml, bare hosts: UML kernels running nothing but sshd and dockerd, for whatever reaches hosts
over ssh (the ssh provider's own tests boot them and hand them over). No swarm, no images, no
engine labels: each is a fresh Debian host with an engine, root's login by a key of its own.

They are built from the uml provider's parts: the cached node disk, an empty engine-data disk,
the kernels, a bridge of their own and its iptables rule, all recorded in ``uml.json`` like a
uml cluster, so ``remove()``, ``pytest-swarm down`` and the uml sweep remove them by that record.
Their host keys are read once they boot (ssh-keyscan over the private bridge, the only way to
them) into a known_hosts file; the ssh config written beside it checks them strictly.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import docker

from .. import images
from ..commands import run
from ..errors import ProvisioningError
from ..ownership import Session, process_start_time
from ..waiting import Poll, wait_for
from .processes import alive
from .uml_disk import base_disk, empty_engine_disk, write_config_disk
from .uml_host import missing_requirements
from .uml_kernel import console_tail, kernel_argv, start_kernel
from .uml_net import FIRST_HOST, free_subnet, ip
from .uml_ssh import make_key
from .uml_state import live_states, remove_session, write_state

BOOT_TIMEOUT = 180.0  # kernel, sshd and dockerd of every host, booting on two cores
MEMORY_MB = 1000


class BareHosts:
    """Hosts ``names`` as UML kernels on a bridge of their own, reached as root over ssh.

    Example::

        with BareHosts(["master-1", "worker-1"]) as hosts:
            hosts.boot()
            ini = "\\n".join(f"{name}=root@{address}" for name, address in hosts.addresses.items())
    """

    def __init__(
        self,
        names: Sequence[str],
        progress: images.Progress = lambda _line: None,
        session: Session | None = None,
        memory_mb: int = MEMORY_MB,
        local: docker.DockerClient | None = None,
    ) -> None:
        """``local``: the local engine, whose networks the hosts' subnet avoids (none: routes only)."""
        self.names = list(names)
        self.progress = progress
        self.session = session or Session.new()
        self.memory_mb = memory_mb
        self.local = local
        self.addresses: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._state: dict[str, Any] = {}

    @property
    def run_dir(self) -> Path:
        return self.session.run_dir

    @property
    def key_file(self) -> Path:
        """root's login key on every host (``.pub`` beside it)."""
        return self.run_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        """An ssh config for the hosts: their keys checked against ``known_hosts``, no prompt."""
        return self.run_dir / "ssh_config"

    def _save(self) -> None:
        write_state(self.session.id, self._state)

    def boot(self, timeout: float = BOOT_TIMEOUT) -> dict[str, str]:
        """Boot every host; returns name -> address once each has sshd and dockerd answering.
        On any failure (or Ctrl-C) everything made so far is removed."""
        try:
            deadline = time.monotonic() + timeout
            self._prepare()
            for index, name in enumerate(self.names):
                self._boot(name, index)
            for name in self.names:
                self._wait_ready(name, deadline)
            self.progress(f"bare UML hosts up: {', '.join(f'{n}={a}' for n, a in self.addresses.items())}")
            return dict(self.addresses)
        except BaseException:
            self.remove()
            raise

    def _prepare(self) -> None:
        reason = missing_requirements()
        if reason:
            raise ProvisioningError(reason)
        base = base_disk(self.progress)
        self.session.make_run_dir()
        self._state = {
            "session": self.session.id,
            "owner": self.session.owner,
            "base": str(base.image),
            "shim": str(base.shim),
            "memory_mb": self.memory_mb,
            "nodes": {},
        }
        self._save()
        data = empty_engine_disk(self.run_dir / "engine.img")
        self._state["images"] = str(data)
        make_key(self.key_file, f"pytest-swarm-bare-{self.session.id}")
        bridge = f"psw{self.session.id}"
        rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
        with images.file_lock("uml-network"):  # two sessions must not pick the same /24
            subnet = free_subnet(self.local, [str(s["subnet"]) for s in live_states() if "subnet" in s])
            self._state.update(bridge=bridge, subnet=str(subnet), rule=rule)
            self._save()
            ip("link", "add", bridge, "type", "bridge", "forward_delay", "0")
            ip("addr", "add", f"{next(subnet.hosts())}/{subnet.prefixlen}", "dev", bridge)
            ip("link", "set", bridge, "up")
        run(["iptables", "-w", "-I", rule[0], "1", *rule[1:]], timeout=30)
        octets = str(subnet.network_address).split(".")
        self.ssh_config.write_text(
            f"Host {octets[0]}.{octets[1]}.{octets[2]}.*\n"
            "  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  LogLevel ERROR\n"
        )

    def _boot(self, name: str, index: int) -> None:
        subnet = ipaddress.IPv4Network(self._state["subnet"])
        address = str(subnet.network_address + FIRST_HOST + index)
        sid = self.session.id
        tap = f"psw{sid}n{index}"
        mac = f"02:{sid[0:2]}:{sid[2:4]}:{sid[4:6]}:{sid[6:8]}:{index:02x}"
        folder = self.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        self._state["nodes"][name] = {"index": index, "tap": tap, "address": address}
        self._save()
        write_config_disk(folder / "config.tar", self.key_file.with_suffix(".pub").read_bytes(), {})
        ip("tuntap", "add", "dev", tap, "mode", "tap")
        ip("link", "set", tap, "master", str(self._state["bridge"]))
        ip("link", "set", tap, "up")
        argv = kernel_argv(
            name,
            folder,
            memory_mb=self.memory_mb,
            base=str(self._state["base"]),
            data=str(self._state["images"]),
            tap=tap,
            mac=mac,
            address=f"{address}/{subnet.prefixlen}",
        )
        proc = start_kernel(argv, folder, str(self._state["shim"]))
        self._procs[name] = proc
        self._state["nodes"][name].update(pid=proc.pid, start=process_start_time(proc.pid))
        self._save()
        self.addresses[name] = address

    def _dead(self, name: str) -> str:
        proc = self._procs.get(name)
        record = self._state["nodes"].get(name, {})
        if (proc is not None and proc.poll() is None) or alive(record.get("pid"), record.get("start")):
            return ""
        console = console_tail(self.run_dir / name / "console.log", name)
        return f"{name}: its UML kernel exited; console:\n{console}"

    def _probe(self, name: str, check: Callable[[], bool], what: str, deadline: float) -> None:
        def probe() -> Poll[None]:
            dead = self._dead(name)
            if dead:
                raise ProvisioningError(dead)
            return Poll(check(), f"no {what} yet")

        wait_for(
            probe,
            what=f"{what} on {name} ({self.addresses[name]})",
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.5,
            transient=(OSError, subprocess.SubprocessError),
        )

    def _wait_ready(self, name: str, deadline: float) -> None:
        """sshd answering, its host key known, dockerd's socket there."""
        address = self.addresses[name]

        def sshd() -> bool:
            with socket.create_connection((address, 22), timeout=1):
                return True

        self._probe(name, sshd, "sshd", deadline)
        keys: list[str] = []

        def scanned() -> bool:
            found = subprocess.run(
                ["ssh-keyscan", "-T", "5", "-t", "ed25519", address],
                capture_output=True, text=True, timeout=15, check=False,
            )  # fmt: skip
            keys[:] = [line for line in found.stdout.splitlines() if line and not line.startswith("#")]
            return bool(keys)

        self._probe(name, scanned, "host key", deadline)
        with open(self.known_hosts, "a") as known:
            known.write("".join(line + "\n" for line in keys))

        def engine() -> bool:
            return self.ssh(name, "test -S /var/run/docker.sock", timeout=20).returncode == 0

        self._probe(name, engine, "dockerd", deadline)

    def ssh(self, name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as root on host ``name`` (the hosts' own key and known_hosts)."""
        argv = [
            "ssh", "-F", str(self.ssh_config), "-i", str(self.key_file), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{self.addresses[name]}", command,
        ]  # fmt: skip
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )

    def remove(self) -> list[str]:
        """Kill the kernels, remove taps, bridge, rule and the folder (by the record); what stays."""
        problems = remove_session(self.session.id)
        for proc in self._procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                problems.append(f"UML process {proc.pid} still running")
        self._procs.clear()
        return problems

    def __enter__(self) -> BareHosts:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        problems = self.remove()
        if problems and kind is None:
            raise ProvisioningError(f"bare UML hosts {self.session.id} removed, but: {'; '.join(problems)}")
