"""The run's review summary: a Markdown file for a pull request (``--swarm-report``) and the same
facts as JUnit properties.

Pure logic: plugin.py feeds it each test's reports and, at the end, what the lifecycle recorded
(cluster, stacks, timings); nothing here talks to docker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .resilience import Figure
from .timing import Timing

if TYPE_CHECKING:
    from .lifecycle import SwarmLifecycle

REASON_CHARS = 240

# Worst first: a requirement checked by several tests takes the worst outcome.
OUTCOMES = ("error", "failed", "interrupted", "xpassed", "skipped", "xfailed", "passed")
SHORT = {
    "passed": "pass",
    "failed": "FAIL",
    "error": "ERROR",
    "skipped": "skip",
    "xfailed": "xfail",
    "xpassed": "XPASS",
    "interrupted": "INTERRUPTED",
}


REQUIREMENT_TEST = "test_requirement"  # pytest_swarm/acceptance/test_requirements.py


def requirement_of(nodeid: str, requirements: Sequence[tuple[str, str]]) -> str | None:
    """The requirement a test checks, from its id: ``test_requirement[L01-mongo-runs-...]`` ->
    "L01 mongo runs only on the reliability=high node" (``requirements``: the profile's ids and
    titles); None for other tests."""
    name = nodeid.rsplit("::", 1)[-1]
    if not name.startswith(REQUIREMENT_TEST + "["):
        return None
    param = name[len(REQUIREMENT_TEST) + 1 : -1]
    for rid, title in sorted(requirements, key=lambda r: -len(r[0])):
        if param == rid or param.startswith(rid + "-"):
            return f"{rid} {title}"
    return None


def first_line(text: str) -> str:
    """The first meaningful line of a failure message: ``AssertionError: L01 ...:`` followed by the
    first problem it introduces, on one line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[0].removeprefix("AssertionError: ").removeprefix("Failed: ")
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1]}"
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


def reason_of(report: Any) -> str:
    """Why a test report did not pass: the skip reason, the xfail reason or the failure's first
    line ("" for a pass). ``report`` is a ``pytest.TestReport``."""
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        return first_line(str(wasxfail)) or "expected to fail"
    longrepr = report.longrepr
    if report.passed or longrepr is None:
        return ""
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        return first_line(str(longrepr[2]).removeprefix("Skipped: "))
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    return first_line(str(message) if message is not None else str(longrepr))


@dataclass
class Check:
    """One test's outcome over its phases; ``seconds`` is its call phase. It is "interrupted" from
    its setup until its call reports (a Ctrl-C inside a test leaves it so)."""

    nodeid: str
    outcome: str = "interrupted"
    seconds: float = 0.0
    reason: str = ""


@dataclass
class Checks:
    """Every test's outcome, in the order they ran."""

    by_id: dict[str, Check] = field(default_factory=dict)

    def add(self, report: Any) -> Check:
        """Take one phase's ``pytest.TestReport`` (setup, call, teardown) into its test's outcome."""
        check = self.by_id.setdefault(report.nodeid, Check(report.nodeid))
        reason = reason_of(report)
        xfail = getattr(report, "wasxfail", None) is not None
        if report.when == "call":
            check.seconds = report.duration
        if report.failed and report.when != "call":
            if check.outcome in ("passed", "skipped", "interrupted"):
                check.outcome, check.reason = "error", f"{report.when}: {reason}"
        elif report.failed:
            check.outcome, check.reason = "failed", reason
        elif report.skipped:
            check.outcome, check.reason = ("xfailed" if xfail else "skipped"), reason
        elif report.passed and xfail:
            check.outcome, check.reason = "xpassed", reason
        elif report.passed and report.when == "call":
            check.outcome = "passed"
        return check

    def __iter__(self) -> Any:
        return iter(self.by_id.values())

    def counts(self) -> dict[str, int]:
        counts = {outcome: 0 for outcome in OUTCOMES}
        for check in self.by_id.values():
            counts[check.outcome] += 1
        return counts


@dataclass(frozen=True)
class NodeRow:
    name: str
    role: str
    state: str
    engine: str
    address: str


@dataclass(frozen=True)
class StackRow:
    name: str
    env: str
    services: int
    seconds: float
    unconverged: str = ""  # why it did not converge ("" when it did)

    @property
    def converged(self) -> str:
        if self.unconverged:
            return f"NO: {first_line(self.unconverged)}"
        return f"yes, in {self.seconds:.1f} s"


@dataclass
class RunFacts:
    """What the report is written from."""

    env: str | None
    provider: str
    exit: str  # pytest's exit status name: OK, TESTS_FAILED, INTERRUPTED, ...
    checks: Checks
    cluster: str = ""  # "<id>, ready in 1.6 s", "" when none was brought up
    nodes: Sequence[NodeRow] = ()
    stacks: Sequence[StackRow] = ()
    timings: Sequence[Timing] = ()
    notes: Sequence[str] = ()
    variables: Sequence[tuple[str, str]] = ()  # --swarm-set, over every env file's
    profile: str = ""  # the requirement profile's name ("" for none)
    requirements: Sequence[tuple[str, str]] = ()  # its (id, title) pairs
    figures: Sequence[Figure] = ()  # what the disruptive checks measured, in the order measured

    @property
    def verdict(self) -> str:
        counts = self.checks.counts()
        if self.exit == "INTERRUPTED":
            return "INTERRUPTED"
        bad = counts["failed"] + counts["error"] + counts["xpassed"] + counts["interrupted"]
        return "FAILED" if bad or self.exit not in ("OK", "NO_TESTS_COLLECTED") else "PASSED"


def facts_of(lifecycle: SwarmLifecycle, checks: Checks, exit: str) -> RunFacts:
    """What ``lifecycle`` recorded (no docker call: the cluster may be gone by now)."""
    cluster = lifecycle.brought_up
    addresses = cluster.addresses if cluster is not None else {}
    verb = "reattached" if lifecycle.reused else "ready"
    return RunFacts(
        env=lifecycle.settings.env,
        provider=lifecycle.settings.provider,
        exit=exit,
        checks=checks,
        cluster=""
        if cluster is None
        else f"{lifecycle.session.id}, {verb} in {cluster.seconds_to_ready:.1f} s",
        nodes=[
            NodeRow(
                name=node.name,
                role="manager (Leader)" if node.leader else node.role,
                state=f"{node.state}/{node.availability}",
                engine=node.engine_version,
                address=addresses.get(node.name, node.addr),
            )
            for node in lifecycle.nodes_seen
        ],
        stacks=[
            StackRow(
                name=stack.name,
                env=stack.source.env,
                services=len(stack.declared_services),
                seconds=stack.seconds_to_converge,
                unconverged=stack.unconverged,
            )
            for stack in lifecycle.stacks.values()
        ],
        timings=list(lifecycle.timings),
        notes=list(lifecycle.summary),
        variables=sorted(lifecycle.settings.variables.items()),
        profile=lifecycle.profile.name if lifecycle.profile else "",
        requirements=lifecycle.requirement_titles(),
        figures=list(lifecycle.figures),
    )


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def counts_line(checks: Checks) -> str:
    counts = checks.counts()
    others = ("failed", "error", "skipped", "xfailed", "xpassed", "interrupted")
    shown = [f"{counts[o]} {o}" for o in others if counts[o]]
    return ", ".join([f"{counts['passed']} passed", *shown])


def requirement_rows(checks: Checks, requirements: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(requirement, result, why) for every requirement of the profile; "not run" where no test
    ran it."""
    found: dict[str, Check] = {}
    for check in checks:
        wanted = requirement_of(check.nodeid, requirements)
        if wanted is None:
            continue
        seen = found.get(wanted)
        if seen is None or OUTCOMES.index(check.outcome) < OUTCOMES.index(seen.outcome):
            found[wanted] = check
    rows = []
    for rid, name in requirements:
        label = f"{rid} {name}"
        check = found.get(label)
        rows.append((label, "not run", "") if check is None else (label, SHORT[check.outcome], check.reason))
    return rows


def render(facts: RunFacts) -> str:
    """The Markdown report (not yet masked: the caller masks the whole text)."""
    lines = [
        f"# pytest-swarm: {facts.verdict} ({counts_line(facts.checks)})",
        "",
        *_table(
            ("", ""),
            [
                ("env", facts.env or "- (no --swarm-env)"),
                ("provider", facts.provider),
                ("cluster", facts.cluster or "none brought up"),
                ("pytest exit", facts.exit),
                *(
                    [("variables set", ", ".join(f"{k}={v}" for k, v in facts.variables))]
                    if facts.variables
                    else []
                ),
            ],
        ),
        "",
    ]
    if facts.nodes:
        lines += ["## Cluster", ""]
        lines += _table(
            ("node", "role", "state", "engine", "address"),
            [(n.name, n.role, n.state, n.engine, n.address) for n in facts.nodes],
        )
        lines.append("")
    if facts.stacks:
        lines += ["## Stacks", ""]
        lines += _table(
            ("stack", "env", "services", "converged"),
            [(s.name, s.env, str(s.services), s.converged) for s in facts.stacks],
        )
        lines.append("")
    rows = requirement_rows(facts.checks, facts.requirements)
    if any(result != "not run" for _, result, _ in rows):
        lines += [f"## Requirements (profile {facts.profile})", ""]
        lines += _table(("requirement", "result", "why"), rows)
        lines.append("")
    lines += ["## Checks", ""]
    checks = list(facts.checks)
    if checks:
        lines += _table(
            ("test", "result", "time", "why"),
            [(c.nodeid, SHORT[c.outcome], f"{c.seconds:.1f} s", c.reason) for c in checks],
        )
    else:
        lines.append("No test ran.")
    lines.append("")
    if facts.figures:
        lines += ["## Resilience", ""]
        lines += _table(("scenario", "measured", "value", "deadline", "held"), resilience_rows(facts.figures))
        lines.append("")
    if facts.timings:
        declared = sum(t.declared for t in facts.timings)
        rest = sum(t.rest for t in facts.timings)
        lines += [
            "## Timing: declared waits and the rest",
            "",
            f"Tests that declared waits: {declared:.1f} s of declared waits, {rest:.1f} s rest.",
            "",
            *(f"- {t.describe()}" for t in facts.timings),
            "",
        ]
    if facts.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in facts.notes), ""]
    return "\n".join(lines)


def resilience_rows(figures: Sequence[Figure]) -> list[tuple[str, str, str, str, str]]:
    """(scenario, what, value, deadline and its basis, held) per figure."""
    rows = []
    for f in figures:
        deadline = "-" if f.deadline is None else f"{f.deadline.seconds:.1f} s ({f.deadline.basis})"
        held = {None: "-", True: "yes", False: "NO"}[f.held]
        rows.append((f.scenario, f.what, f.shown(), deadline, held))
    return rows


def suite_properties(facts: RunFacts) -> list[tuple[str, str]]:
    """Session-level JUnit properties (``<testsuite><properties>``)."""
    props = [
        ("swarm_verdict", facts.verdict),
        ("swarm_env", facts.env or "-"),
        ("swarm_provider", facts.provider),
        ("swarm_cluster", facts.cluster or "none brought up"),
        *([("swarm_set", ", ".join(f"{k}={v}" for k, v in facts.variables))] if facts.variables else []),
    ]
    props += [
        (f"swarm_node_{n.name}", f"{n.role}, {n.state}, engine {n.engine}, address {n.address}")
        for n in facts.nodes
    ]
    props += [
        (f"swarm_stack_{s.name}", f"env {s.env}, {s.services} services, converged {s.converged}")
        for s in facts.stacks
    ]
    props += [(f"swarm_resilience_{f.key}", f.describe()) for f in facts.figures]
    return props


def timing_properties(found: Timing) -> list[tuple[str, str]]:
    """A test's JUnit properties for its time split."""
    return [
        ("swarm_declared_wait_seconds", f"{found.declared:.1f}"),
        ("swarm_rest_seconds", f"{found.rest:.1f}"),
    ]
