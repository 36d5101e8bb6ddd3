"""pytest hooks only: options, settings, markers, header, signals and the terminal summary.

The work lives in lifecycle.py (cluster and stacks) and fixtures.py (what tests receive).
"""

from __future__ import annotations

import os
import signal
from contextlib import nullcontext
from types import FrameType
from typing import Any

import pytest

from . import evidence, timing
from .capabilities import FEATURES
from .errors import SwarmError
from .lifecycle import LIFECYCLE, SwarmLifecycle, lifecycle_of
from .settings import OPTIONS, Settings, SettingsError, resolve

pytest_plugins = ["pytest_swarm.fixtures"]

SETTINGS = pytest.StashKey[Settings]()
_PREVIOUS_SIGTERM = pytest.StashKey[Any]()


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
    cli = {opt.name: config.getoption(opt.dest, None) for opt in OPTIONS}
    ini = {opt.name: config.getini(opt.ini) for opt in OPTIONS}
    try:
        settings = resolve(cli, os.environ, ini, config.rootpath)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from exc
    config.stash[SETTINGS] = settings
    config.stash[LIFECYCLE] = SwarmLifecycle(settings, _progress(config))
    _install_sigterm(config)


def _progress(config: pytest.Config) -> Any:
    """Progress lines go straight to the terminal, past output capturing (like live logs)."""

    def write(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        suspended = capture.global_and_fixture_disabled() if capture is not None else nullcontext()
        with suspended:
            reporter.write_line(f"[swarm] {message}")

    return write


def _install_sigterm(config: pytest.Config) -> None:
    """SIGTERM unwinds like Ctrl-C, so the cluster is removed in the fixtures' finally blocks."""

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
    except SwarmError as exc:
        raise pytest.UsageError(f"swarm: {exc}") from exc


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_PREVIOUS_SIGTERM, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS]
    lines = [settings.describe()]
    explicit = {k: v for k, v in settings.sources.items() if v != "default"}
    if explicit:
        lines.append("swarm settings from: " + ", ".join(f"{k}={v}" for k, v in sorted(explicit.items())))
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the evidence of the stacks it used (terminal and JUnit);
    a passed one's time is split into declared waits and the rest."""
    report = yield
    if report.passed and call.when == "call":
        found = timing.timing_of(report.nodeid, report.duration, item.user_properties)
        if found is not None:
            lifecycle_of(item.config).timings.append(found)
    if report.failed and call.when == "call":
        for stack in evidence.stacks_used_by(item):
            text = evidence.collect(stack, evidence.services_tested_by(item))
            report.sections.append((f"swarm evidence: stack {stack.name}", text))
            item.user_properties.append((f"swarm_evidence_{stack.name}", text))  # JUnit <property>
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if LIFECYCLE not in config.stash:
        return
    lines = lifecycle_of(config).summary
    if lines:
        terminalreporter.section("swarm")
        for line in lines:
            terminalreporter.write_line(line)
    timings = lifecycle_of(config).timings
    if timings:
        terminalreporter.section("swarm timing: declared waits and the rest")
        for found in timings:
            terminalreporter.write_line(found.describe())
