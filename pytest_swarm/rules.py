"""The rules of requirement profiles: what each key of a requirement checks on a stack's files.

Each rule kind parses its value from the rules file (``Kind.parse``, a ProfileError naming the
line on a bad one) and checks one service (``Kind.check``): the problems it finds, each naming
the service, what it declares and what is required. Rules judge intent (a named volume at the
data path, services reaching each other by the names they use), never names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compose, declared
from .errors import ProfileError
from .placement import Constraint, ConstraintError, NodeFacts, eligible


@dataclass(frozen=True)
class Expect:
    """An expected value: exact (``5s``), one of (``[pause, rollback]``) or a range
    (``{min: 10, max: 15}``); ``shown`` is how the rules file wrote it."""

    exact: tuple[Any, ...] = ()
    low: Any = None
    high: Any = None
    shown: str = ""

    def holds(self, value: Any) -> bool:
        if value is None:
            return False
        if self.exact:
            return value in self.exact
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def _expect(value: Any, convert: Callable[[Any], Any], where: str) -> Expect:
    try:
        if isinstance(value, Mapping):
            unknown = set(value) - {"min", "max"}
            if unknown or not value:
                raise ValueError(f"a range takes min and/or max, not {sorted(unknown) or 'nothing'}")
            low = None if "min" not in value else convert(value["min"])
            high = None if "max" not in value else convert(value["max"])
            shown = f"{value['min']}..{value['max']}" if low is not None and high is not None else ""
            shown = shown or (f">= {value['min']}" if low is not None else f"<= {value['max']}")
            return Expect(low=low, high=high, shown=shown)
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list allows nothing")
            return Expect(exact=tuple(convert(v) for v in value), shown=" or ".join(map(str, value)))
        return Expect(exact=(convert(value),), shown=str(value))
    except (ValueError, TypeError) as exc:
        raise ProfileError(f"{where}: {exc}") from exc


def _text(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a word")
    return str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


@dataclass(frozen=True)
class Declared:
    """What the rules judge: one env's stack, as rendered and as written.

    Attributes:
        model: the rendered stack (``docker stack config``).
        raw: each service as written (compose.raw_services), variables unexpanded.
        env_file: the env file it was rendered with.
        base: where docker resolves the stack's relative paths (the first compose file's folder).
        roles: role -> services playing it.
        nodes: the cluster the stack is meant for (names, roles, labels), for placement.
        other_envs: env -> the rendered model of another env file of the project.
    """

    model: Mapping[str, Any]
    raw: Mapping[str, Mapping[str, Any]]
    env_file: Path
    base: Path
    roles: Mapping[str, Sequence[str]]
    nodes: Sequence[NodeFacts]
    other_envs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def spec(self, service: str) -> Mapping[str, Any]:
        spec: Mapping[str, Any] = (self.model.get("services") or {}).get(service) or {}
        return spec


Check = Callable[[str, Declared, Any], list[str]]  # (service, stack, parsed rule value) -> problems


def _constraints(spec: Mapping[str, Any]) -> list[str]:
    return list((declared.deploy_section(spec).get("placement") or {}).get("constraints") or [])


def _parse_placement(value: Any, where: str) -> Constraint:
    try:
        return Constraint.parse(_text(value))
    except (ConstraintError, ValueError) as exc:
        raise ProfileError(f"{where}: {exc}") from exc


def _placement(name: str, stack: Declared, required: Constraint) -> list[str]:
    """Every node the service may run on meets ``required``. Constraints on labels no node of
    the cluster carries are left out: the target cluster's own (e.g. docker-machine's engine
    label ``provider``) can't be judged here, and the run names them before deploying."""
    constraints = _constraints(stack.spec(name))
    known = [c for c in constraints if _label_known(Constraint.parse(c), stack.nodes)]
    may = eligible(stack.nodes, known)
    shown = constraints or "none"
    if not may:
        return [f"{name}: placement constraints {shown} let it run on no node of {_names(stack.nodes)}"]
    wrong = [n.hostname for n in may if not required.holds_for(n)]
    if wrong:
        return [
            f"{name}: placement constraints {shown} let it run on {wrong}; required: only where {required}"
        ]
    return []


def _label_known(constraint: Constraint, nodes: Sequence[NodeFacts]) -> bool:
    key = constraint.key.lower()
    for prefix, attribute in (("node.labels.", "labels"), ("engine.labels.", "engine_labels")):
        if key.startswith(prefix):
            label = constraint.key[len(prefix) :]
            return any(label in (getattr(n, attribute) or {}) for n in nodes)
    return True


def _names(nodes: Sequence[NodeFacts]) -> str:
    return ", ".join(n.hostname for n in nodes)


def _replicas(name: str, stack: Declared, expect: Expect) -> list[str]:
    replicas = declared.replicas(stack.spec(name))
    if replicas is None:
        return [f"{name}: mode global, required replicated with replicas {expect.shown}"]
    return [] if expect.holds(replicas) else [f"{name}: replicas {replicas}, required {expect.shown}"]


def _mode(name: str, stack: Declared, expect: Expect) -> list[str]:
    mode = declared.deploy_section(stack.spec(name)).get("mode", "replicated")
    return [] if expect.holds(mode) else [f"{name}: mode {mode}, required {expect.shown}"]


UPDATE_FIELDS: dict[str, Callable[[Any], Any]] = {
    "parallelism": _int,
    "delay": declared.parse_duration,
    "failure_action": _text,
    "monitor": declared.parse_duration,
    "max_failure_ratio": _float,
    "order": _text,
}
LIMIT_FIELDS: dict[str, Callable[[Any], Any]] = {"cpus": _float, "memory": declared.parse_bytes}
RESTART_FIELDS: dict[str, Callable[[Any], Any]] = {
    "condition": _text,
    "max_attempts": _int,
    "delay": declared.parse_duration,
    "window": declared.parse_duration,
}


def _fields(kinds: Mapping[str, Callable[[Any], Any]]) -> Callable[[Any, str], dict[str, Expect]]:
    def parse(value: Any, where: str) -> dict[str, Expect]:
        if not isinstance(value, Mapping) or not value:
            raise ProfileError(f"{where}: give a mapping of {', '.join(kinds)}")
        unknown = sorted(set(value) - set(kinds))
        if unknown:
            raise ProfileError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(kinds)}")
        return {key: _expect(v, kinds[key], f"{where}, {key}") for key, v in value.items()}

    return parse


def _shown(value: Any, key: str) -> str:
    if value is None:
        return "unset"
    if key in ("delay", "monitor", "window"):
        return f"{value:g}s"
    return str(value)


def _update(section: str) -> Check:
    def check(name: str, stack: Declared, wanted: dict[str, Expect]) -> list[str]:
        if section not in declared.deploy_section(stack.spec(name)):
            required = ", ".join(f"{k} {e.shown}" for k, e in wanted.items())
            return [f"{name}: no {section}, required {required}"]
        got = declared.update_config(stack.spec(name), section)
        label = "update" if section == "update_config" else "rollback"
        return [
            f"{name}: {label} {key} {_shown(getattr(got, key), key)}, required {expect.shown}"
            for key, expect in wanted.items()
            if not expect.holds(getattr(got, key))
        ]

    return check


def _resources(section: str) -> Check:
    def check(name: str, stack: Declared, wanted: dict[str, Expect]) -> list[str]:
        raw = (declared.deploy_section(stack.spec(name)).get("resources") or {}).get(section) or {}
        got = {
            "cpus": None if raw.get("cpus") is None else float(raw["cpus"]),
            "memory": None if raw.get("memory") is None else declared.parse_bytes(raw["memory"]),
        }
        return [
            f"{name}: {section} {key} {raw.get(key, 'unset')}, required {expect.shown}"
            for key, expect in wanted.items()
            if not expect.holds(got[key])
        ]

    return check


def _restart(name: str, stack: Declared, wanted: dict[str, Expect]) -> list[str]:
    policy = declared.restart_policy(stack.spec(name))
    if policy is None:
        required = ", ".join(f"{k} {e.shown}" for k, e in wanted.items())
        return [f"{name}: no restart_policy (swarm restarts it forever), required {required}"]
    return [
        f"{name}: restart {key} {_shown(getattr(policy, key), key)}, required {expect.shown}"
        for key, expect in wanted.items()
        if not expect.holds(getattr(policy, key))
    ]


def _parse_word(*allowed: str) -> Callable[[Any, str], str]:
    def parse(value: Any, where: str) -> str:
        if value not in allowed:
            raise ProfileError(f"{where}: {value!r} is not valid; use {' or '.join(allowed)}")
        return str(value)

    return parse


def _image_tag(name: str, stack: Declared, _policy: str) -> list[str]:
    image = str(stack.spec(name).get("image", ""))
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if tag and tag != "latest":
        return []
    return [f"{name}: image {image!r} has tag {tag or '(none: latest)'}, required a version tag"]


def _parse_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ProfileError(f"{where}: {value!r} is not a path in the container (e.g. /data/db)")
    return value


def _volume_at(name: str, stack: Declared, path: str) -> list[str]:
    mounts = stack.spec(name).get("volumes") or []
    for mount in mounts:
        if isinstance(mount, Mapping) and str(mount.get("target", "")).rstrip("/") == path.rstrip("/"):
            if mount.get("type") == "volume" and mount.get("source"):
                return []
            kind = "an anonymous volume" if mount.get("type") == "volume" else f"a {mount.get('type')} mount"
            return [f"{name}: {path} is {kind}, required a named volume (it outlives the task)"]
    targets = [m.get("target") for m in mounts if isinstance(m, Mapping)]
    return [f"{name}: nothing mounted at {path} (mounts at {targets or 'none'}), required a named volume"]


@dataclass(frozen=True)
class Reach:
    target: str  # a role
    variable: str  # the client's setting that holds the host name
    default: str  # the host name when it is not set


def _parse_reaches(value: Any, where: str) -> list[Reach]:
    if not isinstance(value, Mapping) or not value:
        raise ProfileError(f"{where}: give ROLE: {{variable: NAME, default: HOST}} per role reached")
    found = []
    for role, how in value.items():
        if not isinstance(how, Mapping) or set(how) - {"variable", "default"} or "default" not in how:
            raise ProfileError(f"{where}, {role}: give {{variable: NAME, default: HOST}}")
        found.append(Reach(str(role), str(how.get("variable", "")), str(how["default"])))
    return found


def _networks(spec: Mapping[str, Any]) -> dict[str, set[str]]:
    """network -> this service's aliases on it; no ``networks:`` means the stack's default one."""
    networks = spec.get("networks")
    if not networks:
        return {"default": set()}
    if isinstance(networks, list):
        return {str(n): set() for n in networks}
    return {str(n): set((how or {}).get("aliases") or []) for n, how in networks.items()}


def _reaches(name: str, stack: Declared, reaches: list[Reach]) -> list[str]:
    """The host name the service is set to use for each role resolves to a service of that role
    on a network they share (its service name, or an alias there)."""
    problems = []
    mine = _networks(stack.spec(name))
    environment = (stack.spec(name).get("environment") or {}) if stack.spec(name) else {}
    for reach in reaches:
        host = str(environment.get(reach.variable) or reach.default) if reach.variable else reach.default
        host = host.split(":", 1)[0]
        targets = [s for s in stack.roles.get(reach.target) or [] if s != name]
        if not targets:
            problems.append(f"{name}: no service plays {reach.target}, which it must reach")
            continue
        answering = [
            target
            for target in targets
            for network, aliases in _networks(stack.spec(target)).items()
            if network in mine and host in {target, *aliases}
        ]
        if answering:
            continue
        shared = [t for t in targets if set(_networks(stack.spec(t))) & set(mine)]
        setting = f"{reach.variable}={host}" if reach.variable in environment else f"{host} (default)"
        why = (
            f"no service of {reach.target} is named or aliased {host!r} there"
            if shared
            else f"it shares no network with {', '.join(targets)}"
        )
        problems.append(f"{name}: reaches {reach.target} as {setting}, but {why}")
    return problems


def _parse_published(value: Any, where: str) -> int:
    if not isinstance(value, Mapping) or set(value) != {"target"}:
        raise ProfileError(f"{where}: give {{target: PORT}} (the container's port)")
    try:
        return _int(value["target"])
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from exc


def _published(name: str, stack: Declared, target: int) -> list[str]:
    ports = stack.spec(name).get("ports") or []
    if any(int(p.get("target", 0)) == target and p.get("published") for p in ports if isinstance(p, Mapping)):
        return []
    return [f"{name}: ports {ports or 'none'}, required a port published to {target}"]


def _parse_names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where}: give a list of variable names, e.g. [ENV]")
    return list(value)


def _environment_from_env_file(name: str, stack: Declared, variables: list[str]) -> list[str]:
    """Each variable's value comes from the env file (a ``${VAR}``, or an ``env_file:`` that is
    the env file or names one by a variable): a second env then shows its own value."""
    problems = []
    raw = stack.raw.get(name) or {}
    written = raw.get("environment") or {}
    rendered = stack.spec(name).get("environment") or {}
    for variable in variables:
        if variable in written:
            value = written[variable]
            if value is not None and not compose.uses_variable(value):
                problems.append(
                    f"{name}: environment {variable}={value!r} is written in the compose file: every env "
                    f"shows {value!r}; required from the env file ({variable}: ${{{variable}}})"
                )
            continue
        if variable not in rendered:
            problems.append(
                f"{name}: sets no {variable}; required from the env file ({variable}: ${{{variable}}})"
            )
            continue
        files = [str(f.get("path") if isinstance(f, Mapping) else f) for f in raw.get("env_file") or []]
        own = stack.env_file.resolve()
        if not any(compose.uses_variable(f) or (stack.base / f).resolve() == own for f in files):
            problems.append(
                f"{name}: {variable}={rendered[variable]!r} comes from env_file {files}, the same for every "
                f"env; required from the env file ({variable}: ${{{variable}}})"
            )
    for variable in variables:
        shown: dict[str, list[str]] = {}
        for env, model in {"this env": stack.model, **stack.other_envs}.items():
            value = (((model.get("services") or {}).get(name) or {}).get("environment") or {}).get(variable)
            shown.setdefault(str(value), []).append(env)
        same = {value: envs for value, envs in shown.items() if len(envs) > 1}
        for value, envs in same.items():
            problems.append(
                f"{name}: {variable}={value!r} in {' and '.join(envs)}; required each env its own"
            )
    return problems


def _parse_true(value: Any, where: str) -> bool:
    if value is not True:
        raise ProfileError(f"{where}: write true (or leave the rule out)")
    return True


def _host_ports_from_env_file(name: str, stack: Declared, _on: bool) -> list[str]:
    problems = []
    for port in (stack.raw.get(name) or {}).get("ports") or []:
        host = compose.host_port(port)
        if host is not None and not compose.uses_variable(host):
            problems.append(
                f"{name}: publishes the fixed host port {host} ({port!r}): a second env beside this one "
                'can\'t publish it; required from the env file (e.g. "${UI_PORT}:9292")'
            )
    return problems


@dataclass(frozen=True)
class Kind:
    parse: Callable[[Any, str], Any]
    check: Check


def _expect_of(convert: Callable[[Any], Any]) -> Callable[[Any, str], Expect]:
    return lambda value, where: _expect(value, convert, where)


KINDS: dict[str, Kind] = {
    "placement": Kind(_parse_placement, _placement),
    "replicas": Kind(_expect_of(_int), _replicas),
    "mode": Kind(_expect_of(_text), _mode),
    "update_config": Kind(_fields(UPDATE_FIELDS), _update("update_config")),
    "rollback_config": Kind(_fields(UPDATE_FIELDS), _update("rollback_config")),
    "limits": Kind(_fields(LIMIT_FIELDS), _resources("limits")),
    "reservations": Kind(_fields(LIMIT_FIELDS), _resources("reservations")),
    "restart_policy": Kind(_fields(RESTART_FIELDS), _restart),
    "image_tag": Kind(_parse_word("versioned"), _image_tag),
    "volume_at": Kind(_parse_path, _volume_at),
    "reaches": Kind(_parse_reaches, _reaches),
    "published": Kind(_parse_published, _published),
    "environment_from_env_file": Kind(_parse_names, _environment_from_env_file),
    "host_ports_from_env_file": Kind(_parse_true, _host_ports_from_env_file),
}
