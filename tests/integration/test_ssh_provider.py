"""The ssh provider on hosts that already exist: UML kernels booted bare (sshd and dockerd only:
no swarm, no images) by ``pytest_swarm.providers.uml_bare``, handed to whole pytest runs with
``--swarm-provider=ssh``, which do everything else: the swarm, labels, images, a stack.

After a normal end, a Ctrl-C (SIGINT to the pytest process) and a kill -9 followed by
``pytest-swarm sweep`` (both while the stack converges), nothing the run made is left on the
hosts: no swarm it formed, no labels it added, no stack, no task container, no ssh connection,
no run folder. On a swarm it found,
only what it added goes. Skipped, with the reason, where this host can't run UML nodes.
Traffic goes only to the hosts these tests boot and to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import testinfra

from pytest_swarm import images
from pytest_swarm.ownership import RUN_ROOT_ENV, SSH_STATE_FILE, Session
from pytest_swarm.providers import uml_host
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.machine import MachineProvider
from pytest_swarm.providers.uml_bare import BareHosts
from pytest_swarm.settings import Settings

StartPytest = Callable[..., subprocess.Popen[bytes]]  # conftest.py: background_pytest
NAMES = ["master-1", "worker-1", "worker-2"]
IMAGE = "pytest-swarm-test/ssh-sleeper:1"
# A container that waits for its stop signal: a static binary on an empty image (under 1 MB, so
# the copy over ssh to each host takes a moment, not minutes).
SLEEPER_C = r"""
#include <signal.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
int main(void) { signal(SIGTERM, stop); signal(SIGINT, stop); for (;;) pause(); }
"""
STACK = f"""
services:
  sleeper:
    image: {IMAGE}
    deploy:
      replicas: 2
      placement:
        constraints: [node.labels.tier == app]
  everywhere:
    image: {IMAGE}
    deploy:
      mode: global
"""
# The same on each host's own network. On these UML hosts the stack above (an overlay network)
# converged in 40 s, this one in 12 s (2026-11-30): the overlay path (a network made and removed
# with the stack) is the first test's, the others deploy this.
STACK_ON_HOST_NETWORK = f"""
services:
  sleeper:
    image: {IMAGE}
    deploy:
      replicas: 2
      placement:
        constraints: [node.labels.tier == app]
    networks: [hostnet]
  everywhere:
    image: {IMAGE}
    deploy:
      mode: global
    networks: [hostnet]
networks:
  hostnet:
    external: true
    name: host
"""
# Runs inside each pytest run: what the provider made, seen through the plugin's fixtures.
CHECKS = f"""
import os, pathlib, time
import pytest

def test_swarm_labels_and_engines_over_ssh(swarm):
    nodes = {{n.name: n for n in swarm.nodes()}}
    assert sorted(nodes) == {NAMES!r}
    assert nodes["master-1"].leader
    assert nodes["master-1"].labels["reliability"] == "high"
    assert nodes["worker-1"].labels["tier"] == nodes["worker-2"].labels["tier"] == "app"
    assert swarm.manager_url.startswith("unix://") and swarm.manager_url.endswith("/master-1/docker.sock")

def test_stack_converged_on_copied_images(swarm, swarm_stack):
    sleeper = swarm_stack.service("sleeper")
    assert (sleeper.running, sleeper.desired) == (2, 2)
    assert swarm_stack.service("everywhere").running == 3
    for engine in swarm.engines.values():
        engine.images.get("{IMAGE}")

def test_hosts_run_commands_and_open_no_engine_port(swarm_node_hosts):
    for name, host in swarm_node_hosts.items():
        assert host.check_output("hostname") == name
        listening = host.check_output("ss -Hltn")
        assert ":2375 " not in listening and ":2376 " not in listening, listening

def test_hold(swarm_stack):
    marker = os.environ.get("SSH_TEST_HOLD")
    if not marker:
        pytest.skip("no hold asked")
    pathlib.Path(marker).write_text(swarm_stack.name)
    time.sleep(600)  # until the outer test interrupts or kills this run
"""


def _skip_reason() -> str:
    if not Path("/dev/net/tun").exists():
        return "ssh provider on UML hosts: /dev/net/tun is missing on this host (the hosts' taps need it)"
    if not uml_host.UML_BINARY.is_file():
        return "ssh provider on UML hosts: user-mode-linux is not installed (apt-get install user-mode-linux)"
    reason = uml_host.missing_requirements()
    return f"ssh provider on UML hosts: {reason}" if reason else ""


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-")


@pytest.fixture(scope="module")
def run_root() -> Iterator[Path]:
    """Run folders of these tests only (short: ssh control sockets live there), so the sweep
    below sees no one else's runs."""
    root = Path(tempfile.mkdtemp(prefix="psw-", dir="/tmp"))
    before = os.environ.get(RUN_ROOT_ENV)
    os.environ[RUN_ROOT_ENV] = str(root)
    yield root
    if before is None:
        os.environ.pop(RUN_ROOT_ENV, None)
    else:
        os.environ[RUN_ROOT_ENV] = before
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sleeper_image(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("ssh-sleeper")
    (context / "sleeper.c").write_text(SLEEPER_C)
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(context / "sleeper"), str(context / "sleeper.c")],
        check=True,
        timeout=120,
    )
    (context / "Dockerfile").write_text('FROM scratch\nCOPY sleeper /sleeper\nCMD ["/sleeper"]\n')
    images.build_image(engine, context, [IMAGE], what="the ssh test's sleeper image")
    return IMAGE


@pytest.fixture(scope="module")
def hosts(run_root: Path, engine: docker.DockerClient, sleeper_image: str) -> Iterator[BareHosts]:
    """Three bare UML hosts: sshd and dockerd, nothing else."""
    with BareHosts(NAMES, local=engine) as bare:
        bare.boot()
        for name in NAMES:
            assert _host_facts(bare, name)["swarm"] == "inactive"
            assert _host_facts(bare, name)["image"] == "0", "bare hosts start without the stack's image"
        yield bare


@pytest.fixture
def project(pytester: pytest.Pytester, hosts: BareHosts) -> pytest.Pytester:
    """A project whose ini lists the bare hosts; the key comes from --swarm-ssh-key, the host
    keys from the ssh config the bare hosts wrote (--swarm-ssh-config)."""
    listed = "\n".join(f"    {name}=root@{hosts.addresses[name]}" for name in NAMES)
    pytester.makeini(
        "[pytest]\n"
        "swarm_stacks = stack.yml\n"
        "swarm_requirements = none\n"
        "swarm_node_labels =\n    master-1:reliability=high\n    worker-1:tier=app\n    worker-2:tier=app\n"
        f"swarm_ssh_hosts =\n{listed}\n"
    )
    (pytester.path / "stack.yml").write_text(STACK)
    (pytester.path / "stack-host-network.yml").write_text(STACK_ON_HOST_NETWORK)
    (pytester.path / "envs").mkdir()
    (pytester.path / "envs" / "tiny.env").write_text("ENV=TINY\n")
    pytester.makepyfile(test_on_hosts=CHECKS)
    return pytester


def _args(hosts: BareHosts, host_network: bool = True) -> list[str]:
    return [
        "-p", "no:randomly", "-p", "no:cacheprovider", "--swarm-provider=ssh", "--swarm-env=tiny",
        f"--swarm-ssh-key={hosts.key_file}", f"--swarm-ssh-config={hosts.ssh_config}",
        *(["--swarm-stacks=stack-host-network.yml"] if host_network else []),
    ]  # fmt: skip


def _host_facts(hosts: BareHosts, name: str) -> dict[str, str]:
    """What a host has that a run could have left: its swarm state, task containers, the
    docker_gwbridge network, services and node labels (on a manager), the test image."""
    script = (
        "echo swarm=$(docker info --format '{{.Swarm.LocalNodeState}}');"
        "echo tasks=$(docker ps -aq --filter label=com.docker.swarm.task.id | wc -l);"
        "echo gwbridge=$(docker network ls -q --filter name=docker_gwbridge | wc -l);"
        f"echo image=$(docker images -q {IMAGE} | wc -l);"
        "if [ \"$(docker info --format '{{.Swarm.ControlAvailable}}')\" = true ]; then"
        " echo services=$(docker service ls --format '{{.Name}}' | sort | tr '\\n' ' ');"
        " for n in $(docker node ls -q); do echo labels=$(docker node inspect $n"
        " --format '{{.Description.Hostname}}:{{range $k, $v := .Spec.Labels}}{{$k}}={{$v}},{{end}}'); done;"
        " fi"
    )
    result = hosts.ssh(name, script)
    assert result.returncode == 0, result.stderr
    facts: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        facts[key] = f"{facts[key]} {value.strip()}".strip() if key in facts else value.strip()
    return facts


def leftovers(hosts: BareHosts, run_root: Path, session: str) -> list[str]:
    """What a run formed on hosts that were in no swarm, and left: by host and kind."""
    found = []
    for name in NAMES:
        facts = _host_facts(hosts, name)
        if facts["swarm"] != "inactive":
            found.append(f"{name}: swarm {facts['swarm']}")
        if facts["tasks"] != "0":
            found.append(f"{name}: {facts['tasks']} task containers")
        if facts["gwbridge"] != "0":
            found.append(f"{name}: docker_gwbridge")
    if (run_root / session).exists():
        found.append(f"run folder {run_root / session}")
    found += _processes_naming(run_root / session)
    return found


def _processes_naming(folder: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{folder}/" in cmdline:
                found.append(f"process {entry.name}: {cmdline[:100]}")
    return found


def _sessions(run_root: Path) -> set[str]:
    return {p.parent.name for p in run_root.glob(f"*/{SSH_STATE_FILE}")}


def _session_of(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("[swarm] cluster ") and " ready in " in line:
            return line.split()[2]
    raise AssertionError(f"no 'cluster ... ready' line in:\n{output}")


def test_a_run_forms_the_swarm_deploys_and_takes_it_all_back(
    project: pytest.Pytester, hosts: BareHosts, run_root: Path
) -> None:
    result = project.runpytest_subprocess(*_args(hosts, host_network=False))
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "swarm: provider=ssh env=tiny workers=2 *",
            "[[]swarm] swarm formed on the hosts: master-1 Leader + 2 workers",
            "[[]swarm] stack TINY converged in * s",
            "cluster * removed",
        ]
    )
    session = _session_of(result.stdout.str())
    assert leftovers(hosts, run_root, session) == []
    for name in NAMES:  # copied by a run (the hosts booted without it); it stays for the next
        assert _host_facts(hosts, name)["image"] == "1"


def test_on_a_swarm_it_found_it_takes_back_only_what_it_added(
    project: pytest.Pytester, hosts: BareHosts, run_root: Path
) -> None:
    manager = hosts.addresses["master-1"]
    assert hosts.ssh("master-1", f"docker swarm init --advertise-addr {manager}").returncode == 0
    try:
        token = hosts.ssh("master-1", "docker swarm join-token -q worker").stdout.strip()
        for name in NAMES[1:]:
            joined = hosts.ssh(name, f"docker swarm join --token {token} {manager}:2377")
            assert joined.returncode == 0, joined.stderr
        owners = (
            "docker node update --label-add owner=team worker-1"
            " && docker node update --label-add tier=db worker-2"
        )
        assert hosts.ssh("master-1", owners).returncode == 0
        theirs = f"docker service create -d --name theirs --mode global {IMAGE}"
        assert hosts.ssh("master-1", theirs).returncode == 0, "a service of the swarm's owner"
        before = _host_facts(hosts, "master-1")

        result = project.runpytest_subprocess(*_args(hosts))
        result.assert_outcomes(passed=3, skipped=1)
        result.stdout.fnmatch_lines(["[[]swarm] using the swarm master-1 manages *"])
        after = _host_facts(hosts, "master-1")
        assert after["swarm"] == "active"
        assert after["services"] == before["services"] == "theirs"
        assert after["labels"] == before["labels"]  # tier=db back on worker-2, owner=team kept
        assert "worker-2:tier=db," in after["labels"] and "worker-1:owner=team," in after["labels"]
        assert not (run_root / _session_of(result.stdout.str())).exists()
    finally:
        hosts.ssh("master-1", "docker service rm theirs")
        for name in reversed(NAMES):  # the test's own swarm goes, and what its service left
            hosts.ssh(
                name,
                "docker swarm leave --force; docker ps -aq --filter label=com.docker.swarm.task.id"
                " | xargs -r docker rm -f; docker network rm docker_gwbridge",
            )


def _start_run(
    project: pytest.Pytester, hosts: BareHosts, marker: Path, start: StartPytest
) -> subprocess.Popen[bytes]:
    """A run in the background (held by the hold test, should its stack converge first); its
    output goes to run.log beside ``marker``."""
    with open(marker.with_name("run.log"), "wb") as log:
        return start(
            ["-s", *_args(hosts)],
            project.path,
            env={**os.environ, "SSH_TEST_HOLD": str(marker), "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_deploying(run: subprocess.Popen[bytes], hosts: BareHosts, run_root: Path, known: set[str]) -> str:
    """The run's session once its stack's services exist on the swarm it formed (converging)."""
    deadline = time.monotonic() + 240
    while True:
        assert run.poll() is None, f"the run ended ({run.returncode}) before its stack was deployed"
        assert time.monotonic() < deadline, "the run did not deploy its stack within 240 s"
        new = _sessions(run_root) - known
        if new and (run_root / next(iter(new)) / "stacks").exists():
            services = hosts.ssh(
                "master-1", "docker service ls -q --filter label=com.docker.stack.namespace=TINY"
            )
            if len(services.stdout.split()) == 2:
                return next(iter(new))
        time.sleep(0.5)


def test_ctrl_c_while_the_stack_converges_takes_back_what_the_run_made(
    project: pytest.Pytester,
    hosts: BareHosts,
    run_root: Path,
    tmp_path: Path,
    background_pytest: StartPytest,
) -> None:
    """SIGINT while the run's stack converges (its tests run commands on the hosts over ssh):
    the run ends interrupted, and the swarm, labels, stack and connections it made go."""
    known = _sessions(run_root)
    marker = tmp_path / "deployed"
    run = _start_run(project, hosts, marker, background_pytest)
    try:
        session = _wait_deploying(run, hosts, run_root, known)
        assert leftovers(hosts, run_root, session) != []
        run.send_signal(signal.SIGINT)
        run.wait(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    said = marker.with_name("run.log").read_text(errors="replace")[-3000:]
    assert run.returncode == pytest.ExitCode.INTERRUPTED, said
    assert leftovers(hosts, run_root, session) == []


def test_a_run_killed_while_the_stack_converges_is_taken_back_by_the_sweep_command(
    project: pytest.Pytester,
    hosts: BareHosts,
    run_root: Path,
    tmp_path: Path,
    background_pytest: StartPytest,
) -> None:
    known = _sessions(run_root)
    run = _start_run(project, hosts, tmp_path / "deployed", background_pytest)
    try:
        session = _wait_deploying(run, hosts, run_root, known)
    finally:
        run.kill()  # no finally, no down(): what a killed run leaves
        run.wait(30)
    left = leftovers(hosts, run_root, session)
    assert any("swarm active" in line for line in left), left
    swept = subprocess.run(
        [sys.executable, "-m", "pytest_swarm", "sweep"], capture_output=True, text=True, timeout=300
    )
    assert swept.returncode == 0, swept.stderr
    assert session in swept.stdout, swept.stdout
    assert leftovers(hosts, run_root, session) == []


def test_a_host_that_cant_be_reached_is_one_error_naming_it(
    project: pytest.Pytester, hosts: BareHosts
) -> None:
    project.makeini(
        "[pytest]\nswarm_stacks = stack.yml\nswarm_requirements = none\n"
        "swarm_node_labels =\n    worker-1:tier=app\n"
        f"swarm_ssh_hosts =\n    master-1=root@{hosts.addresses['master-1']}\n    worker-1=root@127.0.0.1:1\n"
    )
    result = project.runpytest_subprocess(
        *_args(hosts), "test_on_hosts.py::test_swarm_labels_and_engines_over_ssh"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*worker-1: can't log in to root@127.0.0.1:1 over ssh: *Connection refused*; check that "
            "`ssh -p 1 root@127.0.0.1 true` works*"
        ]
    )
    assert _host_facts(hosts, "master-1")["swarm"] == "inactive"


MACHINE_STAND_IN = r"""
import json, os, sys
machines = json.loads(os.environ["STANDIN_MACHINES"])  # name -> [address, key]
command, name = sys.argv[1], sys.argv[-1]
if name not in machines:
    sys.stderr.write(f'Host does not exist: "{name}"\n')
    sys.exit(1)
address, key = machines[name]
if command == "ip":
    print(address)
elif command == "inspect":
    print(json.dumps({"Name": name, "Driver": {"IPAddress": address, "SSHUser": "root", "SSHPort": 22,
                                               "SSHKeyPath": key}}))
else:
    sys.stderr.write(f"stand-in: {command} is not expected here\n")
    sys.exit(3)
"""


def test_the_machine_provider_hands_its_machines_to_the_ssh_code(
    hosts: BareHosts, run_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker-machine (a stand-in: ip and inspect of machines named with --swarm-machines) says
    where the machines are; from there the ssh code path reaches them, forms the swarm, labels it,
    copies images, runs commands, and takes it all back."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker-machine").write_text(f"#!{sys.executable}\n{MACHINE_STAND_IN}")
    (bin_dir / "docker-machine").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(
        "STANDIN_MACHINES", json.dumps({n: [hosts.addresses[n], str(hosts.key_file)] for n in NAMES})
    )
    settings = Settings(
        rootdir=tmp_path,
        provider="machine",
        machines=tuple(NAMES),
        node_labels={"master-1": {"reliability": "high"}},
        timeout=120,
    )
    provider = MachineProvider(ProviderRun(settings, Session.new(), lambda _line: None))
    try:
        cluster = provider.up()
        assert sorted(n.name for n in cluster.nodes()) == NAMES
        assert cluster.node("master-1").labels == {"reliability": "high"}
        assert cluster.manager_url == f"unix://{run_root / provider.session.id / 'master-1' / 'docker.sock'}"
        provider.load_images([IMAGE])
        for name in NAMES:
            assert testinfra.get_host(provider.host_spec(name)).check_output("hostname") == name
            assert images.image_exists(cluster.engines[name], IMAGE)
        assert (run_root / provider.session.id / "known_hosts").read_text().count("ssh-ed25519") == 3
    finally:
        provider.down()
    assert leftovers(hosts, run_root, provider.session.id) == []
