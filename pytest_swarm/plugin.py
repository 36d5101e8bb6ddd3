"""pytest hooks only: options, settings, markers, header, signals, the terminal summary and the
review report.

The work lives in lifecycle.py (cluster and stacks), fixtures.py (what tests receive), report.py
(the Markdown report and JUnit properties) and secrets.py (masking).
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from collections.abc import Callable
from contextlib import nullcontext
from types import FrameType
from typing import Any

import pytest

from . import evidence, timing, together, waiting, workers
from .capabilities import FEATURES, TESTED_ON, skip_reason
from .errors import StackError, SwarmError
from .lifecycle import LIFECYCLE, SwarmLifecycle, lifecycle_of
from .options import OPTIONS
from .report import (
    Checks,
    RunFacts,
    facts_of,
    reason_of,
    render,
    requirement_of,
    suite_properties,
    timing_properties,
)
from .secrets import Masker
from .settings import Settings, SettingsError, resolve
from .stack import load_env

pytest_plugins = ["pytest_swarm.fixtures"]

SETTINGS = pytest.StashKey[Settings]()
MASKER = pytest.StashKey[Masker]()
_PREVIOUS_SIGTERM = pytest.StashKey[Any]()
_CHECKS = pytest.StashKey[Checks]()
_REPORT_OUTCOME = pytest.StashKey[str]()
_HEARTBEAT = pytest.StashKey[Callable[[str], None]]()
_WORKER_FACTS = pytest.StashKey[dict[str, RunFacts]]()
_FACTS = pytest.StashKey[RunFacts]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("swarm", "Docker Swarm acceptance testing (pytest-swarm)")
    for opt in OPTIONS:
        help_text = f"{opt.help} (ini {opt.ini}, env {opt.env}; default {opt.default or 'none'})"
        if opt.ini_type != "linelist":
            if opt.flag:
                group.addoption(
                    opt.cli,
                    dest=opt.dest,
                    action="store_const",
                    const="true",
                    default=None,
                    help=help_text,
                )
            else:
                group.addoption(opt.cli, dest=opt.dest, default=None, help=help_text)
        if opt.ini_type == "linelist":
            parser.addini(opt.ini, help_text, type="linelist", default=[])
        else:
            parser.addini(opt.ini, help_text, type="string", default="")


def pytest_configure(config: pytest.Config) -> None:
    for marker, (_, feature) in FEATURES.items():
        config.addinivalue_line("markers", f"{marker}: the test needs {feature}; skipped where missing")
    config.addinivalue_line(
        "markers",
        "disruptive: kills, drains or cuts off nodes of a cluster of its own (dind: by default; "
        "elsewhere with --swarm-disruptive); deselect with -m 'not disruptive'",
    )
    cli = {opt.name: config.getoption(opt.dest, None) for opt in OPTIONS}
    ini = {opt.name: config.getini(opt.ini) for opt in OPTIONS}
    try:
        settings = resolve(cli, os.environ, ini, config.rootpath)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if workers.controls_workers(config) and (settings.reuse or settings.keep != "never"):
        raise pytest.UsageError(
            "--swarm-keep and --swarm-reuse keep one cluster for the project; under pytest-xdist each "
            "worker brings up its own: run without -n to keep or reuse a cluster"
        )
    config.stash[SETTINGS] = settings
    config.stash[MASKER] = _masker(settings)
    config.stash[_HEARTBEAT] = waiting.set_heartbeat(_progress(config))
    config.stash[_CHECKS] = Checks()
    config.pluginmanager.register(_CheckRecorder(config.stash[_CHECKS]), "swarm-checks")
    try:
        config.stash[LIFECYCLE] = SwarmLifecycle(
            settings, _progress(config), lambda: _install_sigterm(config)
        )
    except SwarmError as exc:  # a rules file that can't be used
        raise pytest.UsageError(str(exc)) from exc


def _asked(config: pytest.Config) -> bool:
    """Whether this run uses the plugin: a swarm option given (command line, environment, ini),
    or a cluster or stack asked for. A run that does neither sees no trace of it."""
    settings = config.stash[SETTINGS]
    return any(source != "default" for source in settings.sources.values()) or lifecycle_of(config).used


def _masker(settings: Settings) -> Masker:
    """Secret values known before any deploy: the environment's and every env file's."""
    masker = Masker()
    masker.add(os.environ)
    masker.add(settings.variables)
    for env_file in {*settings.envs.values(), *([settings.env_file] if settings.env_file else [])}:
        try:
            masker.add(load_env(env_file))
        except StackError:
            continue  # a broken env file stops the run that deploys it, with its own message
    return masker


def _progress(config: pytest.Config) -> Any:
    """Progress lines go straight to the terminal, past output capturing (like live logs), one
    whole line at a time: the threads of waits that run side by side say theirs together."""
    one_at_a_time = threading.Lock()

    def write(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        with one_at_a_time:
            suspended = capture.global_and_fixture_disabled() if capture is not None else nullcontext()
            with suspended:
                reporter.write_line(f"[swarm] {config.stash[MASKER](message)}")

    return write


def _install_sigterm(config: pytest.Config) -> None:
    """SIGTERM unwinds like Ctrl-C, so the cluster is removed in the fixtures' finally blocks
    (installed when the run first asks for a cluster)."""
    if _PREVIOUS_SIGTERM in config.stash:
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        config.stash[_PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        pass  # not the main thread (e.g. embedded pytest): leave signals alone


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --swarm-env, render the stack first: a bad env or compose file stops the run at once."""
    lifecycle = lifecycle_of(session.config)
    if lifecycle.settings.env is None:
        return
    try:
        lifecycle.declared_model()
        lifecycle.check_labels()
        lifecycle.note_team_files_bound()
    except SwarmError as exc:
        raise pytest.UsageError(f"swarm: {exc}") from exc


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Before the fixtures tear down: operations running beside the tests stop waiting."""
    together.interrupt_all()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HEARTBEAT in config.stash:
        waiting.set_heartbeat(config.stash[_HEARTBEAT])
    previous = config.stash.get(_PREVIOUS_SIGTERM, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _asked(config):
        return []
    settings = config.stash[SETTINGS]
    lines = [settings.describe()]
    explicit = {k: v for k, v in settings.sources.items() if v != "default"}
    if explicit:
        lines.append("swarm settings from: " + ", ".join(f"{k}={v}" for k, v in sorted(explicit.items())))
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    """After its fixtures: a test marked needs_routing_mesh / needs_vip is skipped at once on a
    cluster whose nodes lack what it needs, naming the nodes and the kernel feature (the run's
    cluster, or the one its fixtures said it runs on: capabilities.judged_on)."""
    outcome = yield
    markers = [marker for marker in FEATURES if item.get_closest_marker(marker) is not None]
    if markers:
        # the run's cluster is up already when the test's fixtures need it
        cluster = item.stash.get(TESTED_ON, None) or lifecycle_of(item.config).cluster()
        for marker in markers:
            missing = cluster.missing_capability(FEATURES[marker][0])
            if missing:
                pytest.skip(skip_reason(marker, missing, cluster.unprobed))
    return outcome


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: sees the report as xfail left it
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the evidence of the stacks it used (terminal and JUnit);
    a passed one's time is split into declared waits and the rest. Each test's JUnit properties
    name its requirement and why it did not pass; their secret values are masked."""
    masker = item.config.stash[MASKER]
    if call.when == "teardown":  # JUnit takes the teardown report's properties: mask them first
        item.user_properties[:] = [(k, _masked(v, masker)) for k, v in item.user_properties]
    report = yield
    if call.when == "setup":
        requirement = requirement_of(item.nodeid, lifecycle_of(item.config).requirement_titles())
        if requirement is not None:
            item.user_properties.append(("swarm_requirement", requirement))
    if report.passed and call.when == "call":
        found = timing.timing_of(report.nodeid, report.duration, item.user_properties)
        if found is not None:
            lifecycle_of(item.config).timings.append(found)
            item.user_properties.extend(timing_properties(found))
    if report.failed and call.when == "call":
        for stack in evidence.stacks_used_by(item):
            masker.add(stack.values)
            text = masker(evidence.collect(stack, evidence.services_tested_by(item)))
            report.sections.append((f"swarm evidence: stack {stack.name}", text))
            item.user_properties.append((f"swarm_evidence_{stack.name}", text))  # JUnit <property>
        for title, text in evidence.texts_of(item):
            report.sections.append((f"swarm evidence: {title}", masker(text)))
            key = "_".join(title.lower().split())
            item.user_properties.append((f"swarm_evidence_{key}", masker(text)))
    if call.when != "teardown" and (not report.passed or hasattr(report, "wasxfail")):
        reason = reason_of(report)
        if reason:
            item.user_properties.append(("swarm_outcome_reason", masker(reason)))
    return report


def _masked(value: object, masker: Masker) -> object:
    text = str(value)
    masked = masker(text)
    return value if masked == text else masked


class _CheckRecorder:
    """Registered for the run: every test phase's final report goes into the run's checks."""

    def __init__(self, checks: Checks) -> None:
        self.checks = checks

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.checks.add(report)


@pytest.hookimpl(tryfirst=True)  # before the junitxml plugin writes its file
def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    """The run's facts as JUnit suite properties and, with --swarm-report, as a Markdown file;
    also when tests failed or the run was interrupted."""
    config = session.config
    if LIFECYCLE not in config.stash or not _asked(config):
        return
    lifecycle, masker = lifecycle_of(config), config.stash[MASKER]
    lifecycle.finish(failed=session.testsfailed > 0)  # a cluster no swarm fixture took (gate only)
    for stack in lifecycle.stacks.values():
        masker.add(stack.values)
    try:
        exit_name = pytest.ExitCode(exitstatus).name
    except ValueError:
        exit_name = str(exitstatus)
    facts = facts_of(lifecycle, config.stash[_CHECKS], exit_name)
    worker_output = getattr(config, "workeroutput", None)
    if worker_output is not None:  # an xdist worker: the controller writes the report
        worker_output[workers.FACTS] = workers.facts_out(facts)
        return
    found: dict[str, RunFacts] = config.stash.get(_WORKER_FACTS, {})
    facts = workers.merged(facts, found)
    config.stash[_FACTS] = facts
    add_suite_property = _junit_suite_property(config)
    if add_suite_property is not None:
        for name, value in suite_properties(facts):
            add_suite_property(name, masker(value))
    text = masker(render(facts))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")  # a GitHub Actions job's summary page
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as page:
                page.write(text + "\n")
        except OSError as exc:
            lifecycle.note(f"report NOT added to the job summary {summary}: {exc}")
    path = lifecycle.settings.report
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        config.stash[_REPORT_OUTCOME] = f"report written to {path}"
    except OSError as exc:
        config.stash[_REPORT_OUTCOME] = f"report NOT written to {path}: {exc}"


def _junit_suite_property(config: pytest.Config) -> Any:
    """``add_global_property`` of the junitxml plugin's writer (what the ``record_testsuite_property``
    fixture hands tests), or None without --junitxml. Found by that method, not by pytest internals."""
    for plugin in config.pluginmanager.get_plugins():
        add = getattr(plugin, "add_global_property", None)
        if callable(add):
            return add
    return None


def _dist_chosen(config: pytest.Config) -> bool:
    """Whether the user chose xdist's distribution (``--dist``): theirs is kept."""
    given = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    return any(str(arg).startswith("--dist") for arg in [*given, *config.getini("addopts")])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist, whole test files go to a worker (see workers.py), unless ``--dist``
    says otherwise (tests that share nothing of a worker's cluster, say)."""
    if not _asked(config) or _dist_chosen(config):
        return None
    from xdist.scheduler import LoadFileScheduling  # only where xdist runs this hook

    return LoadFileScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """The controller keeps each worker's facts for the one report it writes."""
    output = getattr(node, "workeroutput", {}) or {}
    if workers.FACTS in output:
        found = node.config.stash.setdefault(_WORKER_FACTS, {})
        found[str(node.workerinput["workerid"])] = workers.facts_in(output[workers.FACTS])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if LIFECYCLE not in config.stash:
        return
    masker = config.stash[MASKER]
    merged = config.stash.get(_FACTS, None)
    lines = list(merged.notes) if merged is not None else lifecycle_of(config).summary
    if config.stash.get(_REPORT_OUTCOME, None):
        lines = [*lines, config.stash[_REPORT_OUTCOME]]
    if lines:
        terminalreporter.section("swarm")
        for line in lines:
            terminalreporter.write_line(masker(line))
    figures = list(merged.figures) if merged is not None else lifecycle_of(config).figures
    if figures:
        terminalreporter.section("swarm resilience: measured, and the deadline each was held to")
        for figure in figures:
            terminalreporter.write_line(masker(figure.describe()))
    timings = list(merged.timings) if merged is not None else lifecycle_of(config).timings
    if timings:
        terminalreporter.section("swarm timing: declared waits and the rest")
        for found in timings:
            terminalreporter.write_line(masker(found.describe()))
