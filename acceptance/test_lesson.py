"""The lesson's required values (its homework), one test per requirement, named after it.

These read the rendered stack only (no cluster): the other suites check that swarm applies and
enforces what the files declare. Map differently named services with ``swarm_lesson_services``.
"""

from __future__ import annotations

import re

import pytest

from pytest_swarm.lesson import REQUIREMENTS, Requirement, env_problems
from pytest_swarm.lifecycle import lifecycle_of
from pytest_swarm.settings import Settings, available_envs
from pytest_swarm.stack import render


def slug(requirement: Requirement) -> str:
    return f"{requirement.id}-" + re.sub(r"[^a-z0-9]+", "-", requirement.name.lower()).strip("-")


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=slug)
def test_lesson_requirement(
    request: pytest.FixtureRequest, swarm_settings: Settings, requirement: Requirement
) -> None:
    model = lifecycle_of(request.config).declared_model()
    problems = requirement.check(model, swarm_settings.lesson_services)
    assert not problems, f"{requirement.id} {requirement.name}:\n" + "\n".join(problems)


def test_L15_ui_shows_the_env_of_each_env_file(
    request: pytest.FixtureRequest, swarm_settings: Settings
) -> None:
    lifecycle = lifecycle_of(request.config)
    ui = swarm_settings.lesson_services.get("ui", "ui")
    seen = {}
    for env in available_envs(swarm_settings.envs_dir):
        source = lifecycle.source(env)
        environment = (render(source)["services"].get(ui) or {}).get("environment") or {}
        seen[env] = (source.values().get("ENV", env.upper()), environment.get("ENV"))
    problems = env_problems(seen)
    assert not problems, "L15 ui shows the env it runs in:\n" + "\n".join(problems)
