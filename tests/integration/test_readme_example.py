"""The README's "Write your own check" runs as written, on a real dind swarm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent.parent / "README.md"

pytestmark = pytest.mark.usefixtures("engine")


def readme_example() -> str:
    section = README.read_text().split("### Write your own check", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under 'Write your own check'"
    return match.group(1)


def test_the_readme_check_passes_on_a_stack(project: pytest.Pytester) -> None:
    code = readme_example()
    assert 15 <= len(code.strip().splitlines()) <= 25, "the README's example stays short"
    project.makepyfile(test_own_check=code)
    result = project.runpytest_subprocess("--swarm-env=small", "-p", "no:randomly", "test_own_check.py")
    result.assert_outcomes(passed=1)
