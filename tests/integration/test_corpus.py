"""The suites on a corpus of stacks written the ways teams write them (tests/corpus/).

Each stack folder holds what a team has (compose files, env files, at most a short pytest.ini)
and ``expected.yml``: the findings the suites must report (test name -> words its failure must
say: the service, the declared value, the requirement) and the skips it may have. Every other
test must pass. A finding missed, a failure not expected or a skip not allowed fails here.

The stacks run one after the other, as a user runs ``pytest --pyargs pytest_swarm.acceptance``
in the stack's folder, from a wheel of this project installed in a fresh venv (nothing of this
repository but the wheel), on one dind cluster (one per worker under ``-n 2 --dist load``, as
CI runs it): the first run keeps it (``--swarm-keep=always``), the others reuse it
(``--swarm-reuse``), each run's stacks are removed before the next, and the venv's
``pytest-swarm down`` removes the cluster at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from pytest_swarm.ownership import read_kept

REPOSITORY = Path(__file__).parent.parent.parent
CORPUS = REPOSITORY / "tests" / "corpus"
STACKS = sorted(p.parent.name for p in CORPUS.glob("*/expected.yml"))
# Skips every stack may have here: the kernel of this machine's dind nodes has no IPVS.
KERNEL_SKIPS = ("have no IPVS",)
# The shared cluster's labels, as the corpus stacks' constraints need them from the start.
CLUSTER_ENV = {"SWARM_ENGINE_LABELS": "*:provider=google", "SWARM_NODE_LABELS": "master-1:reliability=high"}
RUN_TIMEOUT = 1200

pytestmark = pytest.mark.usefixtures("engine")


@dataclass
class Expected:
    args: list[str]
    findings: dict[str, list[str]]
    skips: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> Expected:
        data: dict[str, Any] = yaml.safe_load((folder / "expected.yml").read_text())
        return cls(list(data["args"]), dict(data.get("findings") or {}), list(data.get("skips") or []))


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # passed, failed, error, skipped
    message: str


def cases(junit: Path) -> list[Case]:
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = f"{element.get('message', '')}\n{element.text or ''}"
                break
        found.append(Case(case.get("name", ""), outcome, message))
    return found


def matches(name: str, pattern: str) -> bool:
    """``test_requirement[L03-*]``: ``*`` is any text, brackets are themselves."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), name) is not None


def judge(expected: Expected, seen: list[Case]) -> list[str]:
    """What is wrong with a run's outcomes against what the stack must show."""
    wrong = []
    for pattern, words in expected.findings.items():
        matching = [c for c in seen if matches(c.name, pattern)]
        if not matching:
            wrong.append(f"{pattern}: no such test ran (expected it to fail saying {words})")
        for case in matching:
            missing = [w for w in words if w not in case.message]
            if case.outcome != "failed" or missing:
                wrong.append(f"{case.name}: expected a failure saying {missing or words}, got {case.outcome}")
    for case in seen:
        if any(matches(case.name, p) for p in expected.findings):
            continue
        if case.outcome == "skipped" and any(s in case.message for s in (*expected.skips, *KERNEL_SKIPS)):
            continue
        if case.outcome != "passed":
            wrong.append(f"{case.name}: {case.outcome}: {case.message.strip()[:600]}")
    return wrong


def run(command: list[str], **how: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **how)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel of this project (built here) and what it depends on."""
    root = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the repository's build/: two xdist workers must not build at once
    with open(Path(tempfile.gettempdir()) / "pytest-swarm-tests-wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root), str(REPOSITORY)],
            timeout=300,
        )
    (wheel,) = root.glob("pytest_swarm-*.whl")
    run([sys.executable, "-m", "venv", str(root / "venv")], timeout=120)
    run([str(root / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check", str(wheel)], timeout=600)
    return root / "venv"


@pytest.fixture(scope="module")
def workplace(tmp_path_factory: pytest.TempPathFactory, venv: Path) -> Iterator[Path]:
    """A project folder the stacks take turns in (their shared cluster is kept for it), beside
    a copy of the corpus's image recipes."""
    root = tmp_path_factory.mktemp("corpus")
    shutil.copytree(CORPUS / "images", root / "images")
    project = root / "project"
    project.mkdir()
    try:
        yield project
    finally:
        run([str(venv / "bin/pytest-swarm"), "down", "--rootdir", str(project)], timeout=300)


def remove_stacks(project: Path) -> None:
    """Take every stack off the kept cluster, so the next stack starts on an empty swarm."""
    record = read_kept(project)
    if record is None:
        return
    client = docker.DockerClient(base_url=str(record["DOCKER_HOST"]), timeout=120)
    try:
        names = {
            s["Spec"]["Labels"].get("com.docker.stack.namespace")
            for s in client.api.services()
            if s["Spec"].get("Labels", {}).get("com.docker.stack.namespace")
        }
        env = {**os.environ, "DOCKER_HOST": str(record["DOCKER_HOST"])}
        for name in sorted(n for n in names if n):
            subprocess.run(
                ["docker", "stack", "rm", name], env=env, capture_output=True, timeout=120, check=False
            )
        for _ in range(240):  # until their services, networks and volumes are gone (<= 120 s)
            left = client.api.services() or [
                n for n in client.api.networks() if (n.get("Labels") or {}).get("com.docker.stack.namespace")
            ]
            if not left:
                break
            subprocess.run(["sleep", "0.5"], check=True)
    finally:
        client.close()


@pytest.mark.parametrize("name", STACKS)
def test_the_suites_find_what_the_stack_gets_wrong_and_nothing_else(
    venv: Path, workplace: Path, name: str
) -> None:
    source = CORPUS / name
    expected = Expected.read(source)
    for item in workplace.iterdir():  # the kept cluster's record stays
        if item.name != ".pytest-swarm":
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    shutil.copytree(source, workplace, dirs_exist_ok=True, ignore=shutil.ignore_patterns("expected.yml"))
    junit = workplace.parent / f"{name}.xml"
    command = [
        str(venv / "bin/python"),
        "-m",
        "pytest",
        "--pyargs",
        "pytest_swarm.acceptance",
        "-p",
        "no:cacheprovider",
    ]
    command += ["--swarm-reuse", "--swarm-keep=always", f"--junitxml={junit}", *expected.args]
    # The disruptive suite judges what swarm does when nodes fail, not what the files say: it
    # brings up a cluster of its own per run (about two minutes each); the reddit stack has it.
    command += ["-m", "not disruptive"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_") and k != "PYTHONPATH"}
    try:
        run = subprocess.run(
            command,
            cwd=workplace,
            env={**env, **CLUSTER_ENV},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    finally:
        remove_stacks(workplace)
    output = run.stdout[-6000:] + run.stderr[-2000:]
    assert junit.is_file(), f"{name}: no JUnit file; the run said:\n{output}"
    wrong = judge(expected, cases(junit))
    assert not wrong, f"{name}:\n" + "\n".join(wrong) + f"\n\n{json.dumps(command)}\n{output}"
    assert run.returncode == (1 if expected.findings else 0), output
