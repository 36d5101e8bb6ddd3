import pytest

from pytest_swarm.placement import Constraint, ConstraintError, NodeFacts, eligible, satisfies

MASTER = NodeFacts(id="abc123", hostname="master-1", role="manager", labels={"reliability": "high"},
                   engine_labels={"zone": "a"})  # fmt: skip
WORKER = NodeFacts(
    id="def456", hostname="worker-1", role="worker", arch="aarch64", engine_labels={"zone": "b"}
)


@pytest.mark.parametrize(
    ("constraint", "master", "worker"),
    [
        ("node.role == worker", False, True),
        ("node.role != worker", True, False),
        ("node.role==manager", True, False),
        ("node.hostname == master-1", True, False),
        ("node.hostname == MASTER-1", True, False),  # values compare case-insensitively
        ("node.id == def456", False, True),
        ("node.labels.reliability == high", True, False),
        ("node.labels.reliability != high", False, True),  # a missing label is ''
        ("node.labels.reliability == ", None, None),
        ("engine.labels.zone == b", False, True),
        ("node.platform.os == linux", True, True),
        ("node.platform.arch != x86_64", False, True),
        ("Node.Role == Worker", False, True),  # attribute names too
    ],
)
def test_constraints_like_the_scheduler(constraint: str, master: bool | None, worker: bool | None) -> None:
    if master is None:
        with pytest.raises(ConstraintError):
            Constraint.parse(constraint)
        return
    rule = Constraint.parse(constraint)
    assert (rule.holds_for(MASTER), rule.holds_for(WORKER)) == (master, worker)


@pytest.mark.parametrize("text", ["node.role = worker", "node.colour == red", "== x", "node.role ~= worker"])
def test_malformed_constraints_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConstraintError, match=r"node\.role == worker|unknown attribute"):
        Constraint.parse(text)


def test_satisfies_names_the_broken_rule_and_the_actual_value() -> None:
    broken = satisfies(MASTER, ["node.role == worker", "node.labels.reliability == high"])
    assert broken == ["node.role == worker (node has 'manager')"]
    assert satisfies(WORKER, ["node.role == worker"]) == []


def test_eligible_nodes_meet_every_constraint() -> None:
    assert eligible([MASTER, WORKER], ["node.role == worker", "engine.labels.zone == b"]) == [WORKER]
    assert eligible([MASTER, WORKER], []) == [MASTER, WORKER]
