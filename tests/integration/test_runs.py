"""Whole pytest runs of the integration project (pytester, subprocess) on real dind swarms."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import docker
import pytest

from pytest_swarm.ownership import SESSION_LABEL

Leftovers = Callable[..., list[str]]
pytestmark = pytest.mark.usefixtures("engine")


def session_of(result: pytest.RunResult) -> str:
    match = re.search(r"cluster (\w{8}) (?:ready|reattached|removed|kept)", result.stdout.str())
    assert match, result.stdout.str()
    return match.group(1)


def test_a_run_provisions_deploys_and_leaves_nothing(
    project: pytest.Pytester, engine: docker.DockerClient, leftovers: Leftovers
) -> None:
    result = project.runpytest_subprocess("--swarm-env=small", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "swarm: provider=dind env=small workers=2 *stacks=stacks/small.yml",
            "[[]swarm] cluster * ready in * s",
            "[[]swarm]   master-1: manager (Leader), ready/active, labels reliability=high, engine *, ipvs=*",
            "[[]swarm]   worker-2: worker, ready/active, labels disk=ssd, engine *",
            "[[]swarm] stack SMALL converged in * s",
            "cluster * removed",
        ]
    )
    assert leftovers(engine, session_of(result)) == []


def test_unset_variable_is_named_before_deploying(
    project: pytest.Pytester, engine: docker.DockerClient, leftovers: Leftovers
) -> None:
    before = leftovers(engine)
    result = project.runpytest_subprocess("--swarm-env=needy", "test_small_stack.py::test_stack_converged")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: swarm: variables the stack needs are not set in *needy.env:",
            "*SLEEPER_REPLICAS (used in *small.yml)",
            "add them to *needy.env (KEY=VALUE)",
        ]
    )
    assert sorted(leftovers(engine)) == sorted(before)  # stopped before anything was made


def test_kept_cluster_is_reused_then_removed(
    project: pytest.Pytester, engine: docker.DockerClient, leftovers: Leftovers
) -> None:
    first = project.runpytest_subprocess("--swarm-env=small", "--swarm-keep=always")
    first.assert_outcomes(passed=3)
    session = session_of(first)
    try:
        first.stdout.fnmatch_lines(
            [f"cluster {session} kept: DOCKER_HOST=unix://*docker.sock docker node ls*"]
        )
        assert leftovers(engine, session)

        second = project.runpytest_subprocess("--swarm-env=small", "--swarm-reuse")
        second.assert_outcomes(passed=3)
        second.stdout.fnmatch_lines([f"[[]swarm] cluster {session} reattached in * s"])
        reattach = float(re.search(r"reattached in ([\d.]+) s", second.stdout.str()).group(1))  # type: ignore[union-attr]
        assert reattach < 10
        assert leftovers(engine, session)  # still kept for the next run
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "pytest_swarm", "down", "--rootdir", str(project.path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert f"cluster {session} removed" in down.stdout
    assert leftovers(engine, session) == []


def wait_for_containers(engine: docker.DockerClient, known: set[str], timeout: float = 120) -> str:
    """The session id of the first new labelled container; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container in engine.api.containers(all=True, filters={"label": SESSION_LABEL}):
            session = container["Labels"][SESSION_LABEL]
            if session not in known:
                return session
        time.sleep(0.1)
    raise AssertionError("no node container appeared")


def known_sessions(engine: docker.DockerClient) -> set[str]:
    # One list call, no inspect per container: containers of another run may vanish meanwhile.
    listed = engine.api.containers(all=True, filters={"label": SESSION_LABEL})
    return {c["Labels"][SESSION_LABEL] for c in listed}


StartPytest = Callable[..., subprocess.Popen[bytes]]


def start_run(project: pytest.Pytester, start: StartPytest) -> subprocess.Popen[bytes]:
    return start(
        ["--swarm-env=small", "-p", "no:randomly"],
        project.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_while_starting_leaves_nothing(
    project: pytest.Pytester,
    engine: docker.DockerClient,
    leftovers: Leftovers,
    background_pytest: StartPytest,
    sig: signal.Signals,
) -> None:
    known = known_sessions(engine)
    run = start_run(project, background_pytest)
    try:
        session = wait_for_containers(engine, known)
        run.send_signal(sig)
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == pytest.ExitCode.INTERRUPTED  # not a run that went on to its end
    assert leftovers(engine, session) == []


def killed_run(project: pytest.Pytester, engine: docker.DockerClient, start: StartPytest) -> str:
    """Start a run, SIGKILL it once its node containers exist (no cleanup can run); its session."""
    known = known_sessions(engine)
    run = start_run(project, start)
    try:
        return wait_for_containers(engine, known)
    finally:
        run.kill()
        run.wait(timeout=60)


def test_killed_run_is_swept_by_the_next(
    project: pytest.Pytester,
    engine: docker.DockerClient,
    leftovers: Leftovers,
    background_pytest: StartPytest,
) -> None:
    session = killed_run(project, engine, background_pytest)
    assert leftovers(engine, session)
    result = project.runpytest_subprocess("--swarm-env=small", "test_small_stack.py::test_cluster_shape")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*swept what earlier runs left: sessions *{session}*"])
    assert leftovers(engine, session) == []


def test_a_failing_test_carries_evidence_in_terminal_and_junit(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_broken="""
def test_expects_too_many(swarm_stack):
    assert swarm_stack.service("sleeper").running == 99
"""
    )
    junit = project.path / "report.xml"
    result = project.runpytest_subprocess("--swarm-env=small", "test_broken.py", f"--junitxml={junit}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*swarm evidence: stack SMALL*",
            "--- docker node ls",
            "master-1: manager (Leader), ready/active*",
            "--- docker stack ps --no-trunc SMALL",
            "*SMALL_sleeper.1 *debian:bookworm-slim*Running*",
            "--- failing tasks",
        ]
    )
    xml = junit.read_text()
    assert 'property name="swarm_evidence_SMALL"' in xml
    assert "SMALL_sleeper.1" in xml


def test_killed_run_is_removed_by_the_sweep_command(
    project: pytest.Pytester,
    engine: docker.DockerClient,
    leftovers: Leftovers,
    background_pytest: StartPytest,
) -> None:
    """What the nightly workflow's teardown runs (``python -m pytest_swarm sweep``) after a kill."""
    session = killed_run(project, engine, background_pytest)
    assert leftovers(engine, session)
    swept = subprocess.run(
        [sys.executable, "-m", "pytest_swarm", "sweep"], capture_output=True, text=True, timeout=300
    )
    assert swept.returncode == 0, swept.stderr
    assert session in swept.stdout, swept.stdout
    assert leftovers(engine, session) == []


def read_until(run: subprocess.Popen[bytes], pattern: str, timeout: float) -> tuple[str, str]:
    """The run's output until a line matching ``pattern`` (that line, all so far); bounded."""
    assert run.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(run.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and run.poll() is None:
            if not selector.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                continue
            line = run.stdout.readline().decode(errors="replace")
            seen.append(line)
            if re.search(pattern, line):
                return line, "".join(seen)
    raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s; the run said:\n{''.join(seen)}")


def test_ctrl_c_in_the_middle_of_a_disruptive_scenario_leaves_nothing(
    project: pytest.Pytester,
    engine: docker.DockerClient,
    leftovers: Leftovers,
    background_pytest: StartPytest,
) -> None:
    """SIGINT while a worker of the resilience suite's own cluster is down: the run ends, and
    every container, network, volume and folder of each session it made is gone."""
    known = known_sessions(engine)
    suite = ["--pyargs", "pytest_swarm.acceptance.test_resilience", "-k", "killed_worker"]
    run = background_pytest(
        ["--swarm-env=small", "-p", "no:randomly", "-s", *suite],
        project.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line, _ = read_until(run, r"resilience: worker lost: worker-\d killed", timeout=300)
        sessions = known_sessions(engine) - known
        run.send_signal(signal.SIGINT)
        rest, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert sessions, "the suite's own cluster had no labelled container while a worker was down"
    assert run.returncode == pytest.ExitCode.INTERRUPTED, rest.decode(errors="replace")
    for session in sessions:
        assert leftovers(engine, session) == [], f"session {session} after Ctrl-C ({line.strip()})"
