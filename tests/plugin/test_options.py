"""The plugin's options, ini keys, environment variables, header and markers, through pytester."""

from __future__ import annotations

import os
import re

import pytest


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".env", **{"envs/dev": "ENV=DEV\n", "envs/stage": "ENV=STAGE\n"})
    (pytester.path / "docker-compose.yml").write_text("services: {}\n")
    return pytester


def test_header_shows_the_effective_settings(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nswarm_workers = 3\n")
    project.makepyfile("def test_nothing(): pass")
    result = project.runpytest("--swarm-env=dev", "--swarm-timeout=45")
    result.stdout.fnmatch_lines(
        [
            "swarm: provider=dind env=dev workers=3 keep=never reuse=no timeout=45s "
            "stacks=docker-compose.yml",
            "swarm settings from: env=cli, timeout=cli, workers=ini",
        ]
    )
    assert result.ret == 0


def test_set_variables_show_in_the_header(project: pytest.Pytester) -> None:
    project.makepyfile("def test_nothing(): pass")
    result = project.runpytest("--swarm-env=dev", "--swarm-set=POST_REPLICAS=1,COMMENT_REPLICAS=1")
    result.stdout.fnmatch_lines(["swarm: provider=dind env=dev * set COMMENT_REPLICAS=1 set POST_REPLICAS=1"])
    assert result.ret == 0


def test_environment_variable_beats_ini_and_cli_beats_both(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\nswarm_workers = 3\nswarm_keep = always\n")
    project.makepyfile("def test_nothing(): pass")
    monkeypatch.setenv("SWARM_WORKERS", "4")
    monkeypatch.setenv("SWARM_KEEP", "on-failure")
    result = project.runpytest("--swarm-keep=never")
    result.stdout.fnmatch_lines(["swarm: provider=dind env=- workers=4 keep=never *"])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--swarm-env=qa"], "*--swarm-env=qa: no env file for it; envs found: dev (envs/dev.env), stage (*"),
        (["--swarm-provider=k8s"], "*choose one of: dind, uml, machine, attach, ssh*"),
        (["--swarm-machines=master_1"], "*master_1 is not a docker-machine name*"),
        (["--swarm-keep=maybe"], "*choose one of: never, on-failure, always*"),
        (["--swarm-workers=many"], "*whole number >= 0*"),
        (["--swarm-timeout=-3"], "*number of seconds > 0*"),
        (
            ["--swarm-env=dev", "--swarm-stacks=stacks/missing.yml"],
            "*compose file not found*missing.yml*",
        ),
    ],
)
def test_bad_values_are_usage_errors(project: pytest.Pytester, args: list[str], error: str) -> None:
    project.makepyfile("def test_nothing(): pass")
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([error])


def test_bad_ini_labels_are_usage_errors(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nswarm_node_labels =\n    master-1:reliability=high\n    worker-1\n")
    project.makepyfile("def test_nothing(): pass")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*swarm_node_labels: 'worker-1' is not valid; write NODE:KEY=VALUE*"])


def test_markers_are_registered(project: pytest.Pytester) -> None:
    result = project.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.needs_routing_mesh: the test needs IPVS*",
            "@pytest.mark.needs_vip: the test needs IPVS*",
            "@pytest.mark.disruptive: kills, drains or cuts off nodes of a cluster of its own*",
        ]
    )


def test_swarm_stack_without_env_says_what_to_do(project: pytest.Pytester) -> None:
    """The message names the option and the env files found, without provisioning anything."""
    project.makeconftest(
        "import pytest\n@pytest.fixture(scope='session')\ndef swarm():\n    return object()\n"
    )
    project.makepyfile("def test_stack(swarm_stack): pass")
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        ["*swarm_stack needs --swarm-env NAME (envs found: dev (envs/dev.env), stage (envs/stage.env))*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_unmarked_tests_never_touch_docker(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    project.makepyfile("def test_plain(): assert 1 + 1 == 2")
    project.runpytest("--swarm-env=dev").assert_outcomes(passed=1)


def test_engine_unreachable_is_one_clear_error(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    project.makepyfile("def test_a(swarm): pass\ndef test_b(swarm): pass")
    result = project.runpytest("--swarm-env=dev")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "swarm: no Docker engine answers at unix:///nonexistent/docker.sock*start dockerd*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_docker_cli_without_stack_config_is_named(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Debian's 20.10 client has no `docker stack config`: the run stops and says what to install."""
    bin_dir = tmp_path_factory.mktemp("old-docker")
    fake = bin_dir / "docker"
    fake.write_text("#!/bin/sh\necho \"docker: 'stack config' is not a docker command.\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    project.makepyfile("def test_nothing(): pass")
    result = project.runpytest("--swarm-env=dev")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*this docker CLI has no `docker stack config` (it needs a client >= 23*"])


def test_a_label_no_local_node_carries_is_named_with_its_ini_line(pytester: pytest.Pytester) -> None:
    """Before any node is made: the constraint, the service, and the line that gives the label."""
    (pytester.path / ".env_DEV").write_text("ENV=DEV\n")
    (pytester.path / "docker-compose.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: web:1\n"
        "    deploy:\n"
        "      placement:\n"
        "        constraints: [node.role == worker, engine.labels.provider == google]\n"
        "  db:\n"
        "    image: db:1\n"
        "    deploy: {placement: {constraints: [node.labels.disk == ssd]}}\n"
    )
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--swarm-env=dev")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*no node of this dind cluster carries the labels these placement constraints ask for*",
            "*db: node.labels.disk == ssd -> swarm_node_labels = master-1:disk=ssd",
            "*web: engine.labels.provider == google -> swarm_engine_labels = *:provider=google",
        ]
    )
    pytester.makeini(
        "[pytest]\nswarm_engine_labels = *:provider=google\nswarm_node_labels = worker-1:disk=ssd\n"
    )
    result = pytester.runpytest("--swarm-env=dev")
    assert result.ret == 0, result.stderr.str()


def test_a_run_that_asks_nothing_of_the_plugin_sees_no_trace_of_it(pytester: pytest.Pytester) -> None:
    """No header line, no signal handler, no fixture work: the output is the same with the
    plugin disabled, but for pytest's list of plugins and the time taken."""
    pytester.makepyfile(
        """
        import signal

        def test_sigterm_is_pythons_own():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

        def test_fails():
            assert 1 == 2
        """
    )

    def output(*args: str) -> list[str]:
        result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", *args)
        lines = result.stdout.lines + result.stderr.lines
        return [re.sub(r" in [0-9.]+s", "", line) for line in lines if not line.startswith("plugins:")]

    with_plugin, without = output(), output("-p", "no:swarm")
    assert with_plugin == without
    assert any("1 failed, 1 passed" in line for line in with_plugin)


def test_the_suites_without_an_env_are_one_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--pyargs", "pytest_swarm.acceptance")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*swarm: the acceptance suites deploy an env: give --swarm-env NAME "
            "(envs found: dev (envs/dev.env)*"
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


RESILIENCE = "pytest_swarm.acceptance.test_resilience"


def test_the_disruptive_suite_is_deselected_by_its_marker(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = project.runpytest("--swarm-env=dev", "--pyargs", RESILIENCE, "-m", "not disruptive")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["*7 deselected*"])


def test_the_disruptive_suite_is_skipped_where_a_second_cluster_is_costly_unless_asked(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine is asked: the reason names the provider's cost and the option that opts in."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = project.runpytest("--swarm-env=dev", "--swarm-provider=uml", "--pyargs", RESILIENCE, "-rs")
    result.assert_outcomes(skipped=7)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1] *resilience breaks nodes of a cluster of its own; on uml that is *"]
    )
    assert "run it with --swarm-disruptive" in result.stdout.str()


def test_another_app_is_held_to_the_lesson_only_when_asked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lesson's rules judge the lesson's app (ui, post, comment): a team's other app gets
    one skip saying why by default, the rules when it asks for them. Files only: no engine."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    (pytester.path / ".env_DEV").write_text("ENV=DEV\n")
    (pytester.path / "docker-compose.yml").write_text(
        "services:\n  web: {image: 'shop/web:1.0'}\n  db: {image: 'postgres:16'}\n"
    )
    suite = ("--swarm-env=dev", "--pyargs", "pytest_swarm.acceptance.test_requirements", "-rs")
    result = pytester.runpytest(*suite)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no service plays the lesson's ui, post or comment*=PATH*"])
    result = pytester.runpytest(*suite, "--swarm-requirements=lesson")
    assert result.parseoutcomes()["failed"] >= 10, result.stdout.str()  # no ui, post, comment...


def test_the_teams_own_files_bind_mounted_are_named_once_before_the_deploy(
    pytester: pytest.Pytester,
) -> None:
    """On nodes this run makes, a bind mount of a file of the project can't start: one note says
    so and what a swarm of several nodes needs instead; a node's own path is not named."""
    (pytester.path / ".env_DEV").write_text("ENV=DEV\n")
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "app.conf").write_text("x = 1\n")
    (pytester.path / "docker-compose.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: web:1\n"
        "    volumes: [./conf/app.conf:/etc/app.conf, /var/run/docker.sock:/var/run/docker.sock]\n"
        "  agent:\n"
        "    image: agent:1\n"
        "    volumes: [/proc:/host/proc:ro]\n"
    )
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--swarm-env=dev")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [f"web bind-mounts this machine's {pytester.path}/conf/app.conf: *config or secret*"]
    )
    assert "docker.sock" not in result.stdout.str() and "agent bind-mounts" not in result.stdout.str()
