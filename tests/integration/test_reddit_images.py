"""The reddit images against real containers on a user-defined bridge network (no swarm, no IPVS).

Containers reach each other by network alias, as in the stack (post_db, comment_db, post,
comment); the test talks to them on their bridge addresses, the project's own test hosts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from pytest_swarm import images
from pytest_swarm.waiting import Poll, wait_for

IMAGES = Path(__file__).parents[2] / "stacks" / "images"
LABELS = {"io.pytest-swarm.test": "reddit-images"}
TAG = "pytest-swarm-test"


@pytest.fixture(scope="module")
def built(engine: docker.DockerClient) -> dict[str, str]:
    """Every stack image built from stacks/images, plus a broken ui; service -> image."""
    refs = {}
    for name in ("mongo", "post", "comment", "ui", "prometheus", "node-exporter"):
        refs[name] = f"{TAG}/{name}:1.0"
        images.build_image(engine, IMAGES / name, [refs[name]], buildargs={"VERSION": "1.0"})
    refs["ui-broken"] = f"{TAG}/ui:1.0-broken"
    images.build_image(
        engine, IMAGES / "ui", [refs["ui-broken"]], buildargs={"VERSION": "1.0-broken", "BROKEN": "1"}
    )
    return refs


class App:
    """The app's containers on a network of their own; removed by id at the end."""

    def __init__(self, engine: docker.DockerClient, refs: dict[str, str]) -> None:
        self.engine = engine
        self.refs = refs
        self.network = engine.networks.create(f"{TAG}-{uuid.uuid4().hex[:8]}", driver="bridge", labels=LABELS)
        self.containers: dict[str, Any] = {}
        self.volume = engine.volumes.create(f"{self.network.name}-db", labels=LABELS)

    def run(
        self, name: str, image: str, aliases: list[str], env: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        container = self.engine.containers.create(
            image,
            name=f"{self.network.name}-{name}",
            labels=LABELS,
            environment=env or {},
            network=None,
            **kw,
        )
        self.network.connect(container, aliases=aliases)
        container.start()
        self.containers[name] = container
        return container

    def ip(self, name: str) -> str:
        container = self.containers[name]
        container.reload()
        return str(container.attrs["NetworkSettings"]["Networks"][self.network.name]["IPAddress"])

    def url(self, name: str, port: int, path: str = "/") -> str:
        return f"http://{self.ip(name)}:{port}{path}"

    def wait_health(self, name: str, wanted: str, timeout: float = 60) -> None:
        container = self.containers[name]

        def probe() -> Poll[None]:
            container.reload()
            status = container.attrs["State"].get("Health", {}).get("Status", "none")
            return Poll(status == wanted, f"{name} health {status}")

        wait_for(probe, what=f"{name} {wanted}", timeout=timeout, interval=0.5)

    def remove(self) -> None:
        for container in self.containers.values():
            container.remove(force=True, v=True)
        self.network.remove()
        self.volume.remove(force=True)


@pytest.fixture(scope="module")
def app(engine: docker.DockerClient, built: dict[str, str]) -> Iterator[App]:
    app = App(engine, built)
    try:
        app.run(
            "mongo",
            built["mongo"],
            ["post_db", "comment_db"],
            volumes={app.volume.name: {"bind": "/data/db", "mode": "rw"}},
        )
        app.run("post", built["post"], ["post"])
        app.run("comment", built["comment"], ["comment"])
        app.run("ui", built["ui"], ["ui"], env={"ENV": "TEST"})
        for name in ("mongo", "post", "comment", "ui"):
            app.wait_health(name, "healthy")
        yield app
    finally:
        app.remove()


def add_post(app: App, title: str) -> str:
    response = requests.post(
        app.url("ui", 9292, "/new"),
        data={"title": title, "link": "http://example.test/"},
        timeout=10,
        allow_redirects=False,
    )
    assert response.status_code == 303, response.text
    match = re.fullmatch(r".*/post/([0-9a-f]{24})", response.headers["Location"])
    assert match, response.headers["Location"]
    return match.group(1)


def test_page_header_names_env_and_container(app: App) -> None:
    page = requests.get(app.url("ui", 9292), timeout=10)
    assert page.status_code == 200
    hostname = app.containers["ui"].id[:12]
    assert f"Microservices Reddit in TEST {hostname} container" in page.text


def test_post_vote_comment_read_back(app: App) -> None:
    post_id = add_post(app, "Swarm in a box")
    assert "Swarm in a box" in requests.get(app.url("ui", 9292), timeout=10).text

    vote = requests.post(app.url("ui", 9292, f"/post/{post_id}/vote/1"), timeout=10, allow_redirects=False)
    assert vote.status_code == 303
    stored = requests.get(app.url("post", 5000, f"/post/{post_id}"), timeout=10).json()
    assert (stored["title"], stored["votes"]) == ("Swarm in a box", 1)
    assert any(p["id"] == post_id for p in requests.get(app.url("post", 5000, "/posts"), timeout=10).json())

    comment = requests.post(
        app.url("ui", 9292, f"/post/{post_id}/comment"),
        data={"name": "ops", "email": "ops@example.test", "body": "rolled out fine"},
        timeout=10,
        allow_redirects=False,
    )
    assert comment.status_code == 303
    listed = requests.get(app.url("comment", 9292, f"/{post_id}/comments"), timeout=10).json()
    assert [(c["name"], c["body"]) for c in listed] == [("ops", "rolled out fine")]
    page = requests.get(app.url("ui", 9292, f"/post/{post_id}"), timeout=10).text
    assert "rolled out fine" in page and "Swarm in a box" in page


def test_healthchecks_report_dependencies(app: App) -> None:
    ui = requests.get(app.url("ui", 9292, "/healthcheck"), timeout=10).json()
    assert ui == {"status": 1, "dependent_services": {"post": 1, "comment": 1}, "version": "1.0"}
    post = requests.get(app.url("post", 5000, "/healthcheck"), timeout=10).json()
    assert post == {"status": 1, "dependent_services": {"postdb": 1}, "version": "1.0"}
    comment = requests.get(app.url("comment", 9292, "/healthcheck"), timeout=10).json()
    assert comment == {"status": 1, "dependent_services": {"commentdb": 1}, "version": "1.0"}


@pytest.mark.parametrize(
    ("name", "port", "metric"),
    [
        ("ui", 9292, "ui_requests_total"),
        ("post", 5000, "post_requests_total"),
        ("comment", 9292, "comment_requests_total"),
    ],
)
def test_metrics(app: App, name: str, port: int, metric: str) -> None:
    response = requests.get(app.url(name, port, "/metrics"), timeout=10)
    assert response.status_code == 200 and metric in response.text


def test_posts_survive_a_restart_of_mongo(app: App) -> None:
    post_id = add_post(app, "Persistent")
    app.containers["mongo"].restart(timeout=10)
    app.wait_health("mongo", "healthy")

    def probe() -> Poll[int]:
        response = requests.get(app.url("post", 5000, f"/post/{post_id}"), timeout=5)
        return Poll(response.status_code == 200, f"post answers {response.status_code}", response.status_code)

    wait_for(
        probe,
        what="the post read back after mongo restarted",
        timeout=30,
        interval=0.5,
        transient=(requests.RequestException,),
    )


def test_a_stopped_comment_service_is_reported_not_a_500(app: App) -> None:
    post_id = add_post(app, "Lonely")
    app.containers["comment"].stop(timeout=5)
    try:
        page = requests.get(app.url("ui", 9292, f"/post/{post_id}"), timeout=10)
        assert page.status_code == 200
        assert "The comment service is unavailable" in page.text and "Lonely" in page.text
        health = requests.get(app.url("ui", 9292, "/healthcheck"), timeout=10).json()
        assert health["status"] == 0 and health["dependent_services"] == {"post": 1, "comment": 0}
    finally:
        app.containers["comment"].start()
        app.wait_health("comment", "healthy")


def test_broken_version_is_seen_unhealthy(app: App) -> None:
    app.run("ui-broken", app.refs["ui-broken"], ["ui-broken"], env={"ENV": "TEST"})
    app.wait_health("ui-broken", "unhealthy")
    page = requests.get(app.url("ui-broken", 9292), timeout=10)
    assert page.status_code == 200  # it runs and serves; only its healthcheck fails
    health = requests.get(app.url("ui-broken", 9292, "/healthcheck"), timeout=10)
    assert health.status_code == 500 and health.json()["version"] == "1.0-broken"


def test_monitoring_images_answer(app: App) -> None:
    app.run(
        "node-exporter",
        app.refs["node-exporter"],
        ["node-exporter"],
        volumes={"/proc": {"bind": "/host/proc", "mode": "ro"}, "/sys": {"bind": "/host/sys", "mode": "ro"}},
    )
    app.run("prometheus", app.refs["prometheus"], ["prometheus"])

    def answers(name: str, port: int, path: str, text: str) -> Callable[[], Poll[None]]:
        def probe() -> Poll[None]:
            response = requests.get(app.url(name, port, path), timeout=5)
            return Poll(
                response.status_code == 200 and text in response.text, f"{name} {response.status_code}"
            )

        return probe

    wait_for(
        answers("node-exporter", 9100, "/metrics", "node_load1"),
        what="node-exporter metrics",
        timeout=30,
        interval=0.5,
        transient=(requests.RequestException,),
    )
    wait_for(
        answers("prometheus", 9090, "/-/ready", "Ready"),
        what="prometheus ready",
        timeout=60,
        interval=0.5,
        transient=(requests.RequestException,),
    )
