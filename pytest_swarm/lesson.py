"""The Docker Swarm lesson's required values (its homework), checked on a rendered stack.

Each requirement has an id and a name; its check returns the problems found, each naming the
service, the declared value and the required one. Services are found by role (ui, post,
comment, mongo, node-exporter): a team whose services are named otherwise maps the roles with
the ini key ``swarm_lesson_services``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import declared

Model = Mapping[str, Any]
ROLES = ("ui", "post", "comment", "mongo", "node-exporter")
APP = ("ui", "post", "comment")
Rule = Callable[[str, dict[str, Any]], list[str]]  # (service name, its spec) -> problems


@dataclass(frozen=True)
class Requirement:
    id: str
    name: str
    check: Callable[[Model, Mapping[str, str]], list[str]]  # (model, roles -> service) -> problems


def _spec(model: Model, roles: Mapping[str, str], role: str) -> tuple[str, dict[str, Any] | None]:
    name = roles.get(role, role)
    return name, (model.get("services") or {}).get(name)


def _each(
    roles_wanted: tuple[str, ...], rule: Callable[[str, dict[str, Any]], list[str]]
) -> Callable[..., list[str]]:
    """A check applying ``rule`` to the services of ``roles_wanted``; a missing service is a problem."""

    def check(model: Model, roles: Mapping[str, str]) -> list[str]:
        problems = []
        for role in roles_wanted:
            name, spec = _spec(model, roles, role)
            if spec is None:
                problems.append(
                    f"no service {name!r} (the lesson's {role}; map it with swarm_lesson_services)"
                )
            else:
                problems += rule(name, spec)
        return problems

    return check


def _constraint(required: str) -> Rule:
    def rule(name: str, spec: dict[str, Any]) -> list[str]:
        constraints = (declared.deploy_section(spec).get("placement") or {}).get("constraints") or []
        normal = [c.replace(" ", "") for c in constraints]
        if required.replace(" ", "") in normal:
            return []
        return [f"{name}: placement constraints {constraints}, required {required!r}"]

    return rule


def _min_replicas(minimum: int) -> Rule:
    def rule(name: str, spec: dict[str, Any]) -> list[str]:
        replicas = declared.replicas(spec)
        if replicas is not None and replicas >= minimum:
            return []
        return [f"{name}: replicas {replicas if replicas is not None else '(global)'}, required >= {minimum}"]

    return rule


def _global(name: str, spec: dict[str, Any]) -> list[str]:
    mode = declared.deploy_section(spec).get("mode", "replicated")
    return [] if mode == "global" else [f"{name}: mode {mode}, required global"]


def _update(parallelism: int, delay: float, actions: tuple[str, ...]) -> Rule:
    def rule(name: str, spec: dict[str, Any]) -> list[str]:
        if "update_config" not in declared.deploy_section(spec):
            return [f"{name}: no update_config, required parallelism {parallelism}, delay {delay:g}s"]
        got = declared.update_config(spec)
        problems = []
        if got.parallelism != parallelism:
            problems.append(f"{name}: update parallelism {got.parallelism}, required {parallelism}")
        if got.delay != delay:
            problems.append(f"{name}: update delay {got.delay:g}s, required {delay:g}s")
        if got.failure_action not in actions:
            problems.append(f"{name}: failure_action {got.failure_action}, required {' or '.join(actions)}")
        return problems

    return rule


def _limits(cpus: float, memory: str) -> Rule:
    def rule(name: str, spec: dict[str, Any]) -> list[str]:
        got = declared.limits(spec)
        want = declared.Limits(cpus, declared.parse_bytes(memory))
        if got == want:
            return []
        return [f"{name}: limits cpus {got.cpus} memory {got.memory}, required cpus {cpus} memory {memory}"]

    return rule


def _restart(low: int, high: int, delay: float) -> Rule:
    def rule(name: str, spec: dict[str, Any]) -> list[str]:
        policy = declared.restart_policy(spec)
        if policy is None:
            return [f"{name}: no restart_policy (swarm would restart it forever), required on-failure"]
        problems = []
        if policy.condition != "on-failure":
            problems.append(f"{name}: restart condition {policy.condition}, required on-failure")
        if policy.max_attempts is None or not low <= policy.max_attempts <= high:
            wanted = str(low) if low == high else f"{low}..{high}"
            problems.append(f"{name}: restart max_attempts {policy.max_attempts}, required {wanted}")
        if policy.delay != delay:
            problems.append(f"{name}: restart delay {policy.delay:g}s, required {delay:g}s")
        return problems

    return rule


def _versioned_image(name: str, spec: dict[str, Any]) -> list[str]:
    """Rollback restores the previous image by its tag: ``latest`` (or none) can't be restored."""
    image = str(spec.get("image", ""))
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if tag and tag != "latest":
        return []
    shown = tag or "(none: latest)"
    return [f"{name}: image {image!r} has tag {shown}; use a version: rollback can't restore latest"]


def _networks(wanted: tuple[str, ...]) -> Rule:
    def rule(name: str, spec: dict[str, Any]) -> list[str]:
        networks = sorted(spec.get("networks") or {})
        missing = [n for n in wanted if n not in networks]
        return [f"{name}: networks {networks}, required {list(wanted)}"] if missing else []

    return rule


def _mongo_storage(name: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    volumes = spec.get("volumes") or []
    if not any(v.get("source") == "mongo_data" and v.get("target") == "/data/db" for v in volumes):
        problems.append(f"{name}: volumes {volumes}, required mongo_data:/data/db")
    aliases = set(((spec.get("networks") or {}).get("back_net") or {}).get("aliases") or [])
    if not {"post_db", "comment_db"} <= aliases:
        problems.append(f"{name}: back_net aliases {sorted(aliases)}, required post_db and comment_db")
    if not str(spec.get("image", "")).startswith("mongo:"):
        problems.append(f"{name}: image {spec.get('image')!r}, required mongo:<MONGO_VERSION>")
    return problems


def _published_ui(name: str, spec: dict[str, Any]) -> list[str]:
    ports = [p for p in spec.get("ports") or [] if int(p.get("target", 0)) == 9292 and p.get("published")]
    return [] if ports else [f"{name}: ports {spec.get('ports')}, required UI_PORT published to 9292"]


REQUIREMENTS = (
    Requirement(
        "L01",
        "mongo on the reliability=high node",
        _each(("mongo",), _constraint("node.labels.reliability == high")),
    ),
    Requirement("L02", "app services only on workers", _each(APP, _constraint("node.role == worker"))),
    Requirement("L03", "app services run at least 3 replicas", _each(APP, _min_replicas(3))),
    Requirement("L04", "node-exporter runs in global mode", _each(("node-exporter",), _global)),
    Requirement(
        "L05", "ui updates one at a time, 5s apart", _each(("ui",), _update(1, 5, ("pause", "rollback")))
    ),
    Requirement(
        "L06",
        "post and comment update by 2, 10s apart, rolling back on failure",
        _each(("post", "comment"), _update(2, 10, ("rollback",))),
    ),
    Requirement("L07", "ui limited to 0.25 CPU and 150M", _each(("ui",), _limits(0.25, "150M"))),
    Requirement(
        "L08",
        "post and comment limited to 0.3 CPU and 300M",
        _each(("post", "comment"), _limits(0.3, "300M")),
    ),
    Requirement("L09", "ui restarts on failure 3 times, 3s apart", _each(("ui",), _restart(3, 3, 3))),
    Requirement(
        "L10",
        "post and comment restart on failure 10-15 times, 1s apart",
        _each(("post", "comment"), _restart(10, 15, 1)),
    ),
    Requirement("L11", "app images tagged with versions, never latest", _each(APP, _versioned_image)),
    Requirement(
        "L12",
        "mongo keeps data in mongo_data and answers as post_db and comment_db",
        _each(("mongo",), _mongo_storage),
    ),
    Requirement(
        "L13",
        "post and comment on front_net and back_net",
        _each(("post", "comment"), _networks(("back_net", "front_net"))),
    ),
    Requirement(
        "L14",
        "ui on front_net, publishing UI_PORT to 9292",
        _each(("ui",), lambda n, s: _networks(("front_net",))(n, s) + _published_ui(n, s)),
    ),
)


def env_problems(ui_env_by_env: Mapping[str, tuple[str, str | None]]) -> list[str]:
    """L15: ui's ENV follows each env file (env -> (ENV in the file, ENV the ui declares))."""
    return [
        f"{env}: ui environment ENV={got!r}, required {want!r} (use ENV: ${{ENV}}, not a fixed value)"
        for env, (want, got) in sorted(ui_env_by_env.items())
        if got != want
    ]
