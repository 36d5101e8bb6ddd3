"""The requirement profile's rules (``--swarm-requirements``: by default the lesson's, for the
lesson's app), one test per requirement, named after it.

These read the compose and env files only (no cluster): the other suites check that swarm
applies and enforces what the files declare. Each failure names the service, what it declares
and what the requirement asks.
"""

from __future__ import annotations

import re

import pytest

from pytest_swarm import Declared, Requirement, StackError, lifecycle_of, render


def slug(requirement: Requirement) -> str:
    return f"{requirement.id}-" + re.sub(r"[^a-z0-9]+", "-", requirement.title.lower()).strip("-")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "requirement" not in metafunc.fixturenames:
        return
    lifecycle = lifecycle_of(metafunc.config)
    profile = lifecycle.profile
    found = list(profile.requirements) if profile else []
    marks = [] if found else [pytest.mark.skip(reason=lifecycle.no_profile_because)]
    metafunc.parametrize(
        "requirement", found or [pytest.param(None, marks=marks)], ids=slug if found else None
    )


@pytest.fixture(scope="module")
def declared(request: pytest.FixtureRequest) -> Declared:
    """The --swarm-env stack as the rules judge it (every other env file rendered beside it)."""
    lifecycle = lifecycle_of(request.config)
    settings = lifecycle.settings
    assert lifecycle.profile is not None and settings.env_file is not None
    others = {}
    for env in sorted(settings.envs):
        if settings.envs[env].resolve() != settings.env_file.resolve():
            try:
                others[env] = render(lifecycle.source(env))
            except StackError:
                continue  # deploying that env names what is wrong with it
    return lifecycle.profile.declared(
        lifecycle.declared_model(),
        settings.stacks,
        settings.env_file,
        settings.roles,
        settings.planned_nodes(),
        others,
    )


def test_requirement(declared: Declared, requirement: Requirement) -> None:
    problems = requirement.problems(declared)
    assert not problems, f"{requirement.label}:\n" + "\n".join(problems)
