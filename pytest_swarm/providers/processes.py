"""Processes a provider starts in sessions of their own and records by pid and start time (UML
kernels, ssh connections): whether a recorded one is still that process, stopping one, and the
ssh connection that forwards an engine's unix socket, started until its socket is there.

Shared by the uml, ssh and machine providers (none of them imports another's modules).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..ownership import process_start_time

# Connections a forward is given before it is given up, deadline permitting: one that fails
# (refused while sshd starts, its port answering before it accepts keys) costs well under a
# second, so these cover half a minute of a host still coming up; slower failures meet the deadline.
FORWARD_ATTEMPTS = 30
FORWARD_PAUSE = 0.5  # seconds between two connections: sshd gets a moment
LOG_TAIL = 5  # lines of the connection's log an error quotes


def alive(pid: int | None, start: str | None) -> bool:
    """The recorded process is still the same one (pid and start time), and not a zombie."""
    if not pid or not start or process_start_time(pid) != start:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_recorded(pid: int | None, start: str | None) -> None:
    """SIGTERM a recorded process (an ssh connection) if it is still the same one; reaped when
    it is this process's child."""
    if not alive(pid, start):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10  # it may ignore SIGTERM: not waited for forever
    while alive(pid, start) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # a child that ended after the last look is a zombie: reaped


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL to its process group after ``grace`` s; always reaped.

    Only for a process started in a session of its own (its pid is its process group).
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def forward_socket(
    argv: Sequence[str],
    socket_path: Path,
    deadline: float,
    on_start: Callable[[subprocess.Popen[bytes]], None],
    failed: Callable[[str], BaseException],
    *,
    attempts: int = FORWARD_ATTEMPTS,
    pause: float = FORWARD_PAUSE,
) -> subprocess.Popen[bytes]:
    """Start the ssh connection ``argv`` and wait until its end of the socket (``socket_path``)
    exists; a connection that ends first is started again, up to ``attempts`` connections and
    the monotonic ``deadline``. Its output goes to ``ssh.log`` beside the socket.

    The process is in a session of its own (Ctrl-C in the terminal does not end it; a kept
    cluster's connection outlives the run) and is told to the caller at once: ``on_start``
    records it, or raises (e.g. the cluster is being removed) and the process is stopped.

    Raises:
        what ``failed`` makes of why: connections tried, seconds spent, the log's last lines.
    """
    log_path = socket_path.parent / "ssh.log"
    started = time.monotonic()
    tried = 0
    while tried < attempts:
        tried += 1
        socket_path.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:
            on_start(proc)
        except BaseException:
            stop_process(proc)
            raise
        while proc.poll() is None and not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if socket_path.exists():
            return proc
        stop_process(proc)
        if time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
    try:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-LOG_TAIL:]
    except OSError:
        tail = []
    raise failed(
        f"no engine socket forward after {tried} connection(s) in {time.monotonic() - started:.0f} s; "
        f"ssh.log ends: {' / '.join(tail) or '(empty)'}"
    )
