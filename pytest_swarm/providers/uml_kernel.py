"""uml, the kernel processes: a node's kernel is a process group of linux.uml processes in a
session of its own; it and its ssh connection are recorded by pid and start time, and only a
process that is still the recorded one (``processes.alive``) is ever signalled."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .processes import alive
from .uml_host import UML_BINARY, is_tmpfs

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_argv(
    node: str, folder: Path, *, memory_mb: int, base: str, data: str, tap: str, mac: str, address: str
) -> list[str]:
    """The command line of a node's kernel: its disks (copy-on-write files in ``folder`` over the
    shared ``base`` and ``data`` disks, the configuration archive), its tap, its name and address."""
    return [
        str(UML_BINARY),
        f"mem={memory_mb}M",
        f"ubd0={folder / 'root.cow'},{base}",
        f"ubd1={folder / 'docker.cow'},{data}",
        f"ubd2r={folder / 'config.tar'}",
        "root=/dev/ubda",
        "rw",
        "init=/sbin/psw-init",
        "con=null",
        "con0=fd:0,fd:1",
        f"eth0=tuntap,{tap},{mac}",
        f"umid={node}",
        f"uml_dir={folder / 'uml'}",
        f"psw.name={node}",
        f"psw.addr={address}",
    ]


def start_kernel(argv: Sequence[str], folder: Path, shim: str) -> subprocess.Popen[bytes]:
    """Start a node's kernel (``kernel_argv``) in ``folder``, its console appended to console.log,
    ``shim`` preloaded; the caller records the process at once."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_PRELOAD": shim}
    # The kernel's memory is a file it maps: on tmpfs it stays in RAM, with no disk writeback.
    if is_tmpfs(Path("/dev/shm")):
        env["TMPDIR"] = "/dev/shm"
    (folder / "uml").mkdir(exist_ok=True)
    with open(folder / "console.log", "ab") as console:
        # Console input from /dev/null; a session of its own: the kernel's pid is its process
        # group (killed as one), and Ctrl-C in the terminal doesn't reach it.
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=env,
            start_new_session=True,
        )


def console_tail(log: Path, node: str, lines: int = 15) -> str:
    """The end of a node's console (kernel, init and dockerd output), colour codes removed."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"({node}: no console log)"
    tail = [_ANSI.sub("", line) for line in text.splitlines()[-lines:]]
    return "\n".join(f"  {node}| {line}" for line in tail)


def group_members(pgid: int, exe: Path) -> list[int]:
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
    if alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    else:
        for member in group_members(pid, UML_BINARY):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, start) and not group_members(pid, UML_BINARY):
            return ""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        time.sleep(0.05)
    return f"UML process {pid} still running {timeout:g} s after SIGKILL"


def node_memory(pid: int | None, start: str | None) -> dict[str, int]:
    """Host memory a node's kernel (recorded as ``pid``, ``start``) uses, in bytes.

    ``ram``: the pages of the kernel's memory file the host has allocated (a UML kernel's
    "physical" memory is one deleted file it maps; pages it touched once stay allocated).
    ``host``: ``ram`` plus what the node's processes hold besides that file. Summing RSS or
    PSS over the processes would count that file several times: the kernel's helpers share
    its address space, and every userspace process maps its pages again.
    """
    if not pid or not alive(pid, start):
        return {"ram": 0, "host": 0}
    ram = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.endswith("(deleted)") and os.path.realpath(fd).startswith(("/dev/shm/", "/tmp/")):
                ram = max(ram, os.stat(fd).st_blocks * 512)
    other = 0
    spaces: set[int] = set()  # processes sharing one address space have identical maps
    for member in group_members(pid, UML_BINARY):
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
