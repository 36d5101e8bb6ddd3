"""--swarm-report, the JUnit properties and secret masking, through pytester (no cluster needed)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

SECRET = "hunter2-mongo-pass"  # MONGO_PASSWORD in the project's env file
TOKEN = "tok-4f9a1c2e7b"  # CI_API_TOKEN in the process environment

SUITE = f"""
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2, "numbers differ:\\n  one is not two"

@pytest.mark.skip(reason="needs IPVS on every node")
def test_skipped():
    pass

@pytest.mark.parametrize(
    "rid",
    [
        "L01-mongo-runs-only-on-the-reliability-high-node",
        "L02-app-services-run-only-on-workers",
        "L17-ui-shows-the-env-it-runs-in-env-from-the-env-file",
    ],
)
def test_requirement(rid):
    if rid.startswith("L17"):
        pytest.skip("only one env file")
    assert rid.startswith("L01"), (
        f"{{rid[:3]}} app services run only on workers:\\n"
        "  ui: placement constraints none let it run on ['master-1']; "
        "required: only where node.role == worker"
    )

def test_leaks_secrets(record_property):
    record_property("login", "mongo login {SECRET}")
    assert False, "login failed with {SECRET} and {TOKEN}"
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project whose env file holds a secret; the environment holds another."""
    pytester.makefile(".env", **{"envs/dev": f"ENV=DEV\nUI_PORT=9292\nMONGO_PASSWORD={SECRET}\n"})
    monkeypatch.setenv("CI_API_TOKEN", TOKEN)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def run(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, str, ET.Element]:
    result = project.runpytest(
        "-p", "no:randomly", "--swarm-report=out/report.md", "--junitxml=junit.xml", *args
    )
    report = (project.path / "out" / "report.md").read_text()
    junit = ET.parse(project.path / "junit.xml").getroot()
    return result, report, junit


def case_properties(junit: ET.Element, name: str) -> dict[str, str]:
    case = next(c for c in junit.iter("testcase") if c.get("name") == name)
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


def test_report_has_verdict_settings_requirement_lines_and_one_line_per_check(
    project: pytest.Pytester,
) -> None:
    result, report, _ = run(project)
    result.assert_outcomes(passed=2, failed=3, skipped=2)
    lines = report.splitlines()
    assert lines[0] == "# pytest-swarm: FAILED (2 passed, 3 failed, 2 skipped)"
    assert "## Requirements (profile lesson)" in lines
    assert "| env | - (no --swarm-env) |" in lines
    assert "| provider | dind |" in lines
    assert "| cluster | none brought up |" in lines
    assert "| pytest exit | TESTS_FAILED |" in lines
    assert "| L01 mongo runs only on the reliability=high node | pass |  |" in lines
    assert (
        "| L02 app services run only on workers | FAIL | L02 app services run only on workers: "
        "ui: placement constraints none let it run on ['master-1']; "
        "required: only where node.role == worker |"
    ) in lines
    assert "| L03 app services run at least 3 replicas | not run |  |" in lines
    assert "| L17 ui shows the env it runs in (ENV from the env file) | skip | only one env file |" in lines
    checks = [line for line in lines if line.startswith("| test_suite.py::")]
    assert len(checks) == 7
    assert checks[0].startswith("| test_suite.py::test_passes | pass | ")
    assert checks[1].startswith("| test_suite.py::test_fails | FAIL | ")
    assert checks[1].endswith(" s | numbers differ: one is not two |")
    assert checks[2].endswith("| skip | 0.0 s | needs IPVS on every node |")
    result.stdout.fnmatch_lines(["*swarm*", f"report written to {project.path / 'out' / 'report.md'}"])


def test_junit_carries_requirement_reason_and_session_properties(project: pytest.Pytester) -> None:
    _, _, junit = run(project)
    suite = {p.get("name"): p.get("value") for p in junit.find("testsuite").find("properties")}  # type: ignore[union-attr]
    assert suite["swarm_env"] == "-"
    assert suite["swarm_provider"] == "dind"
    assert suite["swarm_verdict"] == "FAILED"
    assert suite["swarm_cluster"] == "none brought up"
    l02 = case_properties(junit, "test_requirement[L02-app-services-run-only-on-workers]")
    assert l02["swarm_requirement"] == "L02 app services run only on workers"
    assert l02["swarm_outcome_reason"].startswith("L02 app services run only on workers: ui: placement")
    l01 = case_properties(junit, "test_requirement[L01-mongo-runs-only-on-the-reliability-high-node]")
    assert l01 == {"swarm_requirement": "L01 mongo runs only on the reliability=high node"}
    assert case_properties(junit, "test_skipped") == {"swarm_outcome_reason": "needs IPVS on every node"}


def test_secrets_are_masked_in_the_report_and_junit_properties(project: pytest.Pytester) -> None:
    _, report, junit = run(project)
    assert "| test_suite.py::test_leaks_secrets | FAIL |" in report
    assert "login failed with *** and *** |" in report
    assert SECRET not in report and TOKEN not in report
    leaked = case_properties(junit, "test_leaks_secrets")
    assert leaked["login"] == "mongo login ***"
    assert leaked["swarm_outcome_reason"] == "login failed with *** and ***"
    values = [p.get("value", "") for p in junit.iter("property")]
    assert not [v for v in values if SECRET in v or TOKEN in v]


def test_set_variables_are_in_the_report_with_secret_values_masked(project: pytest.Pytester) -> None:
    _, report, junit = run(project, "--swarm-set=POST_REPLICAS=1,API_TOKEN=set-token-9f2")
    assert "| variables set | API_TOKEN=***, POST_REPLICAS=1 |" in report.splitlines()
    suite = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert suite["swarm_set"] == "API_TOKEN=***, POST_REPLICAS=1"


def test_the_report_is_added_to_a_github_job_summary(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = project.path / "summary.md"
    page.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(page))
    _, report, _ = run(project)
    assert page.read_text() == "# earlier step\n" + report + "\n"


def test_progress_lines_and_summary_are_masked(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_suite=f"""
from pytest_swarm.lifecycle import lifecycle_of

def test_talks(request):
    lifecycle = lifecycle_of(request.config)
    lifecycle.progress("deploying with {SECRET}")
    lifecycle.summary.append("stack DEV used token {TOKEN}")
"""
    )
    result = project.runpytest("-p", "no:randomly", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["[[]swarm[]] deploying with ***", "stack DEV used token ***"])
    assert SECRET not in result.stdout.str() and TOKEN not in result.stdout.str()


def test_progress_lines_of_threads_side_by_side_stay_whole_lines(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_suite="""
import sys
import threading
from pytest_swarm.lifecycle import lifecycle_of

def test_talks(request):
    sys.setswitchinterval(1e-6)  # threads take turns within a line's writing
    say = lifecycle_of(request.config).progress
    def talk(who):
        for n in range(300):
            say(f"{who} waits: {n} " + "." * 60)
    threads = [threading.Thread(target=talk, args=(who,)) for who in ("ui", "post", "comment")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""
    )
    result = project.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    said = [line for line in result.outlines if "waits: " in line]
    whole = re.compile(r"\[swarm\] (ui|post|comment) waits: \d+ \.{60}")
    assert len(said) == 900 and all(whole.fullmatch(line) for line in said), [
        line for line in said if not whole.fullmatch(line)
    ][:5]


def test_an_interrupted_run_still_writes_its_report(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_suite="""
def test_first():
    pass

def test_interrupted():
    raise KeyboardInterrupt

def test_never_reached():
    pass
"""
    )
    # inline_run, told not to re-raise the inner run's Ctrl-C into this test
    recorded = project.inline_run("-p", "no:randomly", "--swarm-report=out/report.md", no_reraise_ctrlc=True)
    assert recorded.ret == pytest.ExitCode.INTERRUPTED
    lines = (project.path / "out" / "report.md").read_text().splitlines()
    assert lines[0] == "# pytest-swarm: INTERRUPTED (1 passed, 1 interrupted)"
    assert "| pytest exit | INTERRUPTED |" in lines
    assert any(line.startswith("| test_suite.py::test_first | pass |") for line in lines)
    assert any(line.startswith("| test_suite.py::test_interrupted | INTERRUPTED |") for line in lines)
    assert not any("test_never_reached" in line for line in lines)


def test_no_report_option_writes_no_file(project: pytest.Pytester) -> None:
    project.runpytest("-p", "no:randomly").assert_outcomes(passed=2, failed=3, skipped=2)
    assert not [p for p in project.path.rglob("*.md") if ".pytest_cache" not in p.parts]


def test_report_option_naming_a_folder_is_a_usage_error(project: pytest.Pytester) -> None:
    (project.path / "out").mkdir()
    result = project.runpytest("--swarm-report=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--swarm-report=out: * is a folder; give a file, e.g. report.md*"])


def test_report_path_from_the_environment(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_REPORT", "from-env.md")
    project.runpytest("-p", "no:randomly")
    assert (project.path / "from-env.md").read_text().startswith("# pytest-swarm: FAILED")


def test_under_xdist_the_controller_writes_one_report_with_every_worker(pytester: pytest.Pytester) -> None:
    for name in ("test_one", "test_two"):
        pytester.makepyfile(
            **{
                name: f"""
from pytest_swarm import lifecycle_of

def test_a(request):
    lifecycle_of(request.config).note("{name} ran here")

def test_b():
    assert False, "{name} b fails"
"""
            }
        )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly", "--swarm-report=report.md")
    result.assert_outcomes(passed=2, failed=2)
    report = (pytester.path / "report.md").read_text()
    assert report.splitlines()[0] == "# pytest-swarm: FAILED (2 passed, 2 failed)"
    notes = [line for line in report.splitlines() if " ran here" in line]
    assert sorted(line.split(": ", 1)[1] for line in notes) == ["test_one ran here", "test_two ran here"]
    assert all(line.startswith("- gw") for line in notes), notes  # named by the worker that ran it
    result.stdout.fnmatch_lines(["*gw?: test_one ran here*"])


WHERE = """
import os

def test_a():
    print("ran on", os.environ["PYTEST_XDIST_WORKER"])

def test_b():
    print("ran on", os.environ["PYTEST_XDIST_WORKER"])
"""


def test_under_xdist_a_file_goes_to_one_worker_unless_dist_says_otherwise(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_where=WHERE)

    def workers(*args: str) -> set[str]:
        result = pytester.runpytest_subprocess(
            "-n", "2", "-p", "no:randomly", "-rP", "--swarm-timeout=60", *args
        )
        result.assert_outcomes(passed=2)
        return {line.split()[-1] for line in result.outlines if line.startswith("ran on gw")}

    assert len(workers()) == 1  # the tests of a module share what its fixtures start
    assert workers("--dist", "load") == {"gw0", "gw1"}


def test_under_xdist_keeping_a_cluster_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-n", "2", "--swarm-keep=on-failure")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*under pytest-xdist each worker brings up its own*"])


FIGURES = """
from pytest_swarm import disruption, resilience

def test_worker_lost(request):
    down = resilience.SwarmTimers().node_down()
    disruption.record_figure(request.node, resilience.Figure("worker lost", "to Down", 12.4, deadline=down))
    disruption.record_figure(
        request.node, resilience.Figure("worker lost", "failed requests during", 3, "requests", note="of 90")
    )

def test_partition(request):
    backoff = resilience.Deadline(35.5, "backoff")
    late = resilience.Figure("partition", "healed: to Ready", 40.0, deadline=backoff)
    disruption.record_figure(request.node, late)
    assert late.held, late.describe()
"""


def test_resilience_figures_reach_the_report_the_junit_properties_and_the_summary(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_figures=FIGURES)
    result, report, junit = run(project, "test_figures.py")
    result.assert_outcomes(passed=1, failed=1)
    lines = report.splitlines()
    assert "## Resilience" in lines
    assert (
        "| worker lost | to Down | 12.4 s | 18.5 s (3 missed heartbeats x (5 s + 0.5 s) + 2 s) | yes |"
        in lines
    )
    assert "| worker lost | failed requests during | 3 requests of 90 | - | - |" in lines
    assert "| partition | healed: to Ready | 40.0 s | 35.5 s (backoff) | NO |" in lines
    lost = case_properties(junit, "test_worker_lost")
    assert lost["swarm_resilience_worker_lost_to_down_seconds"] == "12.4"
    assert lost["swarm_resilience_worker_lost_to_down_deadline_seconds"] == "18.5"
    assert lost["swarm_resilience_worker_lost_failed_requests_during_requests"] == "3"
    suite = {p.get("name"): p.get("value") for p in junit.find("testsuite").find("properties")}  # type: ignore[union-attr]
    assert suite["swarm_resilience_partition_healed_to_ready"].startswith(
        "partition: healed: to Ready 40.0 s, PAST"
    )
    result.stdout.fnmatch_lines(
        [
            "*swarm resilience: measured, and the deadline each was held to*",
            "worker lost: to Down 12.4 s, within its deadline 18.5 s (3 missed heartbeats*",
        ]
    )
