"""The images of stacks/images run as plain containers on a bridge network the test makes.

No swarm and no IPVS needed: the containers find each other by the network aliases the stack
gives them (post_db and comment_db for mongo, post, comment), and the test talks to them on
their bridge addresses only. Everything the test starts carries the label
``io.pytest-swarm.test=app-images`` and is removed by id when the module ends.
"""

from __future__ import annotations

import re
import signal
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from pytest_swarm.images import build_image
from pytest_swarm.waiting import Poll, wait_for

IMAGES = Path(__file__).parents[2] / "stacks" / "images"
LABELS = {"io.pytest-swarm.test": "app-images"}
NAMESPACE = "pytest-swarm-test"
APP = ("mongo", "post", "comment", "ui")
ON_FAILURE = ("post", "comment", "ui")  # restart_policy condition in stacks/docker-compose.yml
MONITORING = ("prometheus", "node-exporter")
HEALTH_TIMEOUT = 60.0  # healthcheck: 10 s start period, then 3 checks 5 s apart, with margin
HTTP = 5.0  # seconds per request to a container


@pytest.fixture(scope="module")
def built(engine: docker.DockerClient) -> dict[str, str]:
    """Every image of stacks/images built as ``pytest-swarm-test/<name>:1.0``, plus ``ui-broken``.

    Yields a mapping of name -> image reference. The images stay (they are the build cache that
    makes the next run fast); only containers, networks and volumes are removed.
    """
    refs: dict[str, str] = {}
    for name in APP + MONITORING:
        refs[name] = f"{NAMESPACE}/{name}:1.0"
        build_image(engine, IMAGES / name, [refs[name]], buildargs={"VERSION": "1.0"}, what=name)
    refs["ui-broken"] = f"{NAMESPACE}/ui:1.0-broken"
    build_image(
        engine,
        IMAGES / "ui",
        [refs["ui-broken"]],
        buildargs={"VERSION": "1.0-broken", "BROKEN": "1"},
        what="ui (broken)",
    )
    return refs


class Bench:
    """A bridge network and the containers started on it; removes exactly those, by id."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.name = f"{NAMESPACE}-app-{uuid.uuid4().hex[:8]}"
        self.network = engine.networks.create(self.name, driver="bridge", labels=LABELS)
        self.volumes: list[Any] = []
        self.containers: dict[str, Any] = {}

    def volume(self, purpose: str) -> str:
        volume = self.engine.volumes.create(f"{self.name}-{purpose}", labels=LABELS)
        self.volumes.append(volume)
        return str(volume.name)

    def start(
        self, name: str, image: str, aliases: list[str], env: dict[str, str] | None = None, **options: Any
    ) -> Any:
        """Start ``image`` on the bench's network, reachable there by ``aliases``."""
        container = self.engine.containers.create(
            image, name=f"{self.name}-{name}", labels=LABELS, environment=env or {}, **options
        )
        self.containers[name] = container  # registered first: removed even if start fails
        self.network.connect(container, aliases=aliases)
        container.start()
        return container

    def url(self, name: str, port: int, path: str = "/") -> str:
        """The container's address on the bench network (it changes when a container restarts)."""
        container = self.containers[name]
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
        assert address, f"{name} has no address on {self.name} (state {container.status})"
        return f"http://{address}:{port}{path}"

    def health(self, name: str) -> str:
        container = self.containers[name]
        container.reload()
        return str(container.attrs["State"].get("Health", {}).get("Status", "none"))

    def wait_health(self, wanted: dict[str, str], timeout: float = HEALTH_TIMEOUT) -> None:
        """Poll Docker's healthcheck status of several containers until each is as wanted."""

        def probe() -> Poll[None]:
            seen = {name: self.health(name) for name in wanted}
            state = ", ".join(f"{name} {status} (want {wanted[name]})" for name, status in seen.items())
            return Poll(seen == wanted, state)

        wait_for(
            probe,
            what="container health",
            timeout=timeout,
            interval=0.5,
            hint="docker inspect --format '{{json .State.Health}}' <container> shows the checks",
        )

    def close(self) -> None:
        """Remove the containers, volumes and network this bench made; problems become warnings."""
        for name, container in self.containers.items():
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass  # already gone: nothing left to remove
            except docker.errors.APIError as exc:
                warnings.warn(f"could not remove test container {name} ({container.id}): {exc}", stacklevel=1)
        for thing in (*self.volumes, self.network):
            try:
                thing.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                warnings.warn(f"could not remove {thing.name}: {exc}", stacklevel=1)


@pytest.fixture(scope="module")
def bench(engine: docker.DockerClient, built: dict[str, str]) -> Iterator[Bench]:
    """mongo (stand-in), post, comment and ui running and healthy on a network of their own."""
    bench = Bench(engine)
    try:
        bench.start(
            "mongo",
            built["mongo"],
            ["post_db", "comment_db"],
            volumes={bench.volume("db"): {"bind": "/data/db", "mode": "rw"}},
        )
        bench.start(
            "post",
            built["post"],
            ["post", "tasks.post"],
            env={"POST_DATABASE_HOST": "post_db", "POST_DATABASE_PORT": "27017"},
        )
        bench.start(
            "comment",
            built["comment"],
            ["comment", "tasks.comment"],
            env={
                "COMMENT_DATABASE_HOST": "comment_db",
                "COMMENT_DATABASE_PORT": "27017",
                "COMMENT_DATABASE": "comments",
            },
        )
        bench.start(
            "ui",
            built["ui"],
            ["ui", "tasks.ui"],
            env={
                "ENV": "TEST",
                "POST_SERVICE_HOST": "post",
                "POST_SERVICE_PORT": "5000",
                "COMMENT_SERVICE_HOST": "comment",
                "COMMENT_SERVICE_PORT": "9292",
            },
        )
        bench.wait_health(dict.fromkeys(APP, "healthy"))
        yield bench
    finally:
        bench.close()


def get(url: str) -> requests.Response:
    return requests.get(url, timeout=HTTP)


def post(url: str, data: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, data=data or {}, timeout=HTTP, allow_redirects=False)


def new_post(bench: Bench, title: str) -> str:
    """Add a post through ui's form; returns its id (from the redirect to its page)."""
    __tracebackhide__ = True
    answer = post(bench.url("ui", 9292, "/new"), {"title": title, "link": "http://example.test/a"})
    assert answer.status_code == 303, f"POST /new answered {answer.status_code}: {answer.text[:300]}"
    found = re.search(r"/post/([0-9a-f]{24})$", answer.headers.get("Location", ""))
    assert found, f"POST /new redirected to {answer.headers.get('Location')!r}, expected /post/<id>"
    return found.group(1)


def run_healthcheck(container: Any) -> int:
    """Exit code of the image's own HEALTHCHECK command, run now inside ``container``."""
    test = container.attrs["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD", f"healthcheck {test} is not in exec form"
    return int(container.exec_run(test[1:]).exit_code)


def test_header_names_the_env_and_the_container(bench: Bench) -> None:
    page = get(bench.url("ui", 9292))
    assert page.status_code == 200
    hostname = bench.containers["ui"].attrs["Config"]["Hostname"]
    assert f"Microservices Reddit in TEST {hostname} container" in page.text


def test_post_vote_and_comment_through_ui_are_stored(bench: Bench) -> None:
    post_id = new_post(bench, "Swarm acceptance")
    assert post(bench.url("ui", 9292, f"/post/{post_id}/vote/1")).status_code == 303
    assert post(bench.url("ui", 9292, f"/post/{post_id}/vote/1")).status_code == 303
    assert post(bench.url("ui", 9292, f"/post/{post_id}/vote/-1")).status_code == 303
    answer = post(
        bench.url("ui", 9292, f"/post/{post_id}/comment"),
        {"name": "tester", "email": "t@example.test", "body": "rolled out without a hitch"},
    )
    assert answer.status_code == 303

    stored = {p["id"]: p for p in get(bench.url("post", 5000, "/posts")).json()}
    assert post_id in stored, f"post /posts lacks {post_id}: {sorted(stored)}"
    assert (stored[post_id]["title"], stored[post_id]["votes"]) == ("Swarm acceptance", 1)
    comments = get(bench.url("comment", 9292, f"/{post_id}/comments")).json()
    assert [(c["name"], c["body"]) for c in comments] == [("tester", "rolled out without a hitch")]

    index = get(bench.url("ui", 9292)).text
    assert "Swarm acceptance" in index
    assert re.search(rf'id="post-{post_id}".*?class="votes">1<', index, re.S), "vote count not on the page"
    page = get(bench.url("ui", 9292, f"/post/{post_id}"))
    assert page.status_code == 200
    assert "Swarm acceptance" in page.text and "rolled out without a hitch" in page.text


def test_healthchecks_answer_with_dependencies_and_version(bench: Bench) -> None:
    expected = {
        ("ui", 9292): {"post": 1, "comment": 1},
        ("post", 5000): {"postdb": 1},
        ("comment", 9292): {"commentdb": 1},
    }
    seen = {name: get(bench.url(name, port, "/healthcheck")).json() for name, port in expected}
    assert seen == {
        name: {"status": 1, "dependent_services": deps, "version": "1.0"}
        for (name, _), deps in expected.items()
    }


@pytest.mark.parametrize(("name", "port"), [("ui", 9292), ("post", 5000), ("comment", 9292)])
def test_metrics_are_prometheus_text(bench: Bench, name: str, port: int) -> None:
    get(bench.url(name, port, "/healthcheck"))  # at least one request counted
    answer = get(bench.url(name, port, "/metrics"))
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    assert f'{name}_requests_total{{endpoint="/healthcheck",status="200"}}' in answer.text


def test_stopped_comment_is_reported_and_ui_stays_healthy(bench: Bench) -> None:
    post_id = new_post(bench, "Comments are down")
    comment = bench.containers["comment"]
    comment.stop(timeout=5)
    try:
        page = get(bench.url("ui", 9292, f"/post/{post_id}"))
        assert page.status_code == 200, f"ui answered {page.status_code} with comment stopped"
        assert "Comments are down" in page.text and "comment service is unavailable" in page.text
        health = get(bench.url("ui", 9292, "/healthcheck")).json()
        assert (health["status"], health["dependent_services"]) == (0, {"post": 1, "comment": 0})
        # The image's healthcheck is about ui itself: a dead dependency must not make swarm kill it.
        ui = bench.containers["ui"]
        ui.reload()
        assert run_healthcheck(ui) == 0
    finally:
        comment.start()
        bench.wait_health({"comment": "healthy"})


def test_stopped_post_is_reported_on_the_index(bench: Bench) -> None:
    bench.containers["post"].stop(timeout=5)
    try:
        page = get(bench.url("ui", 9292))
        assert page.status_code == 200, f"ui answered {page.status_code} with post stopped"
        assert "post service is unavailable" in page.text
        health = get(bench.url("ui", 9292, "/healthcheck")).json()
        assert (health["status"], health["dependent_services"]) == (0, {"post": 0, "comment": 1})
    finally:
        bench.containers["post"].start()
        bench.wait_health({"post": "healthy"})


def test_ui_reads_where_its_dependencies_are_from_the_environment(
    bench: Bench, built: dict[str, str]
) -> None:
    bench.start(
        "ui-elsewhere",
        built["ui"],
        ["ui-elsewhere"],
        env={"ENV": "ELSEWHERE", "COMMENT_SERVICE_HOST": "no-such-comment"},
    )

    def answers() -> Poll[dict[str, Any]]:
        body = get(bench.url("ui-elsewhere", 9292, "/healthcheck")).json()
        return Poll(True, "answered", body)

    health = wait_for(
        answers,
        what="ui-elsewhere /healthcheck",
        timeout=30,
        interval=0.3,
        transient=(requests.ConnectionError,),
    ).value
    assert health == {"status": 0, "dependent_services": {"post": 1, "comment": 0}, "version": "1.0"}


def test_broken_version_is_unhealthy_while_the_normal_one_is_healthy(
    bench: Bench, built: dict[str, str]
) -> None:
    env = {"ENV": "TEST"}
    bench.start("ui-broken", built["ui-broken"], ["ui-broken"], env=env)
    bench.start("ui-fresh", built["ui"], ["ui-fresh"], env=env)
    bench.wait_health({"ui-broken": "unhealthy", "ui-fresh": "healthy"})

    # Broken means failing its healthcheck, not dead: the process still serves pages.
    assert get(bench.url("ui-broken", 9292)).status_code == 200
    health = get(bench.url("ui-broken", 9292, "/healthcheck"))
    assert health.status_code == 500
    assert (health.json()["status"], health.json()["version"]) == (0, "1.0-broken")


def test_images_share_their_first_layers(engine: docker.DockerClient, built: dict[str, str]) -> None:
    def layers(name: str) -> list[str]:
        return list(engine.images.get(built[name]).attrs["RootFS"]["Layers"])

    # base, Debian packages, wheels, unpacked wheels: stored once per node for all four
    first = {name: layers(name)[:4] for name in APP}
    assert len({tuple(v) for v in first.values()}) == 1, f"first layers differ: {first}"
    base = layers("ui")[0]
    assert all(layers(name)[0] == base for name in MONITORING), "monitoring images not on the same base"

    for name in ("ui", "post", "comment", "mongo"):
        check = engine.images.get(built[name]).attrs["Config"]["Healthcheck"]
        assert check["Interval"] <= 5 * 10**9, f"{name}: healthcheck interval {check['Interval']} ns > 5 s"


def test_monitoring_images_answer_and_prometheus_finds_targets(bench: Bench, built: dict[str, str]) -> None:
    # ui, post and comment also carry the aliases tasks.<name> (see the bench), so prometheus'
    # dns_sd_configs find them as they find a swarm's tasks: Docker's embedded DNS answers both.
    bench.start(
        "node-exporter",
        built["node-exporter"],
        ["tasks.node-exporter"],
        volumes={"/proc": {"bind": "/host/proc", "mode": "ro"}, "/sys": {"bind": "/host/sys", "mode": "ro"}},
    )
    bench.start("prometheus", built["prometheus"], ["prometheus"])

    # From the host's /proc (boot time, load) and /sys (network devices' class entries). A scrape
    # can miss a collector's metrics (an interface vanishing mid-read fails netclass): ask again.
    wanted = ("node_boot_time_seconds", "node_load1", "node_network_up")

    def metrics() -> Poll[None]:
        answer = get(bench.url("node-exporter", 9100, "/metrics"))
        missing = [name for name in wanted if f"\n{name}" not in answer.text]
        return Poll(
            answer.status_code == 200 and not missing, f"HTTP {answer.status_code}, missing {missing}"
        )

    wait_for(
        metrics,
        what="node-exporter /metrics from the host's /proc and /sys",
        timeout=30,
        interval=0.5,
        transient=(requests.ConnectionError,),
    )

    def targets_up() -> Poll[None]:
        answer = get(bench.url("prometheus", 9090, "/api/v1/targets"))
        if answer.status_code != 200:  # still starting: 503 "Service Unavailable"
            return Poll(False, f"HTTP {answer.status_code}")
        health = {t["labels"]["job"]: t["health"] for t in answer.json()["data"]["activeTargets"]}
        every_job_up = dict.fromkeys(("prometheus", "node", "ui", "post", "comment"), "up")
        return Poll(health == every_job_up, f"targets {health}")

    wait_for(
        targets_up,
        what="prometheus scraping every job",
        timeout=60,
        interval=1,
        transient=(requests.ConnectionError,),
    )
    assert get(bench.url("prometheus", 9090, "/-/ready")).status_code == 200


def test_posts_survive_a_restart_of_mongo(bench: Bench) -> None:
    """The stand-in keeps its data in /data/db: a restarted mongo still has an earlier post."""
    post_id = new_post(bench, "Persistent")
    bench.containers["mongo"].restart(timeout=10)
    bench.wait_health({"mongo": "healthy"})

    def read_back() -> Poll[int]:
        answer = get(bench.url("post", 5000, f"/post/{post_id}"))
        return Poll(answer.status_code == 200, f"post answers {answer.status_code}", answer.status_code)

    wait_for(
        read_back,
        what="the post read back after mongo restarted",
        timeout=30,
        interval=0.5,
        transient=(requests.RequestException,),
    )


@pytest.mark.parametrize("name", APP)
def test_the_process_ends_on_the_stop_signal_not_by_sigkill(
    bench: Bench, built: dict[str, str], name: str
) -> None:
    """Swarm stops a replaced task with the image's stop signal and kills it 10 s later: a
    process that ignores it makes every update, rollback and stack removal 10 s slower a task.
    The services the stack restarts on-failure exit non-zero, as a process killed by that signal
    does: a task stopped for failing its healthcheck that exits 0 is "complete", and on-failure
    never replaces it (docs/engine-unhealthy-exit-zero.md). mongo's stand-in exits 0: the stack
    restarts mongo on any exit."""
    container = bench.start(f"{name}-stopped", built[name], [f"{name}-stopped"], env={"ENV": "TEST"})
    bench.wait_health({f"{name}-stopped": "healthy"})
    container.stop(timeout=30)
    container.reload()
    state = container.attrs["State"]
    assert state["ExitCode"] != 137 and not state["OOMKilled"], (
        f"{name} did not end on {container.attrs['Config'].get('StopSignal') or 'SIGTERM'}: "
        f"killed after the grace period (exit {state['ExitCode']})"
    )
    if name in ON_FAILURE:
        assert state["ExitCode"] == 128 + signal.SIGINT, (
            f"{name} exited {state['ExitCode']} on its stop signal, SIGINT: 130 expected (exit 0"
            " would leave an unhealthy task's replica unreplaced under restart_policy on-failure)"
        )
