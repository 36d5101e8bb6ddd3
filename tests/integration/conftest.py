"""Integration tests run against a real Docker engine; without one they are skipped, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_swarm.ownership import SESSION_LABEL, cgroup_dirs, run_root

PROJECT = Path(__file__).parent / "project"
# The project folder is what the pytester runs copy and run with their own options.
collect_ignore = ["project"]
# ``python -m pytest`` that hears Ctrl-C whatever it inherited: a process started in the
# background of a non-interactive shell (`cmd &` in a script) inherits SIGINT ignored, and Python
# then leaves it ignored, so a test's SIGINT would be lost and the run would go on to its end.
PYTEST_HEARING_CTRL_C = (
    "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.exit(pytest.console_main())"
)


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    """The local Docker engine; the test is skipped (with the reason) when none answers."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # any failure to reach it means: no engine for these tests
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        pytest.skip(f"needs a Docker engine; none answers at {host} ({type(exc).__name__})")
    return client


def find_leftovers(engine: docker.DockerClient, session_id: str | None = None) -> list[str]:
    """Everything labelled by pytest-swarm (or by one session) still present, by kind and name."""
    label = SESSION_LABEL if session_id is None else f"{SESSION_LABEL}={session_id}"
    # Low-level list calls: no per-object inspect that could race with another run's cleanup.
    found = [f"container {c['Names'][0]}" for c in engine.api.containers(all=True, filters={"label": label})]
    found += [f"network {n['Name']}" for n in engine.api.networks(filters={"label": label})]
    found += [
        f"volume {v['Name']}" for v in engine.api.volumes(filters={"label": label}).get("Volumes") or []
    ]
    prefix = "pytest-swarm-" + (session_id + "-" if session_id else "")
    found += [f"cgroup {p}" for p in cgroup_dirs(prefix)]
    if session_id is not None and (run_root() / session_id).exists():
        found.append(f"folder {run_root() / session_id}")
    return found


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester folder holding the integration project (small stack, envs, pytest.ini)."""
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    return pytester


@pytest.fixture
def leftovers() -> Callable[..., list[str]]:
    """``leftovers(engine, session_id=None)``: what pytest-swarm left, by kind and name."""
    return find_leftovers


def start_pytest(args: Sequence[str], cwd: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``python -m pytest ARGS`` in ``cwd``, in the background, answering SIGINT as a run started
    from a terminal does (the Ctrl-C tests send it one)."""
    return subprocess.Popen([sys.executable, "-c", PYTEST_HEARING_CTRL_C, *args], cwd=cwd, **popen)


@pytest.fixture
def background_pytest() -> Callable[..., subprocess.Popen[bytes]]:
    """``background_pytest(args, cwd, **popen)``: see start_pytest."""
    return start_pytest
