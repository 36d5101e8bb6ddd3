"""Rolling updates and rollback, as update_config declares them.

The update goes to the ``-next`` version of the service's image (another image of the same
program, built before the cluster started). The failing version is the ``-broken`` one where the
service's recipe makes one (same code, a healthcheck that fails); else it is ``-next`` with a
healthcheck, set by the update, that never passes.

Everything runs at the same time (pytest_swarm.together): each service's rolling update to
``-next`` on the stack's own service (sending requests through its published port meanwhile,
when that test is selected), then its restore; and each service's failing version on a copy of
the service (same image, deploy section and healthcheck; no published port). The copies share
one stack, deployed by the first failing version to start and removed after the module: one
new overlay network, not one per copy (engine 20.10 can stall a node 30 s when it joins two new
networks at the same moment: "Bulk sync to node ... timed out" in its dockerd log).

The tests check what their operation recorded. A restore puts back the service's exact spec:
first its original image with every task replaced at once, then its declared update_config
(which alone replaces no task).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_swarm import (
    FEATURES,
    Cluster,
    ConvergenceTimeout,
    DeployedStack,
    Poll,
    Service,
    SwarmLifecycle,
    Together,
    declared,
    lifecycle_of,
    mesh,
    remove_all,
    rolling,
    run_docker,
    selected_params,
    show_on_failure,
    variant_ref,
    wait_early,
    wait_for,
)

DONE = ("completed", "paused", "rollback_completed", "rollback_paused")
ROLL = "test_rolling_update_follows_update_config"
TRAFFIC = "test_the_published_port_keeps_answering_during_an_update"
FAIL = "test_a_failing_version_is_rolled_back_or_paused"
# Every task replaced at once, start-first: how a restore gets the original image back fast.
FAST = {"Parallelism": 0, "Delay": 0, "FailurePolicy": "pause", "Monitor": 1_000_000, "Order": "start-first"}
# A healthcheck that never passes, for an image whose recipe makes no -broken version: `exit 1`
# where the image has a shell, a failed exec where it has none; unhealthy at the first check.
FAILING_HEALTH = declared.Healthcheck(interval=2.0, start_period=0.0, retries=1)
FAILING_HEALTH_FLAGS = ["--health-cmd", "exit 1", "--health-interval", "2s", "--health-timeout", "2s"]
FAILING_HEALTH_FLAGS += ["--health-retries", "1", "--health-start-period", "0s"]
MUTABLE_TAGS = ("", "latest")

# The updates' timings are what they check: they start once the work the other suites started
# early (restart stacks, side-by-side envs) is done, and so this module runs after the others.
AFTER_EARLY_WORK = True


@dataclass
class Rolled:
    """What a rolling update to ``-next`` showed."""

    original: str
    target: str
    tasks: int  # the service's tasks when the update started
    state: str
    log: rolling.TaskLog
    answers: list[mesh.Answer] | None  # requests through the published port, when sent
    waits: list[rolling.Wait]


@dataclass
class Failed:
    """What an update to ``-broken`` showed."""

    stack: DeployedStack  # the copy's
    original: str
    broken: str
    expected: str
    state: str
    images: list[str]  # the running tasks' images once the update ended (and a rollback restored them)
    deadline: float
    waits: list[rolling.Wait]
    how: str  # how the version fails: its own healthcheck, or one the update set


class Updates:
    """This module's operations, all started at once: each selected service's rolling update
    (on the stack's own service) and its failing version (on a copy, in the stack of copies)."""

    def __init__(
        self,
        lifecycle: SwarmLifecycle,
        swarm: Cluster,
        stack: DeployedStack,
        wanted: dict[str, set[str]],
        folder: Path,
    ) -> None:
        self.lifecycle = lifecycle
        self.swarm = swarm
        self.stack = stack
        self.folder = folder
        self.copies: list[DeployedStack] = []
        self.failing = sorted(wanted.get(FAIL, set()))
        self._copies_lock = threading.Lock()
        self._copies_made: DeployedStack | BaseException | None = None
        mesh_missing = swarm.missing_capability(FEATURES["needs_routing_mesh"][0])
        probed = wanted.get(TRAFFIC, set()) if not mesh_missing else set()  # else that test skips
        operations: dict[tuple[str, str], Callable[[], Any]] = {}
        for name in sorted(wanted.get(ROLL, set()) | probed):
            operations["roll", name] = partial(self.roll, name, name in probed)
        for name in self.failing:
            operations["fail", name] = partial(self.fail, name)
        self.together: Together[tuple[str, str], Any] = Together(operations, name="update", start=False)
        self.together.start()  # the operations use self.together

    def part(
        self,
        service: str,
        part: str,
        declared_wait: Callable[[float, str], None] | None = None,
        took: Callable[[float, str], None] | None = None,
    ) -> Any:
        """Wait for ``service``'s ``part``; return what it saw (or raise what it raised), after
        handing its own time and declared waits to the timing fixtures."""
        outcome = self.together.outcome((part, service), timeout=1800)
        if took is not None and declared_wait is not None and outcome.value is not None:
            took(outcome.seconds, f"its {part}, beside the other services' updates")
            for wait in outcome.value.waits:
                declared_wait(*wait)
        return outcome.get()

    def close(self) -> None:
        self.together.close()
        remove_all(self.copies)

    def health(self, service: Service, spec: dict[str, Any]) -> declared.Healthcheck | None:
        """The compose healthcheck over the image's, read on the manager's engine (where the
        image isn't, only the compose file's counts)."""
        try:
            image = self.swarm.client.images.get(service.image).attrs.get("Config") or {}
        except docker.errors.APIError:
            image = {}
        return declared.healthcheck(spec, image)

    def roll(self, name: str, traffic: bool) -> Rolled:
        service = self.stack.service(name)
        spec = self.stack.declared(name)
        before = copy.deepcopy(service.attrs["Spec"])
        config = declared.update_config(spec)
        target = variant_or_skip(self.swarm, service, "next")
        original = service.image
        tasks = len(service.running_tasks())
        deadline = rolling.update_deadline(tasks, config, self.health(service, spec))
        log = rolling.TaskLog(service)
        answers: list[mesh.Answer] | None = [] if traffic else None
        port = self.stack.published_port(name_in_stack(self.stack, service))
        try:
            with log.recording():
                update_image(self.stack, service, target)
                if answers is not None and port is not None:
                    self.probe_until_done(service, port, deadline, answers)
                state = wait_update(service, deadline, self.together.sleep)
        finally:
            self.restore(service, before, deadline)
        waits = rolling.declared_update_waits(tasks, config, self.health(service, spec))
        return Rolled(original, target, tasks, state, log, answers, waits)

    def probe_until_done(
        self, service: Service, port: int, deadline: float, answers: list[mesh.Answer]
    ) -> None:
        end = time.monotonic() + deadline
        while service.reload().update_state not in DONE and time.monotonic() < end:
            for address in self.swarm.addresses.values():
                answers += mesh.probe(address, port, count=1, timeout=2)
            self.together.sleep(0.05)

    def why_not_failed(self, name: str) -> str:
        """Why ``name``'s failing version is not checked ("" when it is)."""
        if declared.update_config(self.stack.declared(name)).failure_action == "continue":
            return f"{name} declares failure_action continue: a failing version is kept"
        # the declared image: the service's own may be on its -next version by now
        return missing_variant(self.swarm, name, self.stack.declared(name)["image"], "next")

    def copies_stack(self) -> DeployedStack:
        """The stack of copies, one service for each failing version checked, converged; the
        first to ask deploys it, the others wait for it (and get its error, if it failed)."""
        with self._copies_lock:
            if self._copies_made is None:
                names = [n for n in self.failing if not self.why_not_failed(n)]
                specs = {name: self.stack.declared(name) for name in names}
                main = self.stack.source
                source = replace(
                    main,
                    compose_files=(rolling.copies_of(self.folder / "copies.yml", specs, self.stack.model),),
                    stack_name=f"U{self.stack.name[:20]}",
                )
                try:
                    self._copies_made = self.lifecycle.deploy(source, on_deployed=self.copies.append)
                except BaseException as exc:
                    self._copies_made = exc
            if isinstance(self._copies_made, BaseException):
                raise self._copies_made
            return self._copies_made

    def fail(self, name: str) -> Failed:
        """Update ``name``'s copy (its image, deploy section, healthcheck; no published port) to
        ``-broken``; see how the update ends."""
        spec = self.stack.declared(name)
        config = declared.update_config(spec)
        why_not = self.why_not_failed(name)
        if why_not:
            pytest.skip(why_not)
        stack = self.copies_stack()
        service = stack.service(name)
        original = service.image
        tasks = len(service.running_tasks())
        health = self.health(service, spec)
        broken, flags, failing = variant_ref(original, "broken"), [], health
        how = "its own healthcheck fails"
        # -broken fails by the image's HEALTHCHECK, which a compose healthcheck replaces
        if missing_variant(self.swarm, name, original, "broken") or "healthcheck" in spec:
            broken, flags, failing = variant_ref(original, "next"), FAILING_HEALTH_FLAGS, FAILING_HEALTH
            how = "the update sets a healthcheck that never passes"
        deadline = rolling.update_deadline(tasks, config, failing)
        expected = "rollback_completed" if config.failure_action == "rollback" else "paused"
        update_image(stack, service, broken, flags)
        state = wait_update(service, deadline, self.together.sleep)
        if state == "rollback_completed":  # swarm says so as the restored tasks start
            # a restored task counts once its healthcheck passes: the engine gives a slow start
            # (a loaded node) until it would be judged unhealthy, so the check waits as long
            restored_within = rolling.START_ALLOWANCE + (
                health.seconds_to_unhealthy() + health.interval if health else 0.0
            )
            wait_restored(service, original, restored_within, self.together.sleep)
        images = sorted({t.image.split("@")[0] for t in service.running_tasks()})
        rollback = declared.update_config(spec, "rollback_config")
        waits = rolling.failure_waits(config, failing, health, rollback)
        if health:  # the copy's tasks, before they count as started
            waits.append((health.interval, f"the copy's first healthcheck {health.interval:g} s"))
        return Failed(stack, original, broken, expected, state, images, deadline, waits, how)

    def restore(self, service: Service, before: dict[str, Any], timeout: float) -> None:
        """Back to the spec ``before`` with every task on its image, whatever the update left."""
        image = before["TaskTemplate"]["ContainerSpec"]["Image"]
        service.reload()
        if service.attrs["Spec"]["TaskTemplate"] != before["TaskTemplate"]:
            fast = copy.deepcopy(before)
            # start-first needs room for a second task on a node: none beside a host-mode port
            # or a max_replicas_per_node a node already holds
            crowded = service.host_ports or service.max_replicas_per_node is not None
            fast["UpdateConfig"] = {**FAST, "Order": "stop-first"} if crowded else FAST
            service.replace_spec(fast)
        wait_for(
            lambda: Poll(
                service.whole()  # none still stopping
                and service.update_state not in ("updating", "rollback_started")
                and {t.image for t in service.running_tasks()} == {image},
                f"{service.update_state}, images {sorted({t.image for t in service.running_tasks()})}",
            ),
            what=f"{service.name} restored to {image}",
            timeout=timeout,
            interval=0.5,
            sleep=self.together.sleep,
        )
        if service.attrs["Spec"] != before:
            service.replace_spec(before)  # only update_config differs now: no task is replaced
        assert service.reload().attrs["Spec"] == before, f"{service.name}: spec not restored"


def name_in_stack(stack: DeployedStack, service: Service) -> str:
    return service.name.removeprefix(f"{stack.name}_")


def missing_variant(swarm: Cluster, service: str, image: str, variant: str) -> str:
    """Why ``image`` has no ``variant`` on the nodes ("" when every node has it)."""
    ref = variant_ref(image, variant)
    missing = [n for n, engine in swarm.engines.items() if not engine.images.list(name=ref)]
    if missing or not swarm.engines:
        return f"{service}: no {ref} on the nodes (its Dockerfile declares no ARG BROKEN)"
    return ""


def variant_or_skip(swarm: Cluster, service: Service, variant: str) -> str:
    why = missing_variant(swarm, service.name, service.image, variant)
    if why:
        pytest.skip(why)
    return variant_ref(service.image, variant)


def update_image(stack: DeployedStack, service: Service, image: str, flags: list[str] | None = None) -> None:
    run_docker(
        ["service", "update", "--detach", "--image", image, *(flags or []), service.name],
        host=stack.cluster.manager_url,
        timeout=60,
    )


def wait_restored(service: Service, image: str, timeout: float, sleep: Callable[[float], None]) -> None:
    """Until every task of ``service`` runs ``image`` again (a rollback's tasks are still starting
    when swarm reports it completed); the caller judges what it then sees."""

    def probe() -> Poll[None]:
        images = sorted({t.image.split("@")[0] for t in service.running_tasks()})
        return Poll(service.whole() and images == [image], f"running {service.running}, images {images}")

    try:
        wait_for(probe, what=f"{service.name} restored", timeout=timeout, interval=0.5, sleep=sleep)
    except ConvergenceTimeout:
        pass  # the test names what ran instead


def wait_update(service: Service, deadline: float, sleep: Callable[[float], None]) -> str:
    def probe() -> Poll[str]:
        state = service.reload().update_state
        return Poll(state in DONE, f"UpdateStatus {state or 'none'}", state)

    poll = wait_for(probe, what=f"{service.name} update to end", timeout=deadline, interval=0.5, sleep=sleep)
    return str(poll.value)


@pytest.fixture(scope="module")
def updates(
    request: pytest.FixtureRequest,
    swarm: Cluster,
    swarm_stack: DeployedStack,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Updates]:
    """Every selected update, started at once; the module ends when all are restored or removed."""
    params = selected_params(request, ("updated_service", "published_updated_service"))
    wanted = {test: {str(s) for s in services} for test, services in params.items()}
    lifecycle = lifecycle_of(request.config)
    wait_early(request.config)  # see AFTER_EARLY_WORK
    running = Updates(lifecycle, swarm, swarm_stack, wanted, tmp_path_factory.mktemp("updates"))
    try:
        yield running
    finally:
        running.close()


def test_rolling_update_follows_update_config(
    updates: Updates,
    updated_service: str,
    swarm_declared_wait: Callable[[float, str], None],
    swarm_took: Callable[[float, str], None],
) -> None:
    config = declared.update_config(updates.stack.declared(updated_service))
    rolled: Rolled = updates.part(updated_service, "roll", swarm_declared_wait, swarm_took)
    assert rolled.state == "completed", f"{updated_service}: update to {rolled.target} ended {rolled.state}"
    log = rolled.log
    # per place, the first task on the new image is the update's; a later one there replaced it
    # (its restart policy, say): not a batch of the update
    first_new: dict[str, tuple[float, str]] = {}
    old_end: dict[str, float | None] = {}
    for task_id, (started, where, image) in sorted(log.running.items(), key=lambda kv: kv[1][0]):
        if image.split("@")[0] == rolled.target:
            first_new.setdefault(where, (started, task_id))
        elif image.split("@")[0] == rolled.original and old_end.get(where) is None:
            old_end[where] = log.ended.get(task_id)  # a place may have had more than one old task
    assert len(first_new) == rolled.tasks, (
        f"{updated_service}: {len(first_new)} of its {rolled.tasks} tasks got {rolled.target}: "
        f"{sorted(first_new)}"
    )
    if declared.replicas(updates.stack.declared(updated_service)) is None:
        # swarm's global orchestrator replaces a node's outdated task at once whenever that node
        # changes during an update ("not a rolling update", in its node reconciliation): the
        # batches' pace and order are not what swarm promises for a global service
        updates.lifecycle.note(
            f"{updated_service} (global): its update is checked to end with every node on the new "
            "version; parallelism, delay and order are swarm's promise for replicated services only"
        )
        return
    starts = sorted(started for started, _ in first_new.values())
    crowded = config.crowded(starts)
    assert not crowded, (
        f"{updated_service}: declared parallelism {config.parallelism}, delay {config.delay:g} s; yet "
        + ", ".join(f"{config.parallelism + 1} new tasks ran within {b - a:.1f} s" for a, b in crowded)
        + f" (new tasks ran at {[round(t - starts[0], 1) for t in starts]} s)"
    )
    for where, (started, _) in sorted(first_new.items()):
        stopped = old_end.get(where)
        seen = {t[:12]: (v, log.ended.get(t)) for t, v in log.running.items() if v[1] == where}
        assert stopped is not None, (
            f"{updated_service}: the old task of {where} never stopped; tasks seen {seen}"
        )
        if config.order == "stop-first":
            assert stopped <= started, f"{updated_service} {where}: stop-first, yet the new task ran first"
        else:
            assert started <= stopped, f"{updated_service} {where}: start-first, yet the old task ended first"


def test_a_failing_version_is_rolled_back_or_paused(
    request: pytest.FixtureRequest,
    updates: Updates,
    updated_service: str,
    swarm_declared_wait: Callable[[float, str], None],
    swarm_took: Callable[[float, str], None],
) -> None:
    config = declared.update_config(updates.stack.declared(updated_service))
    failed: Failed = updates.part(updated_service, "fail", swarm_declared_wait, swarm_took)
    show_on_failure(request.node, failed.stack)
    assert failed.state == failed.expected, (
        f"{updated_service}: declared failure_action {config.failure_action}; an update to {failed.broken} "
        f"({failed.how}) ended {failed.state!r}, expected {failed.expected!r} within {failed.deadline:g} s"
    )
    if failed.expected == "rollback_completed":
        assert failed.images == [failed.original], (
            f"{updated_service}: after rollback tasks run {failed.images}, expected {failed.original}"
        )
        tag = failed.original.rsplit("/", 1)[-1].partition(":")[2]
        if tag in MUTABLE_TAGS:
            lifecycle_of(request.config).note(
                f"{updated_service}: the rollback check proves swarm puts back the tag {failed.original}; "
                "that tag is mutable: once it is pushed again, a rollback puts back whatever it names "
                "then, not the version that worked (release with version tags)"
            )


@pytest.mark.needs_routing_mesh
def test_the_published_port_keeps_answering_during_an_update(
    request: pytest.FixtureRequest, updates: Updates, published_updated_service: str
) -> None:
    name = published_updated_service
    config = declared.update_config(updates.stack.declared(name))
    rolled: Rolled = updates.part(name, "roll")
    assert rolled.answers is not None, f"{name}: no request was sent during its update"
    failures = [a for a in rolled.answers if a.status != 200]
    # JUnit properties (record_property warns under the default xunit2 family; these are written all the same)
    request.node.user_properties.append(("requests_during_update", len(rolled.answers)))
    request.node.user_properties.append(("failed_requests_during_update", len(failures)))
    print(f"{name} ({config.order}): {len(failures)} of {len(rolled.answers)} requests failed")
    assert rolled.answers, f"{name}: its update ended before any request was answered"
    if config.order == "start-first":
        assert not failures, f"{name}: start-first, yet {len(failures)} requests failed"
    assert rolled.state == "completed", f"{name}: update ended {rolled.state}"
