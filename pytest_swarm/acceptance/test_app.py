"""The app works across the cluster: ui reaches post and comment by service name (VIPs), post
reaches mongo; a post added through one node's address is read back through another's, also
after the database's task was killed and swarm started another.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
import requests

from pytest_swarm import Cluster, DeployedStack, Poll, Settings, mesh, wait_for


def two_nodes_serving(
    swarm: Cluster, swarm_stack: DeployedStack, swarm_role: Callable[[str], str]
) -> tuple[int, str, str]:
    """The ui's published port and two nodes' addresses, once each answers on it: a node
    programs the port only when the ui's endpoints reach it by gossip, seconds after the stack
    converged on a loaded cluster (``mesh.first_answer``)."""
    ui = swarm_role("ui")
    port = swarm_stack.published_port(ui)
    if port is None:
        pytest.skip(f"{ui} publishes no port")
    first, second = [swarm.addresses[n] for n in sorted(swarm.addresses)[:2]]
    for address in (first, second):
        answer = mesh.first_answer(address, port)
        assert answer.status == 200, (
            f"{ui} did not answer through {address}:{port} within {mesh.READY_TIMEOUT:g} s: {answer}"
        )
    return port, first, second


def once_served(send: Callable[[], requests.Response], what: str, timeout: float) -> requests.Response:
    """``send()``'s answer, sent again while the ui says a service it asked is unavailable (a
    503, or a page naming one: the ui waits 2 s for post and comment, and a loaded node can be
    slower); "try again later" is what it tells a user, and what a user does. Any other answer
    is returned as it is; a service that never answers fails the step with the ui's words."""

    def ask() -> Poll[requests.Response]:
        answer = send()
        unavailable = answer.status_code == 503 or "is unavailable" in answer.text
        problem = re.search(r"The \w+ service is unavailable[^<]*", answer.text)
        return Poll(not unavailable, f"{answer.status_code}: {problem[0] if problem else 'no page'}", answer)

    poll = wait_for(ask, what=what, timeout=timeout, interval=1, transient=(requests.RequestException,))
    assert poll.value is not None
    return poll.value


def add_post(address: str, port: int, timeout: float) -> tuple[str, str]:
    """Add a post through ``address`` (``timeout``: see once_served); returns its title and id."""
    title = f"acceptance {uuid.uuid4().hex[:8]}"
    created = once_served(
        lambda: requests.post(
            f"http://{address}:{port}/new",
            data={"title": title, "link": "http://example.test/"},
            timeout=10,
            allow_redirects=False,
        ),
        what=f"a post added through {address}",
        timeout=timeout,
    )
    assert created.status_code == 303, (
        f"adding a post through {address} answered {created.status_code}: {created.text}"
    )
    return title, re.sub(r".*/post/", "", created.headers["Location"])


@pytest.mark.needs_vip
@pytest.mark.needs_routing_mesh
def test_a_post_added_on_one_node_is_read_on_another(
    swarm: Cluster, swarm_stack: DeployedStack, swarm_settings: Settings, swarm_role: Callable[[str], str]
) -> None:
    port, first, second = two_nodes_serving(swarm, swarm_stack, swarm_role)
    title, post_id = add_post(first, port, swarm_settings.timeout)

    page = once_served(
        lambda: requests.get(f"http://{second}:{port}/", timeout=10),
        f"the posts through {second}",
        swarm_settings.timeout,
    )
    assert title in page.text, f"the post added through {first} is not listed through {second}"

    voted = once_served(
        lambda: requests.post(
            f"http://{second}:{port}/post/{post_id}/vote/1", timeout=10, allow_redirects=False
        ),
        what=f"a vote through {second}",
        timeout=swarm_settings.timeout,
    )
    assert voted.status_code == 303, f"voting through {second} answered {voted.status_code}"
    commented = once_served(
        lambda: requests.post(
            f"http://{first}:{port}/post/{post_id}/comment",
            data={"name": "review", "body": "looks right"},
            timeout=10,
            allow_redirects=False,
        ),
        what=f"a comment through {first}",
        timeout=swarm_settings.timeout,
    )
    assert commented.status_code == 303, f"commenting through {first} answered {commented.status_code}"
    shown = once_served(
        lambda: requests.get(f"http://{second}:{port}/post/{post_id}", timeout=10),
        f"the post through {second}",
        swarm_settings.timeout,
    ).text
    assert "looks right" in shown, shown
    votes = re.search(r'class="votes">(-?\d+)<', shown)
    assert votes and int(votes.group(1)) >= 1, "the vote did not reach post"


@pytest.mark.needs_vip
@pytest.mark.needs_routing_mesh
def test_a_post_survives_a_restart_of_the_database_task(
    swarm: Cluster, swarm_stack: DeployedStack, swarm_settings: Settings, swarm_role: Callable[[str], str]
) -> None:
    port, first, second = two_nodes_serving(swarm, swarm_stack, swarm_role)
    mongo = swarm_role("mongo")
    title, post_id = add_post(first, port, swarm_settings.timeout)

    service = swarm_stack.service(mongo)
    tasks = service.running_tasks()
    assert tasks, f"{mongo} has no running task: {service.last_error()}"
    task = tasks[0]
    node = swarm.node_names_by_id()[task.node_id]
    engine = swarm.engines.get(node)
    if engine is None:
        pytest.skip(f"no engine of {node} is reachable to kill the {mongo} task on")
    engine.containers.get(task.container_id).kill()

    def replaced() -> Poll[str]:
        running = [t for t in service.running_tasks() if t.id != task.id]
        return Poll(bool(running), f"running {mongo} tasks: {[t.id[:12] for t in running] or 'none'}")

    wait_for(
        replaced, what=f"swarm to start another {mongo} task", timeout=swarm_settings.timeout, interval=1
    )

    def listed() -> Poll[None]:
        page = requests.get(f"http://{second}:{port}/", timeout=10)
        return Poll(title in page.text, f"{page.status_code}, post listed: {title in page.text}")

    wait_for(
        listed,
        what=f"the post added before {mongo} was killed, listed through {second}",
        timeout=swarm_settings.timeout,
        interval=1,
        transient=(requests.RequestException,),
    )

    # The app is left working for the next test: each post task fails its first request after
    # the database restarted (its connection broke), so writes go on until a round of them, as
    # many as there are post tasks, twice over (the VIP spreads them), all succeed.
    post = swarm_stack.service(swarm_role("post"))
    writes = 2 * max(len(post.running_tasks()), 1)

    def writing() -> Poll[list[int]]:
        url = f"http://{second}:{port}/post/{post_id}/vote/1"
        answers = [requests.post(url, timeout=10, allow_redirects=False).status_code for _ in range(writes)]
        return Poll(all(a == 303 for a in answers), f"votes answered {answers}", answers)

    wait_for(
        writing,
        what=f"every post task writing again after {mongo}'s restart",
        timeout=swarm_settings.timeout,
        interval=1,
        transient=(requests.RequestException,),
    )
