"""The lesson's requirements on a model shaped like the rendered reddit stack, and its mistakes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pytest_swarm.lesson import REQUIREMENTS, env_problems

APP_DEPLOY = {
    "ui": {"parallelism": 1, "delay": "5s", "failure_action": "rollback"},
    "post": {"parallelism": 2, "delay": "10s", "failure_action": "rollback"},
    "comment": {"parallelism": 2, "delay": "10s", "failure_action": "rollback"},
}


def app(name: str) -> dict[str, Any]:
    small = name == "ui"
    return {
        "image": f"reddit/{name}:1.0",
        "networks": {"front_net": None} if small else {"front_net": None, "back_net": None},
        "ports": [{"published": 9292, "target": 9292}] if small else [],
        "environment": {"ENV": "DEV"} if small else {},
        "deploy": {
            "replicas": 3,
            "placement": {"constraints": ["node.role == worker"]},
            "update_config": APP_DEPLOY[name],
            "resources": {
                "limits": {"cpus": "0.25" if small else "0.30", "memory": "150M" if small else "300M"}
            },
            "restart_policy": {
                "condition": "on-failure",
                "max_attempts": 3 if small else 12,
                "delay": "3s" if small else "1s",
            },
        },
    }


GOOD = {
    "services": {
        "ui": app("ui"),
        "post": app("post"),
        "comment": app("comment"),
        "mongo": {
            "image": "mongo:7.0",
            "volumes": [{"type": "volume", "source": "mongo_data", "target": "/data/db"}],
            "networks": {"back_net": {"aliases": ["post_db", "comment_db"]}},
            "deploy": {"placement": {"constraints": ["node.labels.reliability == high"]}},
        },
        "node-exporter": {"image": "reddit/node-exporter:1.5", "deploy": {"mode": "global"}},
    }
}


def failing(model: dict[str, Any], roles: dict[str, str] | None = None) -> dict[str, list[str]]:
    found = {r.id: r.check(model, roles or {}) for r in REQUIREMENTS}
    return {rid: problems for rid, problems in found.items() if problems}


def test_the_lesson_stack_meets_every_requirement() -> None:
    assert failing(GOOD) == {}


@pytest.mark.parametrize(
    ("mistake", "requirement", "message"),
    [
        (
            ("mongo", "deploy", "placement", "constraints", ["node.role == manager"]),
            "L01",
            "required 'node.labels",
        ),
        (("ui", "deploy", "replicas", 2), "L03", "ui: replicas 2, required >= 3"),
        (("ui", "deploy", "update_config", {"parallelism": 2, "delay": "5s"}), "L05", "update parallelism 2"),
        (("post", "deploy", "update_config", "failure_action", "pause"), "L06", "failure_action pause"),
        (("ui", "deploy", "resources", {}), "L07", "ui: limits cpus None memory None, required cpus 0.25"),
        (
            ("comment", "deploy", "restart_policy", "max_attempts", 20),
            "L10",
            "max_attempts 20, required 10..15",
        ),
        (("post", "image", "reddit/post:latest"), "L11", "post: image 'reddit/post:latest' has tag latest"),
        (("post", "image", "reddit/post"), "L11", "has tag (none: latest)"),
        (
            ("mongo", "networks", {"back_net": {"aliases": ["post_db"]}}),
            "L12",
            "required post_db and comment_db",
        ),
    ],
)
def test_each_mistake_fails_exactly_its_requirement(
    mistake: tuple[Any, ...], requirement: str, message: str
) -> None:
    model = copy.deepcopy(GOOD)
    target = model["services"][mistake[0]]
    for key in mistake[1:-2]:
        target = target.setdefault(key, {})
    target[mistake[-2]] = mistake[-1]
    found = failing(model)
    assert list(found) == [requirement]
    assert any(message in problem for problem in found[requirement]), found


def test_roles_map_to_other_service_names() -> None:
    model = copy.deepcopy(GOOD)
    model["services"]["frontend"] = model["services"].pop("ui")
    assert set(failing(model)) == {"L05", "L07", "L09", "L14", "L02", "L03", "L11"}
    assert failing(model, {"ui": "frontend"}) == {}
    assert "no service 'ui'" in failing(model)["L05"][0]


def test_env_must_follow_the_env_file() -> None:
    assert env_problems({"dev": ("DEV", "DEV"), "stage": ("STAGE", "STAGE")}) == []
    problems = env_problems({"dev": ("DEV", "DEV"), "stage": ("STAGE", "DEV")})
    assert problems == [
        "stage: ui environment ENV='DEV', required 'STAGE' (use ENV: ${ENV}, not a fixed value)"
    ]
