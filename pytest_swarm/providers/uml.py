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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .. import images
from ..capabilities import probe_capabilities
from ..cluster import Cluster
from ..commands import run
from ..errors import CommandError, ProvisioningError
from ..ownership import (
    UML_STATE_FILE,
    Session,
    is_kept,
    owner_alive,
    process_start_time,
    remove_run_dir,
    run_root,
)
from ..waiting import Poll, wait_for
from .base import (
    API_VERSION,
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

UML_BINARY = Path("/usr/bin/linux.uml")
UML_MODULES = Path("/usr/lib/uml/modules")
NODE_RECIPE = Path(__file__).parent / "uml_node"
CACHE_ROOT = Path("/var/cache/pytest-swarm/uml")
STATE_FILE = UML_STATE_FILE
SUBNET_POOL = ipaddress.IPv4Network("172.16.0.0/16")  # outside docker's and swarm's default pools
FIRST_HOST = 10  # node k gets .<10+k>; .1 is the host's end of the bridge
BOOT_TIMEOUT = 180.0  # kernel + sshd + dockerd, three nodes booting on two cores
KEEP_IMAGE_DISKS = 3  # per base disk, besides those a live or kept session uses
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def missing_requirements() -> str:
    """Why UML nodes can't run here ("" when they can): what to install or enable."""
    if os.geteuid() != 0:
        return "the uml provider needs root (taps, a bridge, iptables, debootstrap)"
    if not Path("/dev/net/tun").exists():
        return "the uml provider needs /dev/net/tun (the nodes' network taps); this host has none"
    if not UML_BINARY.is_file():
        return f"the uml provider needs {UML_BINARY}: apt-get install user-mode-linux"
    for tool, package in (
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("gcc", "gcc libc6-dev"),
        ("dockerd", "docker.io"),
        ("iptables", "iptables"),
        ("unshare", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"the uml provider needs {tool}: apt-get install {package}"
    return ""


def uml_kernel() -> tuple[str, Path]:
    """The UML kernel's version and its modules folder."""
    found = sorted(p for p in UML_MODULES.glob("*") if p.is_dir()) if UML_MODULES.is_dir() else []
    if not found:
        raise ProvisioningError(f"no UML kernel modules under {UML_MODULES}: apt-get install user-mode-linux")
    return found[-1].name, found[-1]


def _uml_package_version() -> str:
    try:
        return run(["dpkg-query", "-W", "-f=${Version}", "user-mode-linux"], timeout=30).strip()
    except CommandError:
        stat = UML_BINARY.stat()
        return f"{stat.st_size}-{int(stat.st_mtime)}"


# -- disks ------------------------------------------------------------------------------------
class BaseDisk:
    """The cached root disk of every node, and the ptrace shim the kernel runs with."""

    def __init__(self, folder: Path, digest: str) -> None:
        self.folder = folder
        self.digest = digest
        self.image = folder / "base.img"
        self.shim = folder / "xstate-shim.so"


def recipe_key() -> str:
    """The base disk's cache key: the recipe files, the UML package and its kernel version."""
    kernel, _ = uml_kernel()
    text = f"{images.recipe_digest(NODE_RECIPE)}/{_uml_package_version()}/{kernel}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_disk(progress: images.Progress, timings: dict[str, float] | None = None) -> BaseDisk:
    """The node root disk for the current recipe: built once (~1 min), then reused."""
    digest = recipe_key()
    disk = BaseDisk(CACHE_ROOT / digest, digest)
    with images.file_lock(f"uml-base-{digest}"):
        if disk.image.is_file() and disk.shim.is_file():
            return disk
        started = time.monotonic()
        progress(f"building the UML node disk {digest} (debootstrap + docker.io, ~1 min, once)")
        disk.folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=disk.folder))
        try:
            _, modules = uml_kernel()
            rootfs = work / "rootfs"
            rootfs.mkdir()
            _run_logged(
                [
                    "bash",
                    str(NODE_RECIPE / "build-rootfs"),
                    str(rootfs),
                    images.debian_mirror(),
                    str(modules),
                ],
                work / "build.log",
                timeout=1800,
                what="building the UML node root file system",
            )
            _mkfs(rootfs, work / "base.img", label="psw-root", minimum=2 << 30)
            _run_logged(
                ["gcc", "-shared", "-fPIC", "-O2", "-o", str(work / "xstate-shim.so"),
                 str(NODE_RECIPE / "xstate-shim.c"), "-ldl"],
                work / "gcc.log",
                timeout=120,
                what="compiling the UML ptrace shim",
            )  # fmt: skip
            # The image last: its presence is what marks the disk complete.
            os.replace(work / "xstate-shim.so", disk.shim)
            os.replace(work / "base.img", disk.image)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.monotonic() - started
        if timings is not None:
            timings["base_disk"] = seconds
        progress(f"UML node disk {digest} built in {seconds:.0f} s")
    return disk


def images_disk(
    base: BaseDisk,
    refs: Sequence[str],
    client: docker.DockerClient | None,
    progress: images.Progress,
    timings: dict[str, float] | None = None,
) -> Path:
    """The engine-data disk with ``refs`` loaded, cached by the images' ids (and the base disk).

    The images are loaded by a throwaway dockerd on the host (Debian's, the nodes' version) into
    a plain folder, which becomes an ext4 image: loading them into a booted node over its tap
    takes minutes, this takes seconds.
    """
    wanted = sorted(set(refs))
    if wanted and client is None:
        raise ProvisioningError("preloading images into UML nodes needs the local Docker engine")
    pairs = []
    for ref in wanted:
        assert client is not None
        try:
            pairs.append([ref, str(client.images.get(ref).id)])
        except docker.errors.ImageNotFound as exc:
            raise ProvisioningError(
                f"image {ref} is to be preloaded into the UML nodes but is not on the local engine; "
                "build or load it first"
            ) from exc
    key = hashlib.sha256(json.dumps([base.digest, pairs]).encode()).hexdigest()[:12]
    target = base.folder / f"images-{key}.img"
    with images.file_lock(f"uml-images-{key}"):
        if target.is_file():
            target.with_suffix(".used").touch()
            return target
        started = time.monotonic()
        progress(f"building the UML engine-data disk {key} with {len(wanted)} images")
        work = Path(tempfile.mkdtemp(prefix="images-", dir=base.folder))
        try:
            data = work / "data"
            data.mkdir()
            if wanted:
                tar = work / "images.tar"
                images.save_images(wanted, tar)
                with throwaway_engine(data, work) as loader:
                    images.load_image_file(loader, tar)
                tar.unlink()
                # Per-engine state the nodes make for themselves at first start.
                for leftover in ("network", "buildkit", "containerd", "tmp", "runtimes", "swarm"):
                    shutil.rmtree(data / leftover, ignore_errors=True)
            _mkfs(data, work / "images.img", label="psw-docker", minimum=16 << 30)
            os.replace(work / "images.img", target)
            target.with_suffix(".used").touch()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.monotonic() - started
        if timings is not None:
            timings["images_disk"] = seconds
        progress(f"UML engine-data disk {key} built in {seconds:.1f} s")
    prune_cache(keep={base.digest})
    return target


@contextlib.contextmanager
def throwaway_engine(data_root: Path, work: Path) -> Iterator[docker.DockerClient]:
    """A dockerd of its own on ``data_root``, in a network namespace of its own.

    Its own namespace: started in the host's with ``--bridge=none`` it deleted the host engine's
    docker0 bridge (FACTS.md). Its exec root, socket, pid file and config (trust key) are in
    ``work``, so it shares nothing with the host's engine. Stopped by its pid.
    """
    if shutil.which("dockerd") is None:
        raise ProvisioningError("preloading images into UML nodes needs dockerd: apt-get install docker.io")
    sock = work / "loader.sock"
    (work / "daemon.json").write_text("{}")
    argv = [
        "unshare", "--net", "--mount", "dockerd",
        "--data-root", str(data_root), "--exec-root", str(work / "exec"),
        "--pidfile", str(work / "loader.pid"), "--config-file", str(work / "daemon.json"),
        "-H", f"unix://{sock}", "--bridge=none", "--iptables=false", "--ip-masq=false",
        "--storage-driver=overlay2",
    ]  # fmt: skip
    with open(work / "loader.log", "wb") as log:
        # unshare execs dockerd: the pid is dockerd's; its own session keeps Ctrl-C away from it.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    client = docker.DockerClient(base_url=f"unix://{sock}", version=API_VERSION, timeout=600)
    try:

        def probe() -> Poll[None]:
            if proc.poll() is not None:
                tail = (work / "loader.log").read_text(errors="replace").splitlines()[-10:]
                raise ProvisioningError("the image-loading dockerd exited:\n" + "\n".join(tail))
            client.ping()
            return Poll(True, "answering")

        wait_for(probe, what="the image-loading dockerd", timeout=60, interval=0.1, transient=TRANSIENT)
        yield client
    finally:
        client.close()
        _stop_process(proc, grace=30)


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL to its process group after ``grace`` s; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _mkfs(source: Path, image: Path, *, label: str, minimum: int) -> None:
    """An ext4 image holding ``source``'s tree; sparse, so its size costs only what is used."""
    used = int(run(["du", "-sb", str(source)], timeout=300).split()[0])
    size = max(minimum, used * 3)
    _run_logged(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(source), str(image), str(size // 1024) + "k"],
        image.with_suffix(".mkfs.log"),
        timeout=600,
        what=f"mkfs.ext4 of {source}",
    )


def _run_logged(argv: list[str], log: Path, *, timeout: float, what: str) -> None:
    with open(log, "wb") as out:
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ProvisioningError(f"{what} did not finish within {timeout:g} s (log: {log})") from exc
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise ProvisioningError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(tail))


def prune_cache(keep: set[str]) -> list[str]:
    """Remove cached disks no session needs: old recipes' folders, least recently used image disks.

    A disk named in the state of a live or kept session stays: its nodes' copy-on-write files
    point at it (UML refuses a backing file whose mtime changed, so disks are never rewritten).
    """
    if not CACHE_ROOT.is_dir():
        return []
    in_use = {str(p) for state in _session_states() for p in (state.get("base"), state.get("images")) if p}
    removed: list[str] = []
    for folder in CACHE_ROOT.iterdir():
        if not folder.is_dir():
            continue
        if folder.name not in keep:
            if not any(u.startswith(str(folder) + "/") for u in in_use):
                with images.file_lock(f"uml-base-{folder.name}"):
                    shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
            continue
        disks = sorted(folder.glob("images-*.img"), key=_last_used, reverse=True)
        for disk in disks[KEEP_IMAGE_DISKS:]:
            if str(disk) in in_use:
                continue
            disk.unlink(missing_ok=True)
            disk.with_suffix(".used").unlink(missing_ok=True)
            removed.append(str(disk))
    return removed


def _last_used(disk: Path) -> float:
    try:
        return disk.with_suffix(".used").stat().st_mtime
    except OSError:
        return 0.0


# -- state ------------------------------------------------------------------------------------
def _state_path(session_id: str) -> Path:
    return run_root() / session_id / STATE_FILE


def read_state(session_id: str) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path(session_id).read_text())
    except (OSError, ValueError):
        return None
    return state


def _session_states() -> Iterator[dict[str, Any]]:
    """States of UML sessions whose owner is alive or whose cluster is kept."""
    root = run_root()
    if not root.is_dir():
        return
    for folder in root.iterdir():
        state = read_state(folder.name)
        if state is not None and (is_kept(folder.name) or owner_alive(str(state.get("owner", "")))):
            yield state


# -- processes ------------------------------------------------------------------------------
def _alive(pid: int | None, start: str | None) -> bool:
    """The recorded process is still the same one (pid and start time), and not a zombie."""
    if not pid or not start or process_start_time(pid) != start:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group_members(pgid: int, exe: Path) -> list[int]:
    """Live processes of process group ``pgid`` running ``exe``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            if os.path.realpath(entry / "exe") != os.path.realpath(exe):
                continue
        except (OSError, ValueError, IndexError):
            continue
        members.append(int(entry.name))
    return members


def kill_uml(pid: int | None, start: str | None, timeout: float = 15.0) -> str:
    """SIGKILL a UML kernel and its helper processes; returns a problem or "".

    A node runs in a session of its own, so its kernel's pid is also its process group: the
    kernel is checked by pid and start time and its group killed; if the kernel is already
    gone, the group's remaining linux.uml processes are killed one by one.
    """
    if not pid:
        return ""
    if _alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    else:
        for member in _group_members(pid, UML_BINARY):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, start) and not _group_members(pid, UML_BINARY):
            return ""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        time.sleep(0.05)
    return f"UML process {pid} still running {timeout:g} s after SIGKILL"


def kill_recorded(pid: int | None, start: str | None) -> None:
    """SIGTERM a recorded helper (an ssh connection) if it is still the same process."""
    if _alive(pid, start):
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


# -- host network -----------------------------------------------------------------------------
def _ip(*args: str) -> str:
    return run(["ip", *args], timeout=30)


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _delete_link(name: str | None) -> str:
    if not name or not _link_exists(name):
        return ""
    try:
        _ip("link", "delete", name)
    except CommandError as exc:
        return str(exc)
    return ""


def _rule_present(rule: Sequence[str]) -> bool:
    result = subprocess.run(
        ["iptables", "-w", "-C", *rule],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def _delete_rule(rule: Sequence[str] | None) -> str:
    if not rule:
        return ""
    try:
        if _rule_present(rule):
            run(["iptables", "-w", "-D", *rule], timeout=30)
    except (CommandError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return ""


def _used_networks(client: docker.DockerClient | None) -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or has an address in, and the local engine's networks."""
    used: list[ipaddress.IPv4Network] = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr") or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    if client is not None:
        with contextlib.suppress(docker.errors.DockerException, *TRANSIENT):
            for network in client.networks.list():
                for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        used.append(ipaddress.IPv4Network(config["Subnet"], strict=False))
    for state in _session_states():
        with contextlib.suppress(ValueError, KeyError):
            used.append(ipaddress.IPv4Network(state["subnet"]))
    return used


def free_subnet(client: docker.DockerClient | None) -> ipaddress.IPv4Network:
    """The first /24 of 172.16.0.0/16 that overlaps nothing the host or its engine uses."""
    used = _used_networks(client)
    candidates: list[ipaddress.IPv4Network] = list(SUBNET_POOL.subnets(new_prefix=24))
    for candidate in candidates[1:]:
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise ProvisioningError(f"no free /24 left in {SUBNET_POOL} for the UML nodes' bridge")


# -- the provider -----------------------------------------------------------------------------
class UmlProvider:
    """Nodes master-1, worker-1..N as UML kernels on a host bridge of the session's own."""

    name = "uml"
    # A task starts in about 13 s on a UML node: joining 3 nodes one by one took 39 s before
    # every deploy, more than the 30 s stall it avoids on some of them.
    joins_networks_first = False

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
        preload: Sequence[str] = (),
        memory_mb: int = 1200,
    ) -> None:
        self.session = session
        self.workers = workers
        self.node_labels = node_labels
        self.engine_labels = engine_labels
        self.timeout = timeout
        self.progress = progress
        self.client = client  # the local engine: only where images are preloaded from
        self.preload = list(preload)
        self.memory_mb = memory_mb
        self.bridge = f"psw{session.id}"
        self.timings: dict[str, float] = {}
        self.cluster: Cluster | None = None
        self._engines: dict[str, Engine] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._images: set[str] = set(self.preload)
        self._state: dict[str, Any] = {}
        self._guard = threading.Lock()  # state changes, and no new process once down() began
        self._closing = False

    # -- names and places -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.session.run_dir

    def _node_dir(self, node: str) -> Path:
        return self.run_dir / node

    def socket_url(self, node: str) -> str:
        return f"unix://{self._node_dir(node) / 'docker.sock'}"

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

    def address(self, node: str) -> str:
        return str(self._node(node)["address"])

    def host_spec(self, node: str) -> str:
        """A testinfra backend URL: ssh with the cluster's key, over the node's control master."""
        return (
            f"ssh://root@{self.address(node)}?ssh_config={self.ssh_config}"
            f"&ssh_identity_file={self.key_file}&controlpersist=0&timeout=20"
        )

    def console_tail(self, node: str, lines: int = 15) -> str:
        """The end of a node's console (kernel, init and dockerd output)."""
        try:
            text = (self._node_dir(node) / "console.log").read_text(errors="replace")
        except OSError:
            return f"({node}: no console log)"
        tail = [_ANSI.sub("", line) for line in text.splitlines()[-lines:]]
        return "\n".join(f"  {node}| {line}" for line in tail)

    def memory(self, node: str) -> dict[str, int]:
        """Host memory a node uses, in bytes.

        ``ram``: the pages of the kernel's memory file the host has allocated (a UML kernel's
        "physical" memory is one deleted file it maps; pages it touched once stay allocated).
        ``host``: ``ram`` plus what the node's processes hold besides that file. Summing RSS or
        PSS over the processes would count that file several times: the kernel's helpers share
        its address space, and every userspace process maps its pages again.
        """
        record = self._node(node)
        pid = record.get("pid")
        if not pid or not _alive(pid, record.get("start")):
            return {"ram": 0, "host": 0}
        ram = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.endswith("(deleted)") and os.path.realpath(fd).startswith(("/dev/shm/", "/tmp/")):
                    ram = max(ram, os.stat(fd).st_blocks * 512)
        other = 0
        spaces: set[int] = set()  # processes sharing one address space have identical maps
        for member in _group_members(pid, UML_BINARY):
            with contextlib.suppress(OSError):
                space = hash(Path(f"/proc/{member}/maps").read_bytes())
                if space in spaces:
                    continue
                spaces.add(space)
                fields = dict(
                    line.split(":", 1)
                    for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines()[1:]
                )
                other += (int(fields["Pss"].split()[0]) - int(fields["Pss_Shmem"].split()[0])) * 1024
        return {"ram": ram, "host": ram + other}

    # -- state -------------------------------------------------------------------------------
    def _save_state(self) -> None:
        """Write the record atomically: a sweep may read it at any time."""
        path = _state_path(self.session.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2))
        os.replace(tmp, path)

    def _record(self, **changes: Any) -> None:
        with self._guard:
            self._state.update(changes)
            self._save_state()

    def _record_node(self, node: str, **changes: Any) -> None:
        with self._guard:
            self._state["nodes"].setdefault(node, {}).update(changes)
            self._save_state()

    # -- lifecycle ----------------------------------------------------------------------------
    def up(self) -> Cluster:
        """Disks, bridge, nodes, swarm, labels; on any failure (or Ctrl-C) remove it all."""
        reason = missing_requirements()
        if reason:
            raise ProvisioningError(reason)
        try:
            sweep(self.progress)
            base = base_disk(self.progress, self.timings)
            if self.preload and self.client is None:
                from .dind import local_engine  # the local engine only matters for preloading

                self.client = local_engine()
            data = images_disk(base, self.preload, self.client, self.progress, self.timings)
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
            self._make_key()
            self._make_bridge()
            names = ["master-1", *(f"worker-{i}" for i in range(1, self.workers + 1))]
            for index, name in enumerate(names):
                self._plan_node(name, index)
            parallel(self._start_node, names)
            self.timings["engines"] = time.monotonic() - started
            self.progress(f"{len(names)} UML node engines up ({self.timings['engines']:.1f} s)")
            form_swarm(self._engines["master-1"], [self._engines[n] for n in names[1:]])
            self._wait_ready(names)
            apply_node_labels(self._engines["master-1"].client, self.node_labels)
            self.progress(f"swarm formed: master-1 Leader + {self.workers} workers")
            self.cluster = self._make_cluster(names)
            self.cluster.capabilities = probe_capabilities(self, names)
            self.cluster.seconds_to_ready = time.monotonic() - started
            self.timings["ready"] = self.cluster.seconds_to_ready
            return self.cluster
        except BaseException:
            self.down()
            raise

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
            if not _alive(record.get("pid"), record.get("start")):
                raise ProvisioningError(f"kept UML node {node} is not running any more")
            if not _alive(record.get("ssh_pid"), record.get("ssh_start")):
                self._connect(node, time.monotonic() + 60)
            client = engine_client(self.socket_url(node))
            wait_engine(client, node, 60, lambda node=node: self._why_dead(node))  # type: ignore[misc]
            self._engines[node] = Engine(node, client, self.address(node))
        self._wait_ready(list(nodes))
        self.cluster = self._make_cluster(list(nodes))
        self.cluster.capabilities = probe_capabilities(self, list(nodes))
        self.cluster.seconds_to_ready = time.monotonic() - started
        return self.cluster

    def _make_cluster(self, names: Sequence[str]) -> Cluster:
        return Cluster(
            provider=self.name,
            client=self._engines["master-1"].client,
            manager_url=self.socket_url("master-1"),
            addresses={n: self._engines[n].address for n in names},
            engines={n: self._engines[n].client for n in names},
        )

    def _make_key(self) -> None:
        """The cluster's ssh key, and an ssh config that trusts only these nodes' addresses."""
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pytest-swarm-{self.session.id}",
             "-f", str(self.key_file)],
            timeout=30,
        )  # fmt: skip

    def _write_ssh_config(self, pattern: str) -> None:
        # Host keys are made at a node's first boot: nothing to check them against, and these
        # addresses exist only on this session's bridge. ControlPath: the node's forwarding
        # connection is the master every other ssh (testinfra) rides on.
        self.ssh_config.write_text(
            f"Host {pattern}\n"
            "  User root\n"
            f"  IdentityFile {self.key_file}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
            "  BatchMode yes\n"
            "  ControlMaster no\n"
            f"  ControlPath {self.run_dir}/ctl-%h\n"
            "  ServerAliveInterval 5\n"
            "  ServerAliveCountMax 6\n"
        )

    def _make_bridge(self) -> None:
        """The session's bridge on a free /24, and the rule that lets nodes talk across it."""
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        with images.file_lock("uml-network"):  # two sessions must not pick the same /24
            subnet = free_subnet(self.client)
            gateway = next(subnet.hosts())
            self._record(bridge=self.bridge, subnet=str(subnet), gateway=str(gateway), rule=rule)
            _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
            _ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        # The host engine's FORWARD policy is DROP and br_netfilter sends bridged frames through it.
        run(["iptables", "-w", "-I", *rule[:1], "1", *rule[1:]], timeout=30)
        octets = str(subnet.network_address).split(".")
        self._write_ssh_config(f"{octets[0]}.{octets[1]}.{octets[2]}.*")

    def _plan_node(self, node: str, index: int) -> None:
        """Name a node's tap, address and MAC, and write its configuration archive."""
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
        self._write_config(node)

    def _write_config(self, node: str) -> None:
        """The node's /dev/ubdc: a tar archive with the cluster's public key and the engine's flags."""
        labels = {**self.engine_labels.get("*", {}), **self.engine_labels.get(node, {})}
        files = {
            "authorized_keys": self.key_file.with_suffix(".pub").read_bytes(),
            "dockerd.args": "".join(f"--label={k}={v}\n" for k, v in sorted(labels.items())).encode(),
        }
        with tarfile.open(self._node_dir(node) / "config.tar", "w") as tar:  # padded to 10 KiB
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(content))

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
            if not _link_exists(tap):
                _ip("tuntap", "add", "dev", tap, "mode", "tap")
                _ip("link", "set", tap, "master", self.bridge)
                _ip("link", "set", tap, "up")
        argv = [
            str(UML_BINARY),
            f"mem={self.memory_mb}M",
            f"ubd0={folder / 'root.cow'},{self._state['base']}",
            f"ubd1={folder / 'docker.cow'},{self._state['images']}",
            f"ubd2r={folder / 'config.tar'}",
            "root=/dev/ubda",
            "rw",
            "init=/sbin/psw-init",
            "con=null",
            "con0=fd:0,fd:1",
            f"eth0=tuntap,{tap},{record['mac']}",
            f"umid={node}",
            f"uml_dir={folder / 'uml'}",
            f"psw.name={node}",
            f"psw.addr={record['address']}/{record['prefix']}",
        ]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_PRELOAD": str(self._state["shim"])}
        # The kernel's memory is a file it maps: on tmpfs it stays in RAM, with no disk writeback.
        if _is_tmpfs(Path("/dev/shm")):
            env["TMPDIR"] = "/dev/shm"
        (folder / "uml").mkdir(exist_ok=True)
        with self._guard:
            if self._closing:
                raise ProvisioningError(f"{node}: the cluster is being removed")
            with open(folder / "console.log", "ab") as console:
                # Console input from /dev/null; a session of its own: the kernel's pid is its
                # process group (killed as one), and Ctrl-C in the terminal doesn't reach it.
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    env=env,
                    start_new_session=True,
                )
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
        while True:
            socket_path.unlink(missing_ok=True)
            argv = [
                "ssh", "-F", str(self.ssh_config), "-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
                "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                "-L", f"{socket_path}:/var/run/docker.sock", address,
            ]  # fmt: skip
            with self._guard:
                if self._closing:
                    raise ProvisioningError(f"{node}: the cluster is being removed")
                with open(self._node_dir(node) / "ssh.log", "ab") as log:
                    proc = subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                    )
                self._state["nodes"][node].update(ssh_pid=proc.pid, ssh_start=process_start_time(proc.pid))
                self._save_state()
            while proc.poll() is None and not socket_path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if socket_path.exists():
                return
            _stop_process(proc, grace=5)
            if time.monotonic() >= deadline:
                log_tail = (self._node_dir(node) / "ssh.log").read_text(errors="replace").splitlines()[-5:]
                raise ProvisioningError(f"{node}: no ssh connection to {address}:\n" + "\n".join(log_tail))
            time.sleep(0.5)  # sshd may still be starting: its port answers before it accepts keys

    def _why_dead(self, node: str) -> str:
        proc = self._procs.get(node)
        record = self._state["nodes"].get(node, {})
        if proc is not None:
            if proc.poll() is None:
                return ""
            return f"its UML kernel exited ({proc.returncode}); console:\n{self.console_tail(node)}"
        if _alive(record.get("pid"), record.get("start")):
            return ""
        return f"its UML kernel is not running; console:\n{self.console_tail(node)}"

    def _wait_ready(self, names: Sequence[str]) -> None:
        manager = self._engines["master-1"].client
        hint = lambda late: "\n".join(self.console_tail(n) for n in late)  # noqa: E731
        wait_ready(manager, names, self.timeout, hint)

    # -- nodes during a run ------------------------------------------------------------------
    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str:
        """Boot a new node (worker-N+1 or master-N+1) and join it; returns its name."""
        if self.cluster is None:
            raise ProvisioningError("add_node needs a running cluster (call up() first)")
        name = new_node_name(role, self._state["nodes"])
        self._plan_node(name, int(self._state["next_index"]))
        engine = self._start_node(name)
        self.load_images(sorted(self._images))  # those loaded after boot; preloaded ones are on disk
        manager = self._engines["master-1"]
        join_late(manager, engine, role, self.timeout)
        self._wait_ready(list(self._engines))
        if labels:
            apply_node_labels(manager.client, {name: labels})
        admit(self.cluster, name, engine, probe_capabilities(self, [name]))
        self.progress(f"node {name} joined as {role}")
        return name

    def remove_node(self, name: str) -> None:
        """Leave the swarm, drop the node from the node list, stop its kernel, remove its files."""
        if name == "master-1":
            raise ProvisioningError("master-1 is the manager of this cluster and can't be removed")
        manager = self._engines["master-1"].client
        engine = self._engines.pop(name)
        node_id = leave(manager, engine)
        engine.client.close()
        self._kill_node(name)
        problem = _delete_link(self._node(name).get("tap"))
        with self._guard:
            self._state["nodes"].pop(name)
            self._save_state()
        shutil.rmtree(self._node_dir(name), ignore_errors=True)
        forget(manager, self.cluster, name, node_id)
        if problem:
            raise ProvisioningError(f"{name} removed, but its tap remains: {problem}")

    def stop_node(self, name: str) -> None:
        """A node failure: its kernel process is killed (SIGKILL), nothing shuts down cleanly."""
        self._kill_node(name)

    def _kill_node(self, name: str) -> None:
        record = self._node(name)
        problem = kill_uml(record.get("pid"), record.get("start"))
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.wait(10)
        kill_recorded(record.get("ssh_pid"), record.get("ssh_start"))
        self._record_node(name, pid=None, start=None, ssh_pid=None, ssh_start=None)
        if problem:
            raise ProvisioningError(f"{name}: {problem}")

    def start_node(self, name: str) -> None:
        """Boot a stopped node again on its own copy-on-write files; wait until it is Ready."""
        record = self._node(name)
        if _alive(record.get("pid"), record.get("start")):
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
            client = docker.DockerClient(base_url=self.socket_url(node), version=API_VERSION, timeout=1800)
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

    def keep(self) -> dict[str, str]:
        """What a later run needs to reach this cluster again."""
        return {
            "provider": self.name,
            "nodes": ",".join(self._engines),
            "DOCKER_HOST": self.socket_url("master-1"),
        }

    def down(self) -> None:
        """Kill every node and ssh connection, remove taps, bridge, rule, disks' COW files, folder.

        A Ctrl-C while this runs (a second one, typically) restarts the removal instead of
        abandoning it half-way; it is raised once everything recorded is gone.
        """
        interrupted: KeyboardInterrupt | None = None
        while True:
            try:
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
        if interrupted is not None:
            raise interrupted
        if problems:
            raise ProvisioningError(f"UML cluster {self.session.id} removed, but: {'; '.join(problems)}")


def _is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[1:3] == [str(path), "tmpfs"] for line in mounts if len(line.split()) > 2)


def remove_session(session_id: str) -> list[str]:
    """Remove what a UML session recorded: processes, taps, bridge, rule, run folder.

    Returns what could not be removed. Without a record there is nothing of UML's to remove
    (the run folder goes all the same).
    """
    state = read_state(session_id)
    problems: list[str] = []
    if state is not None:
        nodes: dict[str, dict[str, Any]] = state.get("nodes", {})
        for record in nodes.values():
            kill_recorded(record.get("ssh_pid"), record.get("ssh_start"))
        for name, record in nodes.items():
            problem = kill_uml(record.get("pid"), record.get("start"))
            if problem:
                problems.append(f"{name}: {problem}")
        for record in nodes.values():
            problem = _delete_link(record.get("tap"))
            if problem:
                problems.append(problem)
        for problem in (_delete_link(state.get("bridge")), _delete_rule(state.get("rule"))):
            if problem:
                problems.append(problem)
    if not problems:
        remove_run_dir(session_id)
    return problems


def sweep(progress: images.Progress) -> list[str]:
    """Remove the UML sessions earlier runs left: their owner is gone and they were not kept."""
    stale = []
    root = run_root()
    if root.is_dir():
        for folder in root.iterdir():
            state = read_state(folder.name)
            if state is None or is_kept(folder.name) or owner_alive(str(state.get("owner", ""))):
                continue
            stale.append(folder.name)
    for session_id in sorted(stale):
        problems = remove_session(session_id)
        if problems:
            progress(f"sweeping UML session {session_id} left: {'; '.join(problems)}")
    if stale:
        progress(f"swept what earlier UML runs left: sessions {', '.join(sorted(stale))}")
    return sorted(stale)
