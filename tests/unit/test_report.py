"""The review report's pure logic: outcomes over phases, requirement lines, Markdown, suite properties."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_swarm.report import (
    Checks,
    NodeRow,
    RunFacts,
    StackRow,
    first_line,
    render,
    requirement_of,
    requirement_rows,
    suite_properties,
)
from pytest_swarm.resilience import Deadline, Figure
from pytest_swarm.timing import Timing

# the profile's (id, title) pairs, as the lifecycle hands them to the report
REQUIREMENTS = [
    ("L01", "mongo runs only on the reliability=high node"),
    ("L03", "app services run 3"),
    ("R1", "x"),
]


def phase(
    nodeid: str, when: str, outcome: str, longrepr: Any = None, duration: float = 0.0, **extra: Any
) -> Any:
    """A stand-in for pytest.TestReport with the attributes the report reads."""
    return SimpleNamespace(
        nodeid=nodeid,
        when=when,
        outcome=outcome,
        passed=outcome == "passed",
        failed=outcome == "failed",
        skipped=outcome == "skipped",
        longrepr=longrepr,
        duration=duration,
        **extra,
    )


def crash(message: str) -> Any:
    return SimpleNamespace(reprcrash=SimpleNamespace(message=message))


@pytest.mark.parametrize(
    ("nodeid", "requirement"),
    [
        (
            "acceptance/test_requirements.py::test_requirement[L01-mongo-runs-only-on-the-reliability-high-node]",
            "L01 mongo runs only on the reliability=high node",
        ),
        ("acceptance/test_requirements.py::test_requirement[R1]", "R1 x"),
        ("acceptance/test_requirements.py::test_requirement[R10-other]", None),
        ("acceptance/test_cluster.py::test_one_leader", None),
        ("acceptance/test_x.py::test_L01_unknown", None),
    ],
)
def test_requirement_of_reads_the_test_name(nodeid: str, requirement: str | None) -> None:
    assert requirement_of(nodeid, REQUIREMENTS) == requirement


def test_first_line_joins_an_introduction_with_its_first_problem() -> None:
    message = "AssertionError: L07 ui limited:\n  ui: limits cpus 0.5 memory None\nassert not [...]"
    assert first_line(message) == "L07 ui limited: ui: limits cpus 0.5 memory None"
    assert first_line("Failed: swarm: no Docker engine answers") == "swarm: no Docker engine answers"
    assert first_line("x" * 500).endswith("...") and len(first_line("x" * 500)) == 240


def test_outcome_over_phases() -> None:
    checks = Checks()
    for report in (
        phase("t::ok", "setup", "passed"),
        phase("t::ok", "call", "passed", duration=1.25),
        phase("t::ok", "teardown", "passed"),
        phase("t::bad", "setup", "passed"),
        phase("t::bad", "call", "failed", crash("AssertionError: 2 running, 3 desired")),
        phase("t::bad", "teardown", "passed"),
        phase("t::skip", "setup", "skipped", ("f.py", 3, "Skipped: no IPVS on worker-1")),
        phase("t::skip", "teardown", "passed"),
        phase("t::broken", "setup", "failed", "swarm: no engine"),
        phase("t::xf", "setup", "passed"),
        phase("t::xf", "call", "skipped", None, wasxfail="known bug"),
        phase("t::cut", "setup", "passed"),  # Ctrl-C in the call: no call report
    ):
        checks.add(report)
    got = {c.nodeid: (c.outcome, c.reason) for c in checks}
    assert got == {
        "t::ok": ("passed", ""),
        "t::bad": ("failed", "2 running, 3 desired"),
        "t::skip": ("skipped", "no IPVS on worker-1"),
        "t::broken": ("error", "setup: swarm: no engine"),
        "t::xf": ("xfailed", "known bug"),
        "t::cut": ("interrupted", ""),
    }
    assert checks.by_id["t::ok"].seconds == 1.25


def test_a_teardown_error_turns_a_pass_into_an_error_but_keeps_a_failure() -> None:
    checks = Checks()
    for nodeid, call in (("t::a", "passed"), ("t::b", "failed")):
        checks.add(phase(nodeid, "setup", "passed"))
        checks.add(phase(nodeid, "call", call, crash("AssertionError: wrong")))
        checks.add(phase(nodeid, "teardown", "failed", crash("SwarmError: stack not removed")))
    assert checks.by_id["t::a"].outcome == "error"
    assert checks.by_id["t::a"].reason == "teardown: SwarmError: stack not removed"
    assert checks.by_id["t::b"].outcome == "failed"


def test_requirement_rows_take_the_worst_outcome_and_list_every_requirement() -> None:
    checks = Checks()
    checks.add(phase("a::test_requirement[L03-x]", "call", "passed"))
    checks.add(phase("b::test_requirement[L03-y]", "call", "failed", crash("AssertionError: ui: replicas 1")))
    rows = {label.split()[0]: (result, why) for label, result, why in requirement_rows(checks, REQUIREMENTS)}
    assert rows["L03"] == ("FAIL", "ui: replicas 1")
    assert rows["L01"] == ("not run", "")
    assert sorted(rows) == ["L01", "L03", "R1"]


def facts(**overrides: Any) -> RunFacts:
    checks = Checks()
    checks.add(
        phase("acceptance/test_requirements.py::test_requirement[L01-m]", "call", "passed", duration=0.2)
    )
    checks.add(phase("acceptance/test_x.py::test_pipe", "call", "failed", crash("AssertionError: a | b")))
    base: dict[str, Any] = {
        "env": "dev",
        "provider": "dind",
        "exit": "TESTS_FAILED",
        "checks": checks,
        "cluster": "b68b3f22, ready in 1.6 s",
        "nodes": [NodeRow("master-1", "manager (Leader)", "ready/active", "20.10.24", "172.18.0.2")],
        "stacks": [
            StackRow("DEV", "dev", 7, 14.2),
            StackRow("STAGE", "stage", 7, 0.0, "ui: 1 of 3 running\nmore"),
        ],
        "timings": [Timing("t::update", 30.0, 25.0, ("update delay 5 s x 5",))],
        "notes": ["cluster b68b3f22 removed"],
        "profile": "lesson",
        "requirements": REQUIREMENTS,
    }
    return RunFacts(**{**base, **overrides})


def test_render_has_each_section() -> None:
    lines = render(facts(variables=[("POST_REPLICAS", "1"), ("API_TOKEN", "t0k3n-value")])).splitlines()
    assert "| variables set | POST_REPLICAS=1, API_TOKEN=t0k3n-value |" in lines  # the caller masks
    assert lines[0] == "# pytest-swarm: FAILED (1 passed, 1 failed)"
    assert "| env | dev |" in lines
    assert "| cluster | b68b3f22, ready in 1.6 s |" in lines
    assert "| master-1 | manager (Leader) | ready/active | 20.10.24 | 172.18.0.2 |" in lines
    assert "| DEV | dev | 7 | yes, in 14.2 s |" in lines
    assert "| STAGE | stage | 7 | NO: ui: 1 of 3 running |" in lines
    assert "## Requirements (profile lesson)" in lines
    assert "| L01 mongo runs only on the reliability=high node | pass |  |" in lines
    assert "| acceptance/test_x.py::test_pipe | FAIL | 0.0 s | a \\| b |" in lines  # | escaped
    assert "Tests that declared waits: 25.0 s of declared waits, 5.0 s rest." in lines
    assert "- cluster b68b3f22 removed" in lines


def test_render_without_cluster_or_requirement_tests_writes_what_it_has() -> None:
    text = render(facts(cluster="", nodes=[], stacks=[], timings=[], notes=[], checks=Checks(), exit="OK"))
    assert text.splitlines()[0] == "# pytest-swarm: PASSED (0 passed)"
    assert "| cluster | none brought up |" in text
    assert "No test ran." in text
    assert "## Cluster" not in text and "## Requirements" not in text


def test_suite_properties_name_nodes_and_stacks() -> None:
    props = dict(suite_properties(facts()))
    assert props["swarm_env"] == "dev"
    assert props["swarm_verdict"] == "FAILED"
    assert (
        props["swarm_node_master-1"] == "manager (Leader), ready/active, engine 20.10.24, address 172.18.0.2"
    )
    assert props["swarm_stack_DEV"] == "env dev, 7 services, converged yes, in 14.2 s"


FIGURES = [
    Figure(
        "worker lost", "to Down", 12.4, deadline=Deadline(18.5, "3 missed heartbeats x (5 s + 0.5 s) + 2 s")
    ),
    Figure("partition", "healed: to Ready", 40.0, deadline=Deadline(35.5, "backoff")),
    Figure("worker lost", "failed requests during", 3, "requests", note="of 90"),
]


def test_render_has_a_resilience_table_with_each_figure_and_its_deadline() -> None:
    lines = render(facts(figures=FIGURES)).splitlines()
    assert "## Resilience" in lines
    assert "| scenario | measured | value | deadline | held |" in lines
    assert (
        "| worker lost | to Down | 12.4 s | 18.5 s (3 missed heartbeats x (5 s + 0.5 s) + 2 s) | yes |"
        in lines
    )
    assert "| partition | healed: to Ready | 40.0 s | 35.5 s (backoff) | NO |" in lines
    assert "| worker lost | failed requests during | 3 requests of 90 | - | - |" in lines
    assert "## Resilience" not in render(facts())


def test_suite_properties_carry_the_resilience_figures() -> None:
    props = dict(suite_properties(facts(figures=FIGURES)))
    assert props["swarm_resilience_worker_lost_to_down"] == (
        "worker lost: to Down 12.4 s, within its deadline 18.5 s (3 missed heartbeats x (5 s + 0.5 s) + 2 s)"
    )
    assert props["swarm_resilience_partition_healed_to_ready"].startswith(
        "partition: healed: to Ready 40.0 s, PAST"
    )
