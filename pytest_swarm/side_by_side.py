"""Other envs deployed beside the main one, all at the same time, started as early as possible.

Deploying a stack is mostly waiting: the first healthchecks, and on engine 20.10 an overlay
network join that now and then stalls 30 s on a node ("Bulk sync to node ... timed out" in its
dockerd log). So when a selected test will need the side-by-side envs, they are deployed in
the background from the session's start and only awaited by the first test that uses them;
the other suites run meanwhile (they check only the main stack's services).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from . import compose
from .lifecycle import SwarmLifecycle
from .stack import DeployedStack, StackSource, load_env
from .together import Together, remove_all


def side_by_side_sources(
    lifecycle: SwarmLifecycle, main: StackSource, folder: Path, extra: bool = True
) -> dict[str, StackSource]:
    """The envs of --swarm-side-by-side, and (``extra``) EXTRA: a copy of the main env on other
    ports, to remove."""
    sources = {env: lifecycle.source(env) for env in lifecycle.settings.side_by_side}
    if sources and extra:
        env_file = shifted_env(main.env_file, folder, "EXTRA", 100, main.compose_files)
        sources["EXTRA"] = replace(main, env="EXTRA", env_file=env_file)
    return sources


def shifted_env(source: Path, folder: Path, name: str, shift: int, compose_files: Sequence[Path]) -> Path:
    """A copy of the env file ``source`` whose stack is ``name`` (its ``ENV``), with every
    variable the compose files publish a host port from moved by ``shift``."""
    values = load_env(source)
    for variable in compose.published_port_variables(compose_files):
        if values.get(variable, "").isdigit():
            values[variable] = str(int(values[variable]) + shift)
    values["ENV"] = name
    target = folder / f"{name.lower()}.env"
    target.write_text("".join(f"{key}={_quoted(value)}\n" for key, value in values.items()))
    return target


def _quoted(value: str) -> str:
    """A value as an env file holds it literally: single quotes (no escapes, no ``$``
    expansion), double quotes for one that holds a single quote."""
    return f"'{value}'" if "'" not in value else json.dumps(value, ensure_ascii=False)


class SideBySide:
    """``sources`` (env name -> stack source) being deployed, each until it converges."""

    def __init__(self, lifecycle: SwarmLifecycle, sources: Mapping[str, StackSource]) -> None:
        self.envs = list(sources)
        self.made: list[DeployedStack] = []  # removed even if its convergence fails
        self._deploying: Together[str, DeployedStack] = Together(
            {
                env: partial(lifecycle.deploy, source, on_deployed=self.made.append)
                for env, source in sources.items()
            },
            name="deploy",
        )

    def stacks(self) -> dict[str, DeployedStack]:
        """Wait for every deploy; the converged stacks, or the first deploy's error."""
        self._deploying.close()
        return {env: self._deploying.outcome(env, timeout=0).get() for env in self.envs}

    def wait(self) -> None:
        """Until every deploy has converged or failed."""
        self._deploying.close()

    def close(self) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every stack made, at the same time; raise if one could not be removed."""
        self._deploying.close()
        made, self.made = self.made, []
        remove_all(made)
