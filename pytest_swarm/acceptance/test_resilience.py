"""Resilience: what swarm promises when nodes fail, checked on a cluster of its own (no other
suite sees a node die) with the --swarm-env stack deployed on it.

The scenarios run one after the other, in this order, each leaving the cluster whole (every
node Ready/Active, the stack converged) for the next:

1. a worker is killed (not drained, not left): the manager marks it Down; every replicated
   service is back to its declared count on the survivors; its constraints still hold (a
   service that only the lost node could run stays pending, and the report says so); where
   the nodes have IPVS, the published ports answer (a task accepts the connection) on every
   survivor throughout;
2. the worker comes back: Ready again, its global tasks return, no replica moves back to it;
3. a worker is drained: it runs no task, the replicated counts hold; set active again, its
   global tasks return;
4. a worker is cut off from the others' swarm traffic inside its own network namespace: it
   goes Down and its tasks are replaced; healed, it rejoins and stops the tasks swarm replaced;
5. with 3 managers or more (--swarm-managers 3): the leader is killed, another is elected and
   the stack keeps running; then a majority of managers is lost: the managers refuse changes
   with a clear error while the running tasks keep running; then quorum is back.

Every wait's deadline comes from the swarm's own timers (its spec) and the services' declared
values (pytest_swarm.resilience); each figure and its deadline go to the report's Resilience
table and the test's JUnit properties. A failed check shows the node states over time and the
tasks' moves from swarm's task history. The scenarios run in a thread started as soon as the
run's stack is up (beside the other suites), and the tests of this module run last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_swarm import (
    DeployedStack,
    Disruptions,
    SwarmError,
    disruption,
    early_work_so_far,
    judged_on,
    lifecycle_of,
    resilience,
    show_on_failure,
    show_text_on_failure,
    take_early,
)

pytestmark = pytest.mark.disruptive
# acceptance/conftest.py: its work is on a cluster of its own, so it starts early beside the
# other suites (not alone: there is nothing to overlap), nothing waits for it, and it runs last;
# its cluster comes up once the other suites' early work is done (start_early).
OWN_CLUSTER = True
PURPOSE = "resilience"

# what each test checks: the scenario it waits for (pytest_swarm.resilience_scenarios runs them)
LOST = "test_a_killed_worker_goes_down_and_its_replicas_return_on_the_survivors"
MESH = "test_the_published_ports_answer_on_every_survivor_while_a_worker_is_lost"
BACK = "test_a_worker_back_gets_its_global_tasks_and_no_replica_moves_back"
DRAINED = "test_a_drained_worker_runs_no_task_and_the_replicas_hold"
CUT = "test_a_cut_off_worker_goes_down_is_replaced_and_rejoins_when_healed"
LEADER = "test_a_lost_leader_is_replaced_and_the_stack_keeps_running"
QUORUM = "test_without_quorum_changes_are_refused_and_tasks_keep_running"
CHECKS = {
    LOST: "worker lost",
    MESH: "worker lost",
    BACK: "node back",
    DRAINED: "drain",
    CUT: "partition",
    LEADER: "leader lost",
    QUORUM: "quorum lost",
}


def selected_scenarios(request: pytest.FixtureRequest) -> set[str]:
    """The scenarios this run's tests of this module check (after -k, --deselect ...): only
    their steps run."""
    return {
        CHECKS[item.originalname]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is not None
        and item.module.__name__ == __name__
        and item.originalname in CHECKS
    }


def start_disruptions(
    request: pytest.FixtureRequest, folder: Path, after: Callable[[], None] = lambda: None
) -> Disruptions:
    """The selected scenarios, under way in a thread on a cluster of their own."""
    return Disruptions(request, folder, PURPOSE, selected_scenarios(request), after)


def start_early(
    request: pytest.FixtureRequest, main: DeployedStack | None, folder: Path
) -> Disruptions | None:
    """Bring up the cluster of its own and run the selected scenarios, beside the other suites
    (acceptance/conftest.py calls this when they run too); None where the provider can't."""
    if disruption.IsolatedCluster.why_not(lifecycle_of(request.config).settings, PURPOSE):
        return None
    # its cluster comes up once the early work started before it is done: on two cores its
    # images and stack, loaded and deployed beside the side-by-side envs' deploys, slowed both
    # (bench/README.md)
    try:
        return start_disruptions(request, folder, early_work_so_far(request.config))
    except SwarmError:
        return None  # the module's fixture tries again, and fails saying why


@pytest.fixture(scope="module")
def disruptions(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Disruptions]:
    """The scenarios, under way (started early, or here); their cluster removed after the module."""
    why = disruption.IsolatedCluster.why_not(lifecycle_of(request.config).settings, PURPOSE)
    if why:
        pytest.skip(why)
    running, why = take_early(request), ""
    if running is None:
        try:
            running = start_disruptions(request, tmp_path_factory.mktemp(PURPOSE))
        except SwarmError as exc:  # it says what to do: no traceback
            why = f"swarm: {exc}"
    if running is None:
        pytest.fail(why, pytrace=False)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(autouse=True)
def _on_its_own_cluster(request: pytest.FixtureRequest, disruptions: Disruptions) -> None:
    """The markers of these tests (needs_routing_mesh) are judged on the cluster of their own."""
    judged_on(request.node, disruptions.cluster())


def checked(request: pytest.FixtureRequest, disruptions: Disruptions) -> resilience.Seen:
    """The scenario the requesting test checks: its figures recorded, its evidence shown on failure."""
    seen = disruptions.outcome(CHECKS[request.node.originalname])
    if request.node.originalname != MESH:  # the mesh test records its own figure
        for figure in seen.figures:
            disruption.record_figure(request.node, figure)
    for note in seen.notes:
        disruptions.lifecycle.note(note)
    show_on_failure(request.node, disruptions.stack)
    show_text_on_failure(request.node, f"{seen.scenario}: node states over time", seen.timeline.render)
    show_text_on_failure(request.node, f"{seen.scenario}: the tasks' moves", lambda: "\n".join(seen.moves))
    return seen


def test_a_killed_worker_goes_down_and_its_replicas_return_on_the_survivors(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "worker lost:\n" + "\n".join(seen.problems)


@pytest.mark.needs_routing_mesh
def test_the_published_ports_answer_on_every_survivor_while_a_worker_is_lost(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert seen.answers is not None, "no connection was tried while the worker was lost"
    sent = sum(len(a) for a in seen.answers.values())
    failed = sum(1 for a in seen.answers.values() for _, ok in a if not ok)
    figure = resilience.Figure(
        "worker lost", "refused or timed-out connections during", failed, "connections", note=f"of {sent}"
    )
    disruption.record_figure(request.node, figure)
    down = disruptions.timers.node_down()
    silent = {
        node: resilience.longest_silence([t for t, ok in answers if ok], 0.0, seen.end)
        for node, answers in seen.answers.items()
    }
    quiet = {where: round(s, 1) for where, s in silent.items() if s > down.seconds}
    print(
        f"worker lost: {failed} of {sent} connections failed; longest silence per survivor and port {silent}"
    )
    assert not quiet, (
        f"{failed} of {sent} connections failed; survivors' ports that accepted none for longer than "
        f"swarm takes to mark a node Down ({down.seconds:.1f} s): {quiet}"
    )


def test_a_worker_back_gets_its_global_tasks_and_no_replica_moves_back(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "node back:\n" + "\n".join(seen.problems)


def test_a_drained_worker_runs_no_task_and_the_replicas_hold(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "drain:\n" + "\n".join(seen.problems)


def test_a_cut_off_worker_goes_down_is_replaced_and_rejoins_when_healed(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "partition:\n" + "\n".join(seen.problems)


def test_a_lost_leader_is_replaced_and_the_stack_keeps_running(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "leader lost:\n" + "\n".join(seen.problems)


def test_without_quorum_changes_are_refused_and_tasks_keep_running(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "quorum lost:\n" + "\n".join(seen.problems)
