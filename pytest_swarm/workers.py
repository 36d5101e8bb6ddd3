"""Runs under pytest-xdist (``pytest -n N``): a cluster per worker, one report from the controller.

Each worker brings up a cluster of its own and runs whole test files (the tests of a module
share what its fixtures start, and a module that changes nodes needs its cluster to itself);
at its end it hands the controller its facts (cluster, nodes, stacks, timings, notes). The
controller runs no test and brings up nothing: it writes the one report, JUnit properties and
terminal summary, from every worker's facts and every test's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import pytest

from .report import Checks, NodeRow, RunFacts, StackRow
from .resilience import Deadline, Figure
from .timing import Timing

FACTS = "swarm_facts"  # the key of a worker's facts in its workeroutput


def worker_id(config: pytest.Config) -> str | None:
    """``gw0``, ``gw1`` ... in an xdist worker; None elsewhere."""
    workerinput: Mapping[str, Any] = getattr(config, "workerinput", {})
    value = workerinput.get("workerid")
    return None if value is None else str(value)


def controls_workers(config: pytest.Config) -> bool:
    """Whether this process is the controller of an xdist run (it hands tests to workers)."""
    return worker_id(config) is None and getattr(config.option, "dist", "no") not in ("no", None)


def facts_out(facts: RunFacts) -> str:
    """A worker's facts for the controller (JSON: what crosses xdist's channel)."""
    data = asdict(replace(facts, checks=Checks()))  # the controller has every test's outcome itself
    return json.dumps(data)


def facts_in(text: str) -> RunFacts:
    data = json.loads(text)
    return RunFacts(
        **{
            **data,
            "checks": Checks(),
            "nodes": [NodeRow(**row) for row in data["nodes"]],
            "stacks": [StackRow(**row) for row in data["stacks"]],
            "timings": [Timing(**{**t, "why": tuple(t["why"])}) for t in data["timings"]],
            "variables": [tuple(pair) for pair in data["variables"]],
            "requirements": [tuple(pair) for pair in data["requirements"]],
            "figures": [
                Figure(**{**f, "deadline": Deadline(**f["deadline"]) if f["deadline"] else None})
                for f in data.get("figures", [])
            ],
        }
    )


def merged(own: RunFacts, workers: Mapping[str, RunFacts]) -> RunFacts:
    """The controller's facts (its tests' outcomes) with each worker's cluster, stacks, timings
    and notes, named by worker."""
    if not workers:
        return own
    order = sorted(workers)
    return replace(
        own,
        cluster="; ".join(f"{w}: {workers[w].cluster or 'none brought up'}" for w in order),
        nodes=[replace(n, name=f"{w} {n.name}") for w in order for n in workers[w].nodes],
        stacks=[replace(s, name=f"{w} {s.name}") for w in order for s in workers[w].stacks],
        timings=[t for w in order for t in workers[w].timings],
        figures=[f for w in order for f in workers[w].figures],
        notes=[*own.notes, *(f"{w}: {note}" for w in order for note in workers[w].notes)],
    )
