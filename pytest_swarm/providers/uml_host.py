"""uml, the host: what it needs for UML nodes (preflight), and which UML kernel it has."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..commands import run
from ..errors import CommandError, ProvisioningError

UML_BINARY = Path("/usr/bin/linux.uml")
UML_MODULES = Path("/usr/lib/uml/modules")


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


def package_version() -> str:
    try:
        return run(["dpkg-query", "-W", "-f=${Version}", "user-mode-linux"], timeout=30).strip()
    except CommandError:
        stat = UML_BINARY.stat()
        return f"{stat.st_size}-{int(stat.st_mtime)}"


def is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[1:3] == [str(path), "tmpfs"] for line in mounts if len(line.split()) > 2)
