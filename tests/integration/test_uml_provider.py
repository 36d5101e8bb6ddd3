"""The uml provider on this machine: nodes with kernels of their own, IPVS, the routing mesh,
node failure, and nothing left behind.

Skipped, with the reason, where /dev/net/tun is missing or user-mode-linux is not installed.
Traffic goes only to the addresses of the nodes these tests create.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.types
import pytest

from pytest_swarm import images, mesh
from pytest_swarm.cluster import Cluster
from pytest_swarm.ownership import Session, run_root
from pytest_swarm.providers import uml_host, uml_kernel, uml_net, uml_state
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.engines import local_engine
from pytest_swarm.providers.uml import UmlProvider
from pytest_swarm.settings import Settings
from pytest_swarm.waiting import Poll, wait_for

HTTP_IMAGE = "pytest-swarm-test/uml-http:1"
# The page names the task container (its hostname), in the header the mesh probe reads.
HTTP_DOCKERFILE = """\
FROM debian:bookworm-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/*
CMD ["sh", "-c", "mkdir -p /srv && echo \\"Microservices Reddit in UMLTEST $(hostname) container\\" \\
  > /srv/index.html && cd /srv && exec python3 -m http.server 8000"]
"""
PORT = 18080


def _skip_reason() -> str:
    if not Path("/dev/net/tun").exists():
        return "uml provider: /dev/net/tun is missing on this host (the nodes' network taps need it)"
    if not uml_host.UML_BINARY.is_file():
        return "uml provider: user-mode-linux is not installed (apt-get install user-mode-linux)"
    return uml_host.missing_requirements()


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-")


def make_provider(
    engine: docker.DockerClient | None,
    session: Session | None = None,
    preload: Sequence[str] = (),
    **overrides: Any,
) -> UmlProvider:
    """A uml provider as resolved settings make it; ``engine`` None: the local engine, asked
    for only where the provider needs it."""
    options: dict[str, Any] = {
        "workers": 2,
        "node_labels": {"master-1": {"reliability": "high"}},
        "engine_labels": {"*": {"pool": "uml"}, "worker-1": {"zone": "b"}},
        "timeout": 120,
    }
    options.update(overrides)
    settings = Settings(rootdir=Path.cwd(), provider="uml", **options)
    local = local_engine if engine is None else lambda: engine
    run = ProviderRun(settings, session or Session.new(), lambda _message: None, local=local, preload=preload)
    return UmlProvider(run)


def recorded(session_id: str) -> dict[str, Any]:
    """What a session recorded (processes, taps, bridge, rule), read before it is removed."""
    state = uml_state.read_state(session_id)
    assert state is not None, f"no {uml_state.STATE_FILE} for session {session_id}"
    return state


def uml_leftovers(state: dict[str, Any]) -> list[str]:
    """What of a recorded UML session still exists, by kind and name."""
    found = []
    for name, node in state["nodes"].items():
        if node.get("pid") and uml_kernel.group_members(node["pid"], uml_host.UML_BINARY):
            found.append(f"{name}: UML processes of group {node['pid']}")
        if uml_kernel.alive(node.get("ssh_pid"), node.get("ssh_start")):
            found.append(f"{name}: ssh connection {node['ssh_pid']}")
        if Path(f"/sys/class/net/{node['tap']}").exists():
            found.append(f"tap {node['tap']}")
    if Path(f"/sys/class/net/{state['bridge']}").exists():
        found.append(f"bridge {state['bridge']}")
    if uml_net.rule_present(state["rule"]):
        found.append(f"iptables rule {' '.join(state['rule'])}")
    folder = run_root() / state["session"]
    if folder.exists():
        found.append(f"folder {folder}")
    # Any process at all still naming the run folder (kernels, ssh): found, not killed.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(folder) + "/" in cmdline:
                found.append(f"process {entry.name}: {cmdline[:80]}")
    return found


@pytest.fixture(scope="module")
def http_image(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny HTTP server image (debian:bookworm-slim + python3) that names its container."""
    context = tmp_path_factory.mktemp("uml-http")
    (context / "Dockerfile").write_text(HTTP_DOCKERFILE)
    images.build_image(engine, context, [HTTP_IMAGE], what="the uml test's HTTP image")
    return HTTP_IMAGE


@pytest.fixture(scope="module")
def provider(engine: docker.DockerClient, http_image: str) -> Iterator[UmlProvider]:
    provider = make_provider(engine, preload=[http_image])
    provider.up()
    try:
        yield provider
    finally:
        provider.down()


@pytest.fixture(scope="module")
def cluster(provider: UmlProvider) -> Cluster:
    assert provider.cluster is not None
    return provider.cluster


@pytest.fixture(scope="module")
def web(cluster: Cluster, http_image: str) -> Iterator[str]:
    """A 2-replica service on the workers, published on PORT through the ingress routing mesh."""
    service = cluster.client.services.create(
        http_image,
        name="umlweb",
        mode=docker.types.ServiceMode("replicated", replicas=2),
        constraints=["node.role==worker"],
        endpoint_spec=docker.types.EndpointSpec(ports={PORT: 8000}),
    )
    try:
        wait_for(
            lambda: _running_tasks(cluster, "umlweb", 2),
            what="umlweb: 2 running tasks",
            timeout=180,
            interval=1,
        )
        yield "umlweb"
    finally:
        service.remove()


def _running_tasks(cluster: Cluster, service: str, count: int) -> Poll[list[Any]]:
    tasks = cluster.service(service).running_tasks()
    names = cluster.node_names_by_id()
    return Poll(len(tasks) == count, f"running on {sorted(names.get(t.node_id, '?') for t in tasks)}", tasks)


def _task_hosts(cluster: Cluster, service: str) -> set[str]:
    return {t.container_id[:12] for t in cluster.service(service).running_tasks()}


def wait_mesh(cluster: Cluster, nodes: list[str], service: str, timeout: float = 120) -> dict[str, set[str]]:
    """Until every node in ``nodes`` answers on PORT and, over new connections, every task does."""

    def look() -> Poll[dict[str, set[str]]]:
        expected = _task_hosts(cluster, service)
        seen = {}
        for node in nodes:
            answers = mesh.probe(cluster.addresses[node], PORT, count=8, timeout=2)
            seen[node] = {a.host for a in answers if a.status == 200}
        done = bool(expected) and all(hosts == expected for hosts in seen.values())
        return Poll(done, f"tasks {sorted(expected)}; answered per node {seen}", seen)

    poll = wait_for(look, what="every node answering, every task behind it", timeout=timeout, interval=2)
    return poll.value or {}


def wait_node_state(cluster: Cluster, name: str, state: str, timeout: float = 120) -> None:
    wait_for(
        lambda: Poll(cluster.node(name).state == state, cluster.node(name).state),
        what=f"{name} {state}",
        timeout=timeout,
        interval=0.5,
    )


# -- the shared 3-node cluster -----------------------------------------------------------------
def test_three_nodes_ready_master_leader(cluster: Cluster) -> None:
    nodes = {n.name: n for n in cluster.nodes()}
    assert sorted(nodes) == ["master-1", "worker-1", "worker-2"]
    assert nodes["master-1"].leader
    assert [n.name for n in nodes.values() if n.role == "manager"] == ["master-1"]
    assert all(n.state == "ready" and n.availability == "active" for n in nodes.values())
    assert nodes["master-1"].labels == {"reliability": "high"}
    assert nodes["worker-1"].engine_labels == {"pool": "uml", "zone": "b"}
    assert nodes["worker-2"].engine_labels == {"pool": "uml"}


def test_every_node_has_ipvs(cluster: Cluster) -> None:
    assert cluster.capabilities == {n: {"ipvs": True} for n in ("master-1", "worker-1", "worker-2")}


def test_engine_reached_over_a_unix_socket_and_listening_on_no_port(provider: UmlProvider) -> None:
    """The API is the node's unix socket forwarded over ssh: no engine port on any network."""
    import testinfra

    cluster = provider.cluster
    assert cluster is not None and cluster.manager_url.startswith(f"unix://{provider.run_dir}/")
    for name in cluster.addresses:
        host = testinfra.get_host(provider.host_spec(name))
        listening = host.check_output("ss -Hltn")
        assert ":2375 " not in listening and ":2376 " not in listening, listening
        assert host.check_output("hostname") == name
        assert host.check_output("uname -r").startswith(uml_host.uml_kernel()[0])


def test_addresses_are_private_and_on_the_session_bridge(provider: UmlProvider, cluster: Cluster) -> None:
    import ipaddress

    state = recorded(provider.session.id)
    subnet = ipaddress.IPv4Network(state["subnet"])
    assert subnet.subnet_of(ipaddress.IPv4Network("172.16.0.0/12"))
    for name, address in cluster.addresses.items():
        assert ipaddress.IPv4Address(address) in subnet
        assert cluster.node(name).addr == address
        assert Path(f"/sys/class/net/{state['nodes'][name]['tap']}/master").resolve().name == state["bridge"]


def test_preloaded_image_is_on_every_node_before_any_load(provider: UmlProvider, http_image: str) -> None:
    assert provider.cluster is not None
    for name, client in provider.cluster.engines.items():
        assert images.image_exists(client, http_image), name


def test_routing_mesh_every_node_answers_and_every_task_behind_it(cluster: Cluster, web: str) -> None:
    seen = wait_mesh(cluster, ["master-1", "worker-1", "worker-2"], web)
    assert len(_task_hosts(cluster, web)) == 2
    assert all(len(hosts) == 2 for hosts in seen.values()), seen


def test_stopped_worker_goes_down_tasks_move_and_it_rejoins(
    provider: UmlProvider, cluster: Cluster, web: str
) -> None:
    pid = recorded(provider.session.id)["nodes"]["worker-2"]["pid"]
    provider.stop_node("worker-2")
    assert not uml_kernel.group_members(pid, uml_host.UML_BINARY), "the node's kernel processes are gone"
    try:
        wait_node_state(cluster, "worker-2", "down")
        poll = wait_for(
            lambda: _on_nodes(cluster, web, {"worker-1"}),
            what="umlweb: 2 running tasks, all on worker-1",
            timeout=120,
            interval=1,
        )
        assert poll.done
        wait_mesh(cluster, ["master-1", "worker-1"], web)
    finally:
        provider.start_node("worker-2")
    assert cluster.node("worker-2").state == "ready"
    assert cluster.node("worker-2").availability == "active"


def _on_nodes(cluster: Cluster, service: str, nodes: set[str]) -> Poll[None]:
    names = cluster.node_names_by_id()
    running = [names.get(t.node_id, "?") for t in cluster.service(service).running_tasks()]
    return Poll(len(running) == 2 and set(running) <= nodes, f"running on {sorted(running)}")


# -- clusters of their own ----------------------------------------------------------------------
def test_add_load_remove_and_down_leave_nothing(engine: docker.DockerClient, tmp_path: Path) -> None:
    context = tmp_path / "tiny"
    context.mkdir()
    (context / "marker").write_text("uml\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY marker /marker\n")
    tiny = "pytest-swarm-test/uml-tiny:1"
    images.build_image(engine, context, [tiny])
    provider = make_provider(engine, workers=1)
    try:
        provider.up()
        name = provider.add_node()
        assert name == "worker-2"
        provider.load_images([tiny])  # over the network: not preloaded
        assert provider.cluster is not None
        assert all(images.image_exists(c, tiny) for c in provider.cluster.engines.values())
        tap = recorded(provider.session.id)["nodes"]["worker-2"]["tap"]
        provider.remove_node("worker-2")
        assert not Path(f"/sys/class/net/{tap}").exists()
        assert not (provider.run_dir / "worker-2").exists()
        assert sorted(n.name for n in provider.cluster.nodes()) == ["master-1", "worker-1"]
        state = recorded(provider.session.id)
    finally:
        provider.down()
    assert uml_leftovers(state) == []


def test_kept_cluster_is_reattached_by_another_provider() -> None:
    """--swarm-reuse: a later run reaches the kept nodes; a dead ssh connection is opened again."""
    provider = make_provider(None, workers=0)
    again: UmlProvider | None = None
    try:
        provider.up()
        record = provider.keep()
        assert record["DOCKER_HOST"] == provider.socket_url("master-1")
        node = recorded(provider.session.id)["nodes"]["master-1"]
        # as if it ended with the run that kept it
        uml_kernel.kill_recorded(node["ssh_pid"], node["ssh_start"])
        again = make_provider(None, session=Session(id=provider.session.id, owner=Session.new().owner))
        cluster = again.attach(record["nodes"].split(","))
        assert [n.name for n in cluster.nodes()] == ["master-1"]
        assert cluster.capabilities == {"master-1": {"ipvs": True}}
        assert recorded(provider.session.id)["nodes"]["master-1"]["ssh_pid"] != node["ssh_pid"]
        state = recorded(provider.session.id)
    finally:
        if again is not None:
            again.down()
        provider.down()
    assert uml_leftovers(state) == []


def test_interrupted_up_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the nodes boot (kernels running), and again while they are being removed:
    up() still removes everything it made. The interrupts are raised where Python raises a
    Ctrl-C's KeyboardInterrupt (in the thread that runs, here a boot thread, then the removal),
    not sent as signals: a signal lands at the main thread's next bytecode, whenever that is."""
    provider = make_provider(None, workers=1)
    seen: dict[str, Any] = {}
    once = threading.Lock()
    real_connect = provider._connect
    real_kill = uml_kernel.kill_uml
    kills: list[int | None] = []

    def connect_then_interrupt(node: str, deadline: float) -> None:
        if once.acquire(blocking=False):  # both boot threads get here: one Ctrl-C only
            with provider._guard:  # what the run holds now (its file may be mid-write)
                seen.update(copy.deepcopy(provider._state))
            raise KeyboardInterrupt("Ctrl-C while the kernels boot")
        real_connect(node, deadline)

    def interrupt_first_kill(pid: int | None, start: str | None, timeout: float = 15.0) -> str:
        kills.append(pid)
        if len(kills) == 1:
            raise KeyboardInterrupt("the second Ctrl-C, during the removal")
        return real_kill(pid, start, timeout)

    monkeypatch.setattr(provider, "_connect", connect_then_interrupt)
    monkeypatch.setattr(uml_state, "kill_uml", interrupt_first_kill)
    with pytest.raises(KeyboardInterrupt):
        provider.up()
    assert any(node.get("pid") for node in seen["nodes"].values()), "a kernel was running at the interrupt"
    assert len(kills) > 2, "the removal was interrupted and ran again"
    # Threads still booting stop on their own (no new process once down() began); every tap
    # was named before the first boot, and any process naming the run folder is found too.
    wait_for(
        lambda: Poll(not uml_leftovers(seen), str(uml_leftovers(seen))),
        what="nothing left of the interrupted cluster",
        timeout=30,
        interval=0.5,
    )


KILLED_RUN = """
import pathlib, sys, time
from pytest_swarm.ownership import Session
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.uml import UmlProvider
from pytest_swarm.settings import Settings
settings = Settings(rootdir=pathlib.Path.cwd(), provider="uml", workers=1, timeout=120)
provider = UmlProvider(ProviderRun(settings, Session.new(), lambda _m: None))
provider.up()
print(provider.session.id, flush=True)
time.sleep(600)
"""


def test_sweep_removes_what_a_killed_run_left() -> None:
    """A run SIGKILLed with its cluster up leaves it all; the next run's sweep removes it."""
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        session_id = run.stdout.readline().strip()
        assert session_id, "the run printed its session id once its cluster was up"
        state = recorded(session_id)
    finally:
        run.kill()  # no finally, no down(): what a killed run leaves
        run.wait(30)
    assert uml_leftovers(state) != []
    messages: list[str] = []
    assert session_id in uml_state.sweep(messages.append), messages
    assert uml_leftovers(state) == []
