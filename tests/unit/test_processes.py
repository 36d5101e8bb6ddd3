"""The ssh socket forward the uml, ssh and machine providers share: started until its socket is
there, bounded by a count of connections and a deadline (a shell script stands in for ssh)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pytest_swarm.providers.processes import forward_socket, stop_process


class Refused(Exception):
    pass


def forward(tmp_path: Path, script: str, *, deadline: float = 30, attempts: int = 5) -> list[int]:
    """Run ``script`` as the connection (in ``tmp_path``, its socket ``sock``); the pids started."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        proc = forward_socket(
            ["sh", "-c", f"cd {tmp_path} && {script}"],
            tmp_path / "sock",
            time.monotonic() + deadline,
            started.append,
            Refused,
            attempts=attempts,
            pause=0.01,
        )
        assert proc is started[-1]
    finally:
        for proc in started:
            stop_process(proc)
    return [proc.pid for proc in started]


def test_a_connection_that_makes_its_socket_is_returned(tmp_path: Path) -> None:
    assert len(forward(tmp_path, "touch sock && exec sleep 30")) == 1


def test_a_connection_that_ends_first_is_started_again(tmp_path: Path) -> None:
    # sshd answering before it accepts keys: the first two connections end, the third forwards
    script = (
        "n=$(($(cat count 2>/dev/null || echo 0) + 1)); echo $n > count; "
        "[ $n -ge 3 ] || exit 255; touch sock; exec sleep 30"
    )
    assert len(forward(tmp_path, script)) == 3


def test_connections_are_bounded_in_count_and_the_error_quotes_the_log(tmp_path: Path) -> None:
    with pytest.raises(Refused) as caught:
        forward(tmp_path, "echo Connection refused >&2; exit 255", attempts=3)
    assert str(caught.value).startswith("no engine socket forward after 3 connection(s) in ")
    assert str(caught.value).endswith(
        "ssh.log ends: Connection refused / Connection refused / Connection refused"
    )


def test_a_connection_hanging_past_the_deadline_is_stopped(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(Refused, match=r"after 1 connection\(s\)"):
        forward(tmp_path, "exec sleep 30", deadline=0.5)
    assert time.monotonic() - started < 10


def test_a_connection_the_caller_refuses_to_record_is_stopped(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []

    def refuse(proc: subprocess.Popen[bytes]) -> None:
        procs.append(proc)
        raise RuntimeError("the cluster is being removed")

    with pytest.raises(RuntimeError, match="being removed"):
        forward_socket(["sleep", "30"], tmp_path / "sock", time.monotonic() + 30, refuse, Refused)
    assert procs[0].poll() is not None  # stopped and reaped: nothing unrecorded keeps running
