"""Swarm placement constraints, evaluated the way swarm's scheduler does.

A constraint is ``<attribute> == <value>`` or ``<attribute> != <value>``; attributes are
``node.id``, ``node.hostname``, ``node.role``, ``node.platform.os``, ``node.platform.arch``,
``node.labels.<key>`` and ``engine.labels.<key>``. Values compare case-insensitively; a label
the node lacks compares as the empty string (so ``!=`` holds and ``==`` fails).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_CONSTRAINT = re.compile(r"^\s*(?P<key>[\w.\-/]+)\s*(?P<op>==|!=)\s*(?P<value>.*?)\s*$")


class ConstraintError(ValueError):
    """A constraint swarm would reject too."""


@dataclass(frozen=True)
class NodeFacts:
    """What constraints can look at, for one node."""

    id: str
    hostname: str
    role: str
    os: str = "linux"
    arch: str = "x86_64"
    labels: Mapping[str, str] | None = None
    engine_labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Constraint:
    key: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Constraint:
        match = _CONSTRAINT.match(text)
        if not match or not match["value"]:
            raise ConstraintError(f"{text!r} is not a constraint; write e.g. node.role == worker")
        key = match["key"]
        lowered = key.lower()
        fixed = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
        labelled = lowered.startswith(("node.labels.", "engine.labels."))
        if lowered not in fixed and not labelled:
            raise ConstraintError(
                f"{text!r}: unknown attribute {key!r}; use one of {', '.join(fixed)}, "
                "node.labels.<key>, engine.labels.<key>"
            )
        return cls(key=key, op=match["op"], value=match["value"])

    def actual(self, node: NodeFacts) -> str:
        """The node's value of this constraint's attribute ('' when it has none)."""
        lowered = self.key.lower()
        for prefix, labels in (("node.labels.", node.labels), ("engine.labels.", node.engine_labels)):
            if lowered.startswith(prefix):
                return (labels or {}).get(self.key[len(prefix) :], "")
        return {
            "node.id": node.id,
            "node.hostname": node.hostname,
            "node.role": node.role,
            "node.platform.os": node.os,
            "node.platform.arch": node.arch,
        }[lowered]

    def holds_for(self, node: NodeFacts) -> bool:
        equal = self.actual(node).lower() == self.value.lower()
        return equal if self.op == "==" else not equal

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.value}"


def satisfies(node: NodeFacts, constraints: Iterable[str]) -> list[str]:
    """The constraints ``node`` breaks, each with the node's actual value ([] = eligible).

    Example::

        assert satisfies(swarm.node("worker-1").facts(), ["node.role == worker"]) == []
    """
    broken = []
    for text in constraints:
        constraint = Constraint.parse(text)
        if not constraint.holds_for(node):
            broken.append(f"{constraint} (node has {constraint.actual(node)!r})")
    return broken


def eligible(nodes: Iterable[NodeFacts], constraints: Iterable[str]) -> list[NodeFacts]:
    """The nodes that meet every constraint.

    Example::

        ui = swarm_stack.service("ui")
        where = eligible([n.facts() for n in swarm.nodes() if n.ready], ui.constraints)
    """
    rules = list(constraints)
    return [n for n in nodes if not satisfies(n, rules)]


def missing_labels(
    services: Mapping[str, Iterable[str]], nodes: Iterable[NodeFacts], kinds: Iterable[str]
) -> list[tuple[str, Constraint]]:
    """(service, constraint) for each ``==`` constraint on a label (of ``kinds``: ``node``,
    ``engine``) that no node carries: no node can ever take that service's tasks."""
    nodes = list(nodes)
    found = []
    for service, constraints in sorted(services.items()):
        for text in constraints:
            constraint = Constraint.parse(text)
            key = constraint.key.lower()
            for kind in kinds:
                prefix = f"{kind}.labels."
                label = constraint.key[len(prefix) :]
                labels = [(n.labels if kind == "node" else n.engine_labels) or {} for n in nodes]
                if key.startswith(prefix) and constraint.op == "==" and not any(label in ls for ls in labels):
                    found.append((service, constraint))
    return found
