"""The routing mesh: every node's address answers on the ui's published port, also a node that
runs no ui task, and new connections go round the ui tasks evenly (the page names its container).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_swarm import Cluster, DeployedStack, mesh

REQUESTS_PER_REPLICA = 20


@pytest.mark.needs_routing_mesh
def test_every_node_balances_over_every_ui_task(
    swarm: Cluster, swarm_stack: DeployedStack, swarm_role: Callable[[str], str]
) -> None:
    ui = swarm_role("ui")
    port = swarm_stack.published_port(ui)
    if port is None:
        pytest.skip(f"{ui} publishes no port")
    service = swarm_stack.service(ui)
    containers = sorted(t.container_id[:12] for t in service.running_tasks())
    env = (swarm_stack.declared(ui).get("environment") or {}).get("ENV")  # what its page shows
    count = REQUESTS_PER_REPLICA * len(containers)
    report = []
    for node, address in sorted(swarm.addresses.items()):
        first = mesh.first_answer(address, port)
        if first.status != 200:
            report.append(f"{node} ({address}:{port}): no answer in {mesh.READY_TIMEOUT:g} s: {first}")
            continue
        answers = mesh.probe(address, port, count)
        balance = mesh.analyse(answers, containers)
        envs = {a.env for a in answers if a.status == 200}
        print(f"{node} ({address}:{port}): {balance.describe()}")
        if not balance.ok or envs != {env}:
            report.append(
                f"{node} ({address}:{port}): {balance.describe()}; ENV shown {sorted(envs)}, want {env}"
            )
    assert not report, f"{ui} tasks {containers}:\n" + "\n".join(report)
