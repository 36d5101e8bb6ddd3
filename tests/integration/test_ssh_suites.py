"""This repository's suites through ``--swarm-provider=ssh`` on bare UML hosts (booted by
``pytest_swarm.providers.uml_bare``: sshd and dockerd, no swarm, no images), as a team runs
them on hosts of its own; afterwards nothing the run made is left on them. Skipped, with the
reason, where this host can't run UML nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from test_ssh_provider import NAMES, _session_of, _skip_reason, leftovers, run_root

from pytest_swarm.providers.uml_bare import BareHosts

__all__ = ["run_root"]  # the fixture, shared with test_ssh_provider.py
ASKED = "PYTEST_SWARM_SSH_SUITES"  # set to 1 to run this module
pytestmark = [
    pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-"),
    # ~9 minutes on a slow machine of CI's kind, which CI's 90 can't spare; the ssh provider's own
    # runs (test_ssh_provider.py) and the suites on UML ("Running the tests") stay in CI.
    pytest.mark.skipif(
        os.environ.get(ASKED) != "1",
        reason=f"the suites over ssh take ~9 min on UML hosts, not in CI for its time: run with {ASKED}=1",
    ),
]


REPOSITORY = Path(__file__).resolve().parents[2]
# This repository's suites whose checks reach the cluster through the provider: its nodes, their
# engines (over the forwarded sockets) and addresses (the IPVS ones: the routing mesh, VIPs), on
# the stack scaled down as the UML runs of "Running the tests" are (3 kernels on 2 cores hold one
# reddit stack). The suites that judge the stack's declarations the same way on any provider
# (limits, restarts, updates) run on dind in "Running the tests" and in the corpus; over ssh on
# these kernels they made CI's longest test longer still (bench/README.md). Not test_scaling
# (the ssh provider can't add nodes), not test_requirements (the lesson's minimum replicas would
# fail the scaled-down stack, and it reads only the files), not test_environments (two stacks
# don't fit).
SUITES = ["test_cluster", "test_placement", "test_replicas", "test_infra", "test_mesh", "test_app"]
SCALED_DOWN = ["--swarm-set=UI_REPLICAS=2,POST_REPLICAS=1,COMMENT_REPLICAS=1", "--swarm-requirements=none"]


@pytest.fixture(scope="module")
def hosts(run_root: Path, engine: docker.DockerClient) -> Iterator[BareHosts]:
    """Bare UML hosts of this module's own: the other module's tests take back what their runs
    made, and their timings should not depend on what a whole suite run left before them."""
    with BareHosts(NAMES, local=engine) as bare:
        bare.boot()
        yield bare


def test_the_lessons_suites_pass_over_ssh_and_leave_nothing(
    hosts: BareHosts, run_root: Path, tmp_path: Path
) -> None:
    """This repository's reddit stack, its images copied over ssh, checked by the suites as a
    team would run them on its own hosts; the IPVS ones (the routing mesh, VIPs) run, since
    these kernels have it."""
    junit = tmp_path / "suites.xml"
    listed = "\n".join(f"{name}=root@{hosts.addresses[name]}" for name in NAMES)
    argv = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
        "--swarm-env=dev", "--swarm-provider=ssh", "-o", f"swarm_ssh_hosts={listed}",
        f"--swarm-ssh-key={hosts.key_file}", f"--swarm-ssh-config={hosts.ssh_config}",
        *SCALED_DOWN, f"--junitxml={junit}", *(f"acceptance/{suite}.py" for suite in SUITES),
    ]  # fmt: skip
    run = subprocess.run(
        argv,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, failures_of(junit) + output[-3000:]
    passed = {
        f"{case.get('classname')}::{case.get('name')}"
        for case in ET.parse(junit).getroot().iter("testcase")
        if not any(child.tag in ("skipped", "failure", "error") for child in case)
    }
    for ipvs in ("test_mesh", "test_app"):
        assert any(f".{ipvs}::" in name for name in passed), f"no {ipvs} test passed:\n{output[-3000:]}"
    assert leftovers(hosts, run_root, _session_of(output)) == []


def failures_of(junit: Path) -> str:
    """Each failed test of the run and its message first: the output's tail is its evidence."""
    if not junit.is_file():
        return ""
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for problem in case:
            if problem.tag in ("failure", "error"):
                name = f"{case.get('classname')}::{case.get('name')}"
                found.append(f"{name}: {(problem.get('message') or '')[:800]}")
    return "\n".join(found) + "\n---\n" if found else ""
