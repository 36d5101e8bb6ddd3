"""How the resilience scenarios run: in a thread, on a cluster of their own, one after the
other, each handing its test what it saw; each figure a wait held to its deadline; the cluster
whole again before the next scenario.

What the scenarios do is in ``resilience_scenarios.py``, what they look at in
``resilience_view.py``, the deadlines and figures in ``resilience.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors
import pytest
import requests

from . import declared, disruption, resilience
from .cluster import Cluster
from .errors import ConvergenceTimeout, SwarmError
from .lifecycle import lifecycle_of
from .resilience import Seen
from .resilience_view import StackView
from .together import Together
from .waiting import Poll, wait_for

# What a manager, a node or a socket throws while the node behind it is down or restarting.
TRANSIENT = (SwarmError, docker.errors.DockerException, requests.exceptions.RequestException, OSError)
POLL = 0.25  # seconds between two looks while a figure is measured


class Unwhole(SwarmError):
    """The cluster did not get whole again after a scenario: the next ones can't run."""


class ScenarioRunner:
    """The selected scenarios, run in order in a thread on a cluster of their own; each test
    waits for the scenario it checks.

    A subclass says what there is to run: ``STEPS`` (each step runs one scenario or more, in
    order; a step runs when one of its scenarios is selected) and ``run_step``.
    """

    STEPS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        request: pytest.FixtureRequest,
        folder: Path,
        purpose: str,
        selected: Collection[str],
        after: Callable[[], None] = lambda: None,
    ) -> None:
        """``purpose`` names the cluster of their own and starts every progress line and note;
        ``selected``: the scenarios the run's tests check; ``after``: what to wait for before
        bringing the cluster up (work whose load it would slow)."""
        self._after = after
        self.lifecycle = lifecycle_of(request.config)
        self.settings = self.lifecycle.settings
        self.folder = folder
        self.purpose = purpose
        self.steps = [step for step, scenarios in self.STEPS.items() if set(scenarios) & set(selected)]
        self.seen: dict[str, Future[Seen]] = {
            scenario: Future() for scenarios in self.STEPS.values() for scenario in scenarios
        }
        self.up: Future[Cluster] = Future()
        self.status = "the cluster of its own coming up"  # what the scenarios did last
        self.own = disruption.IsolatedCluster(self.lifecycle, purpose, sleep=lambda s: self.together.sleep(s))
        self.together: Together[str, None] = Together({"run": self.run}, name=purpose, start=False)
        self.together.start()

    def run_step(self, step: str) -> None:
        """Run the scenarios of ``step`` (one of ``STEPS``)."""
        raise NotImplementedError

    # -- the handle acceptance/conftest.py keeps -------------------------------------------------
    def wait(self) -> None:
        """Nothing of this module is under way on the run's own cluster: it waits for nothing."""

    def close(self) -> None:
        """Stop the scenarios at their next wait, then remove the cluster of their own."""
        self.together.interrupt()
        try:
            self.together.close()
        finally:
            self.own.close()

    # -- what the tests ask -----------------------------------------------------------------------
    def cluster(self) -> Cluster:
        """The cluster of their own, once up (its start waits for engines and the stack, each
        within --swarm-timeout)."""
        self._wait(self.up, "the cluster of its own up", 3 * self.settings.timeout)
        return self.up.result(timeout=0)

    def outcome(self, scenario: str) -> Seen:
        """What ``scenario`` showed. Each wait of a step is bounded by its own deadline (at most
        twice it), and getting whole again by --swarm-timeout: this bound only catches a step
        stuck in a call."""
        budget = 3 * self.settings.timeout * (len(self.steps) + 1)
        self._wait(self.seen[scenario], f"the {scenario} scenario", budget)
        return self.seen[scenario].result(timeout=0)

    def _wait(self, future: Future[Any], what: str, timeout: float) -> None:
        wait_for(lambda: Poll(future.done(), self.status), what=what, timeout=timeout, interval=0.5)

    # -- the run --------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        self.together.sleep(seconds)

    def run(self) -> None:
        try:
            self._after()
        except Exception:
            pass  # only the order: that work's own tests report how it ended
        try:
            self.sleep(0)  # the run ending meanwhile: no cluster to bring up
            self.own.start()
            self.up.set_result(self.own.cluster)
        except BaseException as exc:
            self.up.set_exception(exc)
            self._give_up(exc)
            return
        self.provider = self.own.provider
        self.swarm = self.own.cluster
        self.stack = self.own.stack
        self.managers = disruption.Managers(self.swarm)
        self.timers = resilience.SwarmTimers.of_swarm(self.managers.client().api.inspect_swarm())
        self.view = StackView(self.swarm, self.stack, self.managers)
        self._note_restart_limits()
        try:
            for step in self.steps:
                self.run_step(step)
                self.whole_again(step)
        except BaseException as exc:
            self._give_up(exc)
        finally:
            self.managers.close()

    def _note_restart_limits(self) -> None:
        for name in self.stack.declared_services:
            policy = declared.restart_policy(self.stack.declared(name))
            if policy is not None and policy.max_attempts and policy.window <= 0:
                self.lifecycle.note(
                    f"{self.purpose}: {name} declares restart_policy max_attempts {policy.max_attempts} "
                    "with no window: swarm counts every replacement of a task, a lost or drained node's "
                    f"included, and after {policy.max_attempts} leaves that replica unstarted for good "
                    "(declare a window to count only recent failures)"
                )

    def _give_up(self, exc: BaseException) -> None:
        """Every scenario not seen yet ends with ``exc`` (the run stopping, or the cluster not
        whole again after an earlier scenario)."""
        for future in self.seen.values():
            if not future.done():
                future.set_exception(exc)

    def skip(self, scenarios: list[str], reason: str) -> None:
        """The tests of ``scenarios`` are skipped, saying ``reason``."""
        for scenario in scenarios:
            try:
                pytest.skip(reason)
            except pytest.skip.Exception as exc:
                self.seen[scenario].set_exception(exc)

    def _done(self, seen: Seen) -> None:
        seen.moves = disruption.task_history(self.managers, self.stack.name, seen.origin)
        self.seen[seen.scenario].set_result(seen)

    @contextmanager
    def scenario(self, name: str) -> Iterator[Seen]:
        """What a scenario shows, handed to its test when it ends, also when it ends early (an
        error, the run stopping): the test then fails with it, and its evidence."""
        self.status = f"{name}: begun"
        seen = Seen(name, resilience.Timeline(time.monotonic()), time.time())
        try:
            yield seen
        except Exception as exc:
            seen.problems.append(f"{name} ended early: {type(exc).__name__}: {exc}")
            self._done(seen)
            raise
        self._done(seen)

    def happened(self, seen: Seen, what: str) -> None:
        """A step of the scenario itself: on its timeline and in the run's progress lines."""
        seen.timeline.mark(time.monotonic(), what)
        self.status = f"{seen.scenario}: {what}"
        self.lifecycle.progress(f"{self.purpose}: {self.status}")

    def recorder(self, seen: Seen, limit: float) -> disruption.Recorder:
        """Node states and running tasks onto ``seen``'s timeline, for at most ``limit`` seconds."""
        return disruption.Recorder(self.managers, self.stack.name, seen.timeline, limit=limit, interval=0.5)

    # -- the waits a figure comes from ----------------------------------------------------------------
    def measure(
        self,
        seen: Seen,
        what: str,
        probe: Callable[[], Poll[Any]],
        deadline: resilience.Deadline,
        since: float,
    ) -> float | None:
        """Wait for ``probe`` (up to twice its deadline), then hold the time since ``since``
        (monotonic) to ``deadline``: a figure, and a problem when it is past it or never came."""
        limit = 2 * deadline.seconds
        try:
            wait_for(
                probe,
                what=f"{seen.scenario}: {what}",
                timeout=round(max(0.0, since + limit - time.monotonic()), 1),
                interval=POLL,
                transient=TRANSIENT,
                sleep=self.sleep,
            )
        except ConvergenceTimeout as exc:
            seen.problems.append(f"{exc} (its deadline {deadline.seconds:.1f} s: {deadline.basis})")
            seen.figures.append(
                resilience.Figure(seen.scenario, what, limit, deadline=deadline, note="(not reached)")
            )
            return None
        took = time.monotonic() - since
        figure = resilience.Figure(seen.scenario, what, took, deadline=deadline)
        seen.figures.append(figure)
        if not figure.held:
            seen.problems.append(figure.describe())
        return took

    def watch(self, what: str, wrong: Callable[[], str], window: resilience.Deadline) -> str:
        """Look every POLL seconds, for ``window``, whether something swarm should not do
        happened (``wrong()`` says what, "" while nothing did); the first thing seen, or ""."""
        end = time.monotonic() + window.seconds
        while time.monotonic() < end:
            try:
                seen = wrong()
            except TRANSIENT:
                seen = ""  # a look that failed saw nothing; the next one may
            if seen:
                return f"{what}: {seen}"
            self.sleep(min(POLL, max(0.0, end - time.monotonic())))
        return ""

    def restore(self, action: Callable[[], object]) -> None:
        """Put back what a scenario changed, unless the run is ending (the cluster goes anyway)."""
        if not self.together.interrupted:
            action()

    def whole_again(self, after: str) -> None:
        """Every node Ready/Active and the stack converged, before the next scenario."""
        try:
            wait_for(
                lambda: Poll(
                    all(n.ready for n in self.view.nodes().values()),
                    ", ".join(
                        f"{n.name} {resilience.node_state(n.attrs)}" for n in self.view.nodes().values()
                    ),
                ),
                what=f"every node Ready/Active after {after}",
                timeout=self.settings.timeout,
                interval=0.5,
                transient=TRANSIENT,
                sleep=self.sleep,
            )
            self.stack.converge(self.settings.timeout, sleep=self.sleep)
        except ConvergenceTimeout as exc:
            raise Unwhole(
                f"not run: the {self.purpose} cluster did not get whole again after {after}: {exc}"
            ) from exc
