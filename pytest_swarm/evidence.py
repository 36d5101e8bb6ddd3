"""Evidence for a failed test: what a reviewer would otherwise collect by hand.

``docker node ls``, ``docker stack ps --no-trunc``, the failing tasks' errors and the last log
lines of the services involved, as one text block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import docker.errors
import pytest
import requests

from .commands import run_docker
from .errors import SwarmError
from .stack import DeployedStack

LOG_LINES = 50
DEPLOYED = pytest.StashKey[list[DeployedStack]]()
TEXTS = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()


def show_on_failure(item: pytest.Item, stack: DeployedStack) -> None:
    """Add ``stack``'s evidence to ``item``'s report if the test fails (``swarm_stack``'s and the
    stacks ``deploy_stack`` made are added without asking).

    Example::

        def test_my_copy(request, deploy_stack):
            stack = deploy_stack(env="stage", name="COPY")
            show_on_failure(request.node, stack)
    """
    item.stash.setdefault(DEPLOYED, []).append(stack)


def show_text_on_failure(item: pytest.Item, title: str, collect: Callable[[], str]) -> None:
    """Add ``collect()``'s text to ``item``'s report, under ``title``, if the test fails (it is
    called only then, once the test's call has ended).

    Example::

        def test_node_loss(request, own):
            show_text_on_failure(request.node, "node states", timeline.render)
    """
    item.stash.setdefault(TEXTS, []).append((title, collect))


def texts_of(item: pytest.Item) -> list[tuple[str, str]]:
    """(title, text) of what ``show_text_on_failure`` registered on ``item``; a collector that
    fails says so in its text instead of hiding the test's own failure."""
    found = []
    for title, collect in item.stash.get(TEXTS, []):
        try:
            text = collect()
        except Exception as exc:  # evidence must never replace the failure it explains
            text = f"(could not collect {title}: {type(exc).__name__}: {exc})"
        found.append((title, text))
    return found


def stacks_used_by(item: pytest.Item) -> list[DeployedStack]:
    """The stacks a test had: ``swarm_stack`` and what its ``deploy_stack`` made."""
    funcargs = getattr(item, "funcargs", {})
    stacks = [funcargs["swarm_stack"]] if isinstance(funcargs.get("swarm_stack"), DeployedStack) else []
    made: list[DeployedStack] = item.stash.get(DEPLOYED, [])
    return stacks + made


def services_tested_by(item: pytest.Item) -> list[str]:
    """The service a per-service test ran for (its ``service`` or ``*_service`` parameter), if any."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return [str(value) for name, value in params.items() if name == "service" or name.endswith("_service")]


def _section(title: str, body: str) -> str:
    return f"--- {title}\n{body.rstrip() or '(empty)'}\n"


def _docker(stack: DeployedStack, args: Sequence[str]) -> str:
    try:
        return run_docker(args, host=stack.cluster.manager_url, timeout=30)
    except SwarmError as exc:
        return f"(could not run docker {' '.join(args)}: {exc})"


def collect(stack: DeployedStack, services: Sequence[str] = ()) -> str:
    """Evidence about ``stack``; logs of ``services`` (short names), or of the unconverged ones.
    A cluster that no longer answers (its managers killed by the check) is said, not raised:
    the test's own failure is what the report must show."""
    try:
        return _collect(stack, services)
    except (docker.errors.DockerException, requests.exceptions.RequestException, SwarmError) as exc:
        return f"(no evidence: the cluster of stack {stack.name} did not answer: {exc})"


def _collect(stack: DeployedStack, services: Sequence[str]) -> str:
    parts = [
        _section("docker node ls", "\n".join(n.describe() for n in stack.cluster.nodes())),
        _section(
            f"docker stack ps --no-trunc {stack.name}",
            _docker(stack, ["stack", "ps", "--no-trunc", stack.name]),
        ),
    ]
    errors = stack.task_errors()
    parts.append(_section("failing tasks", "\n".join(errors) or "(none)"))
    involved = list(services) or [
        s.name.removeprefix(f"{stack.name}_") for s in stack.services() if s.running < s.desired
    ]
    for service in involved:
        full = stack.full_name(service)
        logs = _docker(stack, ["service", "logs", "--no-trunc", "--tail", str(LOG_LINES), full])
        parts.append(_section(f"docker service logs --tail {LOG_LINES} {full}", logs))
    return "\n".join(parts)
