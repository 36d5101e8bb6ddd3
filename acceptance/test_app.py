"""The app works across the cluster: ui reaches post and comment by service name (VIPs), post
reaches mongo; a post added through one node's address is read back through another's.
"""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from pytest_swarm.cluster import Cluster
from pytest_swarm.settings import Settings
from pytest_swarm.stack import DeployedStack


@pytest.mark.needs_vip
@pytest.mark.needs_routing_mesh
def test_a_post_added_on_one_node_is_read_on_another(
    swarm: Cluster, swarm_stack: DeployedStack, swarm_settings: Settings
) -> None:
    ui = swarm_settings.lesson_services.get("ui", "ui")
    port = swarm_stack.published_port(ui)
    if port is None:
        pytest.skip(f"{ui} publishes no port")
    first, second = [swarm.addresses[n] for n in sorted(swarm.addresses)[:2]]
    title = f"acceptance {uuid.uuid4().hex[:8]}"
    created = requests.post(
        f"http://{first}:{port}/new",
        data={"title": title, "link": "http://example.test/"},
        timeout=10,
        allow_redirects=False,
    )
    assert created.status_code == 303, (
        f"adding a post through {first} answered {created.status_code}: {created.text}"
    )
    post_id = re.sub(r".*/post/", "", created.headers["Location"])

    page = requests.get(f"http://{second}:{port}/", timeout=10)
    assert title in page.text, f"the post added through {first} is not listed through {second}"

    voted = requests.post(f"http://{second}:{port}/post/{post_id}/vote/1", timeout=10, allow_redirects=False)
    assert voted.status_code == 303, f"voting through {second} answered {voted.status_code}"
    commented = requests.post(
        f"http://{first}:{port}/post/{post_id}/comment",
        data={"name": "review", "body": "looks right"},
        timeout=10,
        allow_redirects=False,
    )
    assert commented.status_code == 303, f"commenting through {first} answered {commented.status_code}"
    shown = requests.get(f"http://{second}:{port}/post/{post_id}", timeout=10).text
    assert "looks right" in shown and "unavailable" not in shown, shown
    votes = re.search(r'class="votes">(-?\d+)<', shown)
    assert votes and int(votes.group(1)) >= 1, "the vote did not reach post"
