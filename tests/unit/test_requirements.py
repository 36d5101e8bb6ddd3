"""Requirement profiles: the lesson's rules on a stack shaped like the rendered reddit one, its
mistakes, stacks that meet the intent under other names, and rules files with errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_swarm.errors import ProfileError
from pytest_swarm.placement import NodeFacts
from pytest_swarm.requirements import Profile, load_profile, parse_profile
from pytest_swarm.roles import find_roles
from pytest_swarm.rules import Declared

LESSON = load_profile("lesson", Path("."))
NODES = [
    NodeFacts("m", "master-1", "manager", labels={"reliability": "high"}),
    NodeFacts("w1", "worker-1", "worker", labels={}),
    NodeFacts("w2", "worker-2", "worker", labels={}),
]
UPDATES = {
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
            "update_config": UPDATES[name],
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


GOOD: dict[str, Any] = {
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
# how the files were written, where rendering loses it (variables, env files)
GOOD_RAW: dict[str, Any] = {
    "ui": {"environment": {"ENV": "${ENV}"}, "ports": ["${UI_PORT}:9292"], "env_file": []},
    "post": {"environment": {}, "ports": [], "env_file": []},
}


def declared(
    model: dict[str, Any],
    raw: dict[str, Any] | None = None,
    profile: Profile | None = LESSON,
    others: dict[str, Any] | None = None,
    roles: dict[str, str] | None = None,
) -> Declared:
    assert profile is not None
    return Declared(
        model=model,
        raw=GOOD_RAW if raw is None else raw,
        env_file=Path("/project/envs/dev.env"),
        base=Path("/project/envs"),
        roles=find_roles(model, profile.roles, roles or {}),
        nodes=NODES,
        other_envs=others or {},
    )


def failing(stack: Declared, profile: Profile | None = LESSON) -> dict[str, list[str]]:
    assert profile is not None
    found = {r.id: r.problems(stack) for r in profile.requirements}
    return {rid: problems for rid, problems in found.items() if problems}


def changed(*path: Any) -> dict[str, Any]:
    """GOOD with the value at ``path[:-1]`` set to ``path[-1]``."""
    model = copy.deepcopy(GOOD)
    node = model["services"]
    for key in path[:-2]:
        node = node.setdefault(key, {})
    node[path[-2]] = path[-1]
    return model


def test_the_lesson_stack_meets_every_requirement() -> None:
    assert failing(declared(GOOD)) == {}


@pytest.mark.parametrize(
    ("mistake", "requirement", "message"),
    [
        (
            ("mongo", "deploy", "placement", "constraints", ["node.role == worker"]),
            "L01",
            "mongo: placement constraints ['node.role == worker'] let it run on ['worker-1', 'worker-2']; "
            "required: only where node.labels.reliability == high",
        ),
        (
            ("ui", "deploy", "placement", "constraints", []),
            "L02",
            "ui: placement constraints none let it run on ['master-1']; "
            "required: only where node.role == worker",
        ),
        (("ui", "deploy", "replicas", 2), "L03", "ui: replicas 2, required >= 3"),
        (("node-exporter", "deploy", {}), "L04", "node-exporter: mode replicated, required global"),
        (
            ("ui", "deploy", "update_config", {"parallelism": 2, "delay": "5s"}),
            "L05",
            "ui: update parallelism 2, required 1",
        ),
        (
            ("post", "deploy", "update_config", "failure_action", "pause"),
            "L06",
            "post: update failure_action pause, required rollback",
        ),
        (("ui", "deploy", "resources", {}), "L07", "ui: limits cpus unset, required 0.25"),
        (
            ("comment", "deploy", "restart_policy", "max_attempts", 20),
            "L10",
            "comment: restart max_attempts 20, required 10..15",
        ),
        (
            ("post", "deploy", "restart_policy", None),
            "L10",
            "post: no restart_policy (swarm restarts it forever)",
        ),
        (
            ("comment", "image", "reddit/comment:latest"),
            "L11",
            "comment: image 'reddit/comment:latest' has tag latest",
        ),
        (("post", "image", "reddit/post"), "L11", "post: image 'reddit/post' has tag (none: latest)"),
        (("mongo", "volumes", []), "L12", "mongo: nothing mounted at /data/db"),
        (
            ("mongo", "volumes", [{"type": "volume", "target": "/data/db"}]),
            "L12",
            "mongo: /data/db is an anonymous volume, required a named volume",
        ),
        (
            ("mongo", "networks", {"back_net": {"aliases": ["comment_db"]}}),
            "L13",
            "post: reaches mongo as post_db (default), "
            "but no service of mongo is named or aliased 'post_db' there",
        ),
        (
            ("post", "networks", {"front_net": None}),
            "L13",
            "post: reaches mongo as post_db (default), but it shares no network with mongo",
        ),
        (("ui", "ports", []), "L16", "ui: ports none, required a port published to 9292"),
    ],
)
def test_each_mistake_is_named_with_service_value_and_requirement(
    mistake: tuple[Any, ...], requirement: str, message: str
) -> None:
    problems = failing(declared(changed(*mistake)))
    assert requirement in problems, problems
    assert any(p.startswith(message) for p in problems[requirement]), problems[requirement]


def test_a_constraint_that_lands_on_the_same_nodes_meets_the_intent() -> None:
    model = changed("mongo", "deploy", "placement", "constraints", ["node.role == manager"])  # master-1 only
    assert "L01" not in failing(declared(model))


def test_the_intent_is_judged_not_the_names() -> None:
    """A team's stack: one network of its own name, a volume called post_db, mongo as 'db' with
    the app told where it is, workers chosen by hostname, ui called frontend."""
    model = copy.deepcopy(GOOD)
    services = model["services"]
    services["frontend"] = services.pop("ui")
    services["db"] = services.pop("mongo")
    services["db"]["volumes"] = [{"type": "volume", "source": "post_db", "target": "/data/db/"}]
    services["db"]["networks"] = {"reddit": None}
    services["db"]["deploy"]["placement"]["constraints"] = ["node.hostname == master-1"]
    for name in ("frontend", "post", "comment"):
        services[name]["networks"] = {"reddit": None}
        services[name]["deploy"]["placement"]["constraints"] = ["node.role != manager"]
    services["post"]["environment"] = {"POST_DATABASE_HOST": "db"}
    services["comment"]["environment"] = {"COMMENT_DATABASE_HOST": "db"}
    raw = {"frontend": GOOD_RAW["ui"]}
    assert failing(declared(model, raw=raw)) == {}


def test_a_label_the_configured_nodes_lack_is_left_to_the_target_cluster() -> None:
    model = changed(
        "ui",
        "deploy",
        "placement",
        "constraints",
        ["node.role == worker", "engine.labels.provider == google"],
    )
    assert "L02" not in failing(declared(model))


def test_an_env_value_written_in_the_compose_file_is_named_with_one_env_file() -> None:
    raw = {"ui": {"environment": {"ENV": "DEV"}, "ports": ["${UI_PORT}:9292"], "env_file": []}}
    problems = failing(declared(GOOD, raw=raw))["L17"]
    assert problems == [
        "ui: environment ENV='DEV' is written in the compose file: every env shows 'DEV'; "
        "required from the env file (ENV: ${ENV})"
    ]


def test_an_env_value_from_a_shared_env_file_is_named() -> None:
    raw = {"ui": {"environment": {}, "ports": [], "env_file": ["ui.env"]}}
    problems = failing(declared(GOOD, raw=raw))["L17"]
    assert problems[0].startswith("ui: ENV='DEV' comes from env_file ['ui.env'], the same for every env")


def test_an_env_file_that_is_the_deployed_one_follows_the_env() -> None:
    raw = {"ui": {"environment": {}, "ports": [], "env_file": ["dev.env"]}}  # beside the compose file
    assert "L17" not in failing(declared(GOOD, raw=raw))


def test_two_envs_showing_the_same_env_are_named() -> None:
    stage = changed("ui", "environment", {"ENV": "DEV"})
    problems = failing(declared(GOOD, others={"stage": stage}))["L17"]
    assert problems == ["ui: ENV='DEV' in this env and stage; required each env its own"]


def test_a_fixed_host_port_is_named_for_every_service() -> None:
    raw = {**GOOD_RAW, "post": {"environment": {}, "ports": ["5000:5000", "5001"], "env_file": []}}
    problems = failing(declared(GOOD, raw=raw))["L18"]
    assert len(problems) == 1 and problems[0].startswith(
        "post: publishes the fixed host port 5000 ('5000:5000')"
    )


def test_a_missing_role_says_how_to_map_it() -> None:
    model = copy.deepcopy(GOOD)
    model["services"]["web"] = model["services"].pop("ui")
    model["services"]["web"]["image"] = "reddit/web:1.0"
    problems = failing(declared(model))
    (missing,) = [p for p in problems["L03"] if p.startswith("no service plays ui ")]
    assert "--swarm-stacks" in missing and "swarm_roles = ui=SERVICE" in missing
    assert "L03" not in failing(declared(model, raw={"web": GOOD_RAW["ui"]}, roles={"ui": "web"}))


def test_roles_are_found_by_service_or_image_name() -> None:
    model = {
        "services": {
            "post-service": {"image": "team/post-py:2.1"},
            "db": {"image": "mongo:7.0"},
            "metrics": {"image": "prom/node-exporter:v1.5.0"},
            "web": {"image": "shop/web:1"},
            "worker": {"image": "shop/web:1"},
        }
    }
    roles = find_roles(model, {**(LESSON.roles if LESSON else {}), "web": ("web",)}, {"comment": "a,b"})
    assert roles["web"] == ["web"]  # the service named so, not every service on its image
    assert roles["post"] == ["post-service"]
    assert roles["mongo"] == ["db"]
    assert roles["node-exporter"] == ["metrics"]
    assert roles["comment"] == ["a", "b"]
    assert roles["ui"] == []


def test_a_team_profile_with_ranges_and_other_rules() -> None:
    profile = parse_profile(
        """
roles:
  web: [web]
requirements:
  - id: R1
    title: web runs 2 to 4 replicas, on workers
    roles: [web]
    replicas: {min: 2, max: 4}
    placement: node.role == worker
  - id: R2
    title: every service limited to at most 512M
    services: all
    limits: {memory: {max: 512M}}
""",
        "team.yml",
    )
    model = {
        "services": {
            "web": {"image": "t/web:1", "deploy": {"replicas": 5, "resources": {"limits": {"memory": "1G"}}}},
            "db": {"image": "t/db:1", "deploy": {"resources": {"limits": {"memory": "256M"}}}},
        }
    }
    problems = failing(declared(model, raw={}, profile=profile), profile)
    assert problems == {
        "R1": [
            "web: replicas 5, required 2..4",
            "web: placement constraints none let it run on ['master-1']; "
            "required: only where node.role == worker",
        ],
        "R2": ["web: limits memory 1G, required <= 512M"],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "requirements:\n  - id: A\n    title: t\n    roles: [x]\n    replica: 3\n",
            "rules.yml:5: requirement A: unknown key 'replica'",
        ),
        (
            "requirements:\n  - id: A\n    title: t\n    roles: [x]\n    replicas: {least: 3}\n",
            "rules.yml:5: requirement A: replicas: a range takes min and/or max",
        ),
        (
            "requirements:\n  - id: A\n    title: t\n    roles: [x]\n    placement: node.color == red\n",
            "rules.yml:5: requirement A: placement: 'node.color == red': unknown attribute",
        ),
        (
            "requirements:\n  - id: A\n    title: t\n    roles: [x]\n    update_config: {delay: soon}\n",
            "rules.yml:5: requirement A: update_config, delay: 'soon' is not a duration",
        ),
        (
            "requirements:\n  - id: A\n    title: t\n    roles: [x]\n",
            "rules.yml:2: requirement A has no rule",
        ),
        (
            "requirements:\n  - id: A\n    roles: [x]\n    mode: global\n",
            "rules.yml:2: a requirement needs title:",
        ),
        ("rules: []\n", "rules.yml:1: unknown key 'rules'"),
        ("requirements: [\n", "rules.yml:2: not valid YAML"),
    ],
)
def test_a_rules_file_error_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "rules.yml")
    assert str(info.value).startswith(message), str(info.value)


def test_profiles_by_name_and_by_path(tmp_path: Path) -> None:
    assert load_profile("none", tmp_path) is None
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"requirements": [{"id": "A", "title": "t", "services": "all", "mode": "replicated"}]})
    )
    profile = load_profile("rules.yml", tmp_path)
    assert profile is not None and [r.id for r in profile.requirements] == ["A"]
    with pytest.raises(ProfileError, match="no such file"):
        load_profile("missing.yml", tmp_path)
