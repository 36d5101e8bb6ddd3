"""Benchmark: the acceptance suite as a user runs it, provisioning included, and its time split.

    python bench/suite.py [--rounds 1] [--provider dind|uml] [--env dev] [--cold] [--xdist N]
                          [--disruptive-cost]

Each round runs the README's command for the provider in a fresh process (dind: every suite;
uml: the suites that need IPVS), timed from outside, and reads the JUnit XML it wrote: every
test's declared waits (update delay, monitor, restart delay, first healthcheck) and the rest.
Prints the wall time of each round against its target (dind 240 s, uml 600 s), the rest as a
share of the declared waits for the whole suite and for each test that declared any, and
exits 1 when a round failed its tests.

``--cold``: before each round, untag what a new user's machine lacks (the base image, the dind
node image, the stack's images and their variants), so the round builds them all as a first run
does (target: COLD_TARGET). ``--xdist N``: the command under ``pytest -n N`` (0: in one process).

``--disruptive-cost``: each round runs the command twice, with the disruptive suite and with
``-m "not disruptive"`` (which one first alternates by round), and prints what the disruptive
suite added to the wall time (target: DISRUPTIVE_TARGET).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"dind": 240.0, "uml": 600.0}
REST_TARGET = 0.5
COLD_TARGET = 240.0  # a new user's first dind run, nothing cached
DISRUPTIVE_TARGET = 90.0  # seconds the disruptive suite may add to the dind command's wall time
UML_SELECTION = [
    "-m",
    "needs_routing_mesh or needs_vip",
    "--deselect",
    "acceptance/test_environments.py::test_each_env_answers_on_its_own_port_with_its_env",
]


def command(
    provider: str, env: str, junit: Path, xdist: int | None = None, without_disruptive: bool = False
) -> list[str]:
    args = [sys.executable, "-m", "pytest", f"--swarm-env={env}", "acceptance/", f"--junitxml={junit}", "-q"]
    if xdist is not None:
        args += ["-n", str(xdist)]
    if provider == "uml":
        args += ["--swarm-provider=uml", *UML_SELECTION]
    if without_disruptive:
        args += ["-m", "not disruptive"]
    return args


def splits(junit: Path) -> tuple[list[tuple[str, float, float]], dict[str, int]]:
    """(test, declared s, rest s) of every test that declared waits; and the outcome counts."""
    root = ET.parse(junit).getroot()
    found, counts = [], {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "swarm_declared_wait_seconds" in props:
            name = f"{case.get('classname')}::{case.get('name')}"
            found.append(
                (
                    name,
                    float(props["swarm_declared_wait_seconds"] or 0),
                    float(props["swarm_rest_seconds"] or 0),
                )
            )
    return found, counts


def modules(junit: Path) -> list[tuple[str, float]]:
    """Each module's share of the round, in the order it ran (JUnit times include fixtures)."""
    spent: dict[str, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = str(case.get("classname", "")).rpartition(".")[2]
        spent[module] = spent.get(module, 0.0) + float(case.get("time") or 0)
    return list(spent.items())


def forget_images(provider: str) -> None:
    """Untag the images a first run builds (their layers go once nothing else uses them)."""
    import docker
    from images import project_images, stack_images, untag  # bench/images.py, beside this script

    from pytest_swarm import images
    from pytest_swarm.providers.dind import NODE_RECIPE, NODE_REPO

    if provider != "dind":
        raise SystemExit("--cold: only dind (uml caches its disks apart: bench/uml_ready.py)")
    client = docker.from_env(timeout=600)
    model, build, _ = stack_images()
    node = f"{NODE_REPO}:{images.recipe_digest(NODE_RECIPE)}"
    untag(client, [*project_images(model, build), node, images.BASE_IMAGE])
    print(f"untagged the base image, {node} and the stack's images")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--provider", choices=sorted(TARGETS), default="dind")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--cold", action="store_true", help="each round from nothing cached")
    parser.add_argument("--xdist", type=int, help="run under pytest -n N")
    parser.add_argument("--disruptive-cost", action="store_true", help="each round with and without it")
    options = parser.parse_args()
    if options.disruptive_cost:
        return disruptive_cost(options.rounds, options.provider, options.env)
    walls, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as folder:
        for round_ in range(1, options.rounds + 1):
            junit = Path(folder) / f"round-{round_}.xml"
            if options.cold:
                forget_images(options.provider)
            started = time.monotonic()
            run = command(options.provider, options.env, junit, options.xdist)
            done = subprocess.run(run, cwd=ROOT, check=False)
            walls.append(time.monotonic() - started)
            found, counts = splits(junit)
            failed |= done.returncode != 0
            declared = sum(d for _, d, _ in found)
            rest = sum(r for _, _, r in found)
            target = COLD_TARGET if options.cold else TARGETS[options.provider]
            print(
                f"round {round_}: {walls[-1]:.1f} s (target {target:g} s), exit {done.returncode}, {counts}"
            )
            print("  by module, in run order: " + ", ".join(f"{m} {t:.0f} s" for m, t in modules(junit)))
            if declared:
                share = f"{rest / declared:.0%} of them; target <= {REST_TARGET:.0%}"
                print(f"  declared waits {declared:.1f} s, rest {rest:.1f} s ({share})")
            for name, d, r in found:
                mark = "" if r <= REST_TARGET * d else "  <- over"
                print(f"  {name}: declared {d:.1f} s, rest {r:.1f} s ({r / d:.0%}){mark}")
    median = statistics.median(walls)
    spread = f"{len(walls)} round(s), min {min(walls):.1f}, max {max(walls):.1f}"
    print(f"{options.provider} suite: median {median:.1f} s over {spread}")
    return 1 if failed else 0


def disruptive_cost(rounds: int, provider: str, env: str) -> int:
    """Pairs of rounds, with and without the disruptive suite; what it added to the wall time."""
    added, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as folder:
        for round_ in range(1, rounds + 1):
            walls: dict[bool, float] = {}
            for without in (False, True) if round_ % 2 else (True, False):
                junit = Path(folder) / f"round-{round_}-{'without' if without else 'with'}.xml"
                started = time.monotonic()
                done = subprocess.run(
                    command(provider, env, junit, without_disruptive=without), cwd=ROOT, check=False
                )
                walls[without] = time.monotonic() - started
                failed |= done.returncode != 0
                _, counts = splits(junit)
                label = "without the disruptive suite" if without else "with it"
                print(f"round {round_} {label}: {walls[without]:.1f} s, exit {done.returncode}, {counts}")
            added.append(walls[False] - walls[True])
            print(
                f"round {round_}: the disruptive suite added {added[-1]:.1f} s "
                f"(target <= {DISRUPTIVE_TARGET:g} s)"
            )
    print(
        f"added: median {statistics.median(added):.1f} s over {len(added)} pair(s), "
        f"each {[round(a, 1) for a in added]}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
