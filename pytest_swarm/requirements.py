"""Requirement profiles: what a stack must declare, as data (YAML), judged on the files alone.

A profile names roles (``ui: [ui, frontend]``) and requirements; each requirement picks its
services (``roles: [ui]``, ``services: [web]`` or ``services: all``) and holds one or more
rules. The lesson's homework is the built-in profile ``lesson`` (profiles/lesson.yml); a team
writes its own in the same form. Every rule judges intent (a named volume at the data path,
services that reach each other by the names they use), never what things are called.

Example::

    roles:
      web: [web, frontend]
    requirements:
      - id: R1
        title: web runs 2 to 4 replicas on workers
        roles: [web]
        replicas: {min: 2, max: 4}
        placement: node.role == worker
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import compose
from .errors import ProfileError
from .placement import NodeFacts
from .roles import find_roles
from .rules import KINDS, Declared

BUILT_IN = ("lesson",)


@dataclass(frozen=True)
class Rule:
    kind: str
    value: Any  # as parsed by its kind


@dataclass(frozen=True)
class Requirement:
    """One requirement of a profile: which services, and the rules they must meet."""

    id: str
    title: str
    roles: tuple[str, ...] = ()
    services: tuple[str, ...] | None = None  # ("*",): every service
    rules: tuple[Rule, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.id} {self.title}"

    def chosen(self, stack: Declared) -> tuple[list[str], list[str]]:
        """(services this requirement judges, problems finding them)."""
        if self.services == ("*",):
            return sorted(stack.model.get("services") or {}), []
        if self.services is not None:
            present = set(stack.model.get("services") or {})
            missing = [f"no service {s!r} in the stack" for s in self.services if s not in present]
            return [s for s in self.services if s in present], missing
        chosen, problems = [], []
        for role in self.roles:
            services = list(stack.roles.get(role) or [])
            if not services:
                problems.append(
                    f"no service plays {role} in the compose files given; one declared in another "
                    "compose file joins with --swarm-stacks (ini swarm_stacks), one named otherwise "
                    f"with the ini key swarm_roles = {role}=SERVICE"
                )
            chosen += services
        return chosen, problems

    def problems(self, stack: Declared) -> list[str]:
        """What the stack gets wrong: each names the service, its value and the required one."""
        services, problems = self.chosen(stack)
        for service in services:
            for rule in self.rules:
                problems += KINDS[rule.kind].check(service, stack, rule.value)
        return problems


@dataclass(frozen=True)
class Profile:
    """A requirement profile: its roles and requirements.

    Example::

        profile = load_profile("lesson", Path("."))
        print([requirement.label for requirement in profile.requirements])
    """

    name: str
    roles: Mapping[str, tuple[str, ...]]
    requirements: tuple[Requirement, ...]

    def requirement(self, rid: str) -> Requirement | None:
        return next((r for r in self.requirements if r.id == rid), None)

    def declared(
        self,
        model: Mapping[str, Any],
        compose_files: Sequence[Path],
        env_file: Path,
        given_roles: Mapping[str, str],
        nodes: Sequence[NodeFacts],
        other_envs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Declared:
        """What its rules judge, for one env's rendered ``model``."""
        return Declared(
            model=model,
            raw=compose.raw_services(compose_files),
            env_file=env_file,
            base=compose.base_dir(compose_files),
            roles=find_roles(model, self.roles, given_roles),
            nodes=nodes,
            other_envs=other_envs or {},
        )


def load_profile(choice: str, rootdir: Path) -> Profile | None:
    """The profile ``choice`` names: a built-in one, None for ``none``, or a rules file.

    Raises:
        ProfileError: the file is missing, or a key or value in it is wrong (names the line).
    """
    if choice == "none":
        return None
    if choice in BUILT_IN:
        text = resources.files("pytest_swarm").joinpath(f"profiles/{choice}.yml").read_text()
        return parse_profile(text, choice)
    path = Path(choice).expanduser()
    path = path if path.is_absolute() else rootdir / path
    if not path.is_file():
        raise ProfileError(
            f"--swarm-requirements={choice}: no such file ({path}); give lesson, none, or a rules file"
        )
    return parse_profile(path.read_text(), str(path))


TOP_KEYS = ("roles", "requirements")
REQUIREMENT_KEYS = ("id", "title", "roles", "services")


def parse_profile(text: str, source: str) -> Profile:
    """A profile from YAML ``text``; errors name ``source`` and the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ProfileError(f"{source}:{line}: not valid YAML: {exc.problem}") from exc
    top = _mapping(root, source, "a profile (roles:, requirements:)")
    for key, (node, _) in top.items():
        if key not in TOP_KEYS:
            raise ProfileError(
                f"{_at(source, node)}: unknown key {key!r}; a profile has {', '.join(TOP_KEYS)}"
            )
    roles: dict[str, tuple[str, ...]] = {}
    if "roles" in top:
        for role, (node, value) in _mapping(top["roles"][1], source, "roles: ROLE: [names]").items():
            names = _value(value)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ProfileError(f"{_at(source, node)}: roles: {role}: give a list of names")
            roles[role] = tuple(names)
    if "requirements" not in top or not isinstance(top["requirements"][1], yaml.SequenceNode):
        where = _at(source, top["requirements"][0]) if "requirements" in top else f"{source}:1"
        raise ProfileError(f"{where}: requirements: give a list of requirements")
    found = [_requirement(node, source) for node in top["requirements"][1].value]
    seen: set[str] = set()
    for requirement, node in zip(found, top["requirements"][1].value, strict=True):
        if requirement.id in seen:
            raise ProfileError(f"{_at(source, node)}: requirement id {requirement.id} is used twice")
        seen.add(requirement.id)
    return Profile(name=Path(source).stem, roles=roles, requirements=tuple(found))


def _requirement(node: yaml.Node, source: str) -> Requirement:
    keys = _mapping(node, source, "a requirement (id:, title:, roles: or services:, rules)")
    where = _at(source, node)
    for needed in ("id", "title"):
        if needed not in keys:
            raise ProfileError(f"{where}: a requirement needs {needed}:")
    rid, title = str(_value(keys["id"][1])), str(_value(keys["title"][1]))
    roles = _value(keys["roles"][1]) if "roles" in keys else []
    services = _value(keys["services"][1]) if "services" in keys else None
    if ("roles" in keys) == ("services" in keys):
        raise ProfileError(
            f"{where}: requirement {rid}: give roles: [..] or services: [..] (or: all), not both"
        )
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ProfileError(f"{_at(source, keys['roles'][0])}: requirement {rid}: roles: give a list of roles")
    if services is not None and services != "all" and not isinstance(services, list):
        raise ProfileError(f"{_at(source, keys['services'][0])}: requirement {rid}: services: a list, or all")
    rules = []
    for key, (key_node, value_node) in keys.items():
        if key in REQUIREMENT_KEYS:
            continue
        at = _at(source, key_node)
        if key not in KINDS:
            raise ProfileError(f"{at}: requirement {rid}: unknown key {key!r}; rules are {', '.join(KINDS)}")
        rules.append(Rule(key, KINDS[key].parse(_value(value_node), f"{at}: requirement {rid}: {key}")))
    if not rules:
        raise ProfileError(f"{where}: requirement {rid} has no rule; rules are {', '.join(KINDS)}")
    chosen = ("*",) if services == "all" else None if services is None else tuple(map(str, services))
    return Requirement(id=rid, title=title, roles=tuple(roles), services=chosen, rules=tuple(rules))


def _mapping(node: yaml.Node | None, source: str, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ProfileError(f"{_at(source, node) if node is not None else source + ':1'}: expected {what}")
    return {str(key.value): (key, value) for key, value in node.value}


def _value(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _at(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"
