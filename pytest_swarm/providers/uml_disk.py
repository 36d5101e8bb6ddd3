"""uml, the disks: the cached node root disk (debootstrap from ``uml_node/``) and ptrace shim,
the cached engine-data disks with the run's images loaded, each node's configuration disk, and
the pruning of the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import docker
import docker.errors

from .. import images
from ..commands import run
from ..errors import ProvisioningError
from ..waiting import Poll, wait_for
from .engines import TRANSIENT, engine_client
from .processes import stop_process
from .uml_host import package_version, uml_kernel
from .uml_state import live_states

NODE_RECIPE = Path(__file__).parent / "uml_node"
CACHE_ROOT = Path("/var/cache/pytest-swarm/uml")
KEEP_IMAGE_DISKS = 3  # per base disk, besides those a live or kept session uses


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
    text = f"{images.recipe_digest(NODE_RECIPE)}/{package_version()}/{kernel}"
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
    client = engine_client(f"unix://{sock}", timeout=600)
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
        stop_process(proc, grace=30)


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
    in_use = {str(p) for state in live_states() for p in (state.get("base"), state.get("images")) if p}
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


def write_config_disk(target: Path, authorized_keys: bytes, engine_labels: Mapping[str, str]) -> None:
    """A node's /dev/ubdc: a tar archive with the cluster's public key and the engine's flags."""
    files = {
        "authorized_keys": authorized_keys,
        "dockerd.args": "".join(f"--label={k}={v}\n" for k, v in sorted(engine_labels.items())).encode(),
    }
    with tarfile.open(target, "w") as tar:  # padded to 10 KiB
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(content))


def empty_engine_disk(target: Path) -> Path:
    """An empty engine-data disk at ``target`` (a node with no image preloaded: a bare host)."""
    empty = target.with_name(target.name + ".d")
    empty.mkdir(parents=True, exist_ok=True)
    try:
        _mkfs(empty, target, label="psw-docker", minimum=16 << 30)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    return target
