"""The public API: what ``pytest_swarm`` exports, and that the shipped suites use nothing else."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import pytest_swarm

SUITES = sorted((Path(pytest_swarm.__file__).parent / "acceptance").glob("*.py"))
# The entry points a team's own check starts from: each docstring shows it in use.
WITH_EXAMPLES = (
    "Cluster",
    "Node",
    "Service",
    "Task",
    "DeployedStack",
    "SwarmLifecycle",
    "Together",
    "Profile",
    "eligible",
    "lifecycle_of",
    "load_env",
    "render",
    "run_docker",
    "satisfies",
    "show_on_failure",
    "wait_for",
)


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_the_suites_import_only_public_names(path: Path) -> None:
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_swarm"):
            if node.module != "pytest_swarm":
                wrong.append(f"line {node.lineno}: from {node.module} import ...")
            wrong += [
                f"line {node.lineno}: {a.name} is not public"
                for a in node.names
                if a.name not in pytest_swarm.__all__
            ]
        if isinstance(node, ast.Import):
            wrong += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if a.name.startswith("pytest_swarm.")
            ]
    assert not wrong, f"{path.name} reaches past the public API:\n" + "\n".join(wrong)


def test_every_public_name_is_there_and_documented() -> None:
    undocumented = []
    for name in pytest_swarm.__all__:
        value = getattr(pytest_swarm, name)
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value):
            doc = inspect.getdoc(value) or ""
            if not doc or (name in WITH_EXAMPLES and "Example" not in doc):
                undocumented.append(name)
    assert not undocumented, f"no docstring (or no example) for {undocumented}"
