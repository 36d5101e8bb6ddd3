"""Stacks: an env file plus ordered compose files -> rendered model -> deployed and converged.

``docker stack deploy`` reads no ``.env`` file, so the env file's variables are given to the
docker CLI as its environment, both for ``docker stack config`` (the rendered model: what the
files declare, and what the suites compare the cluster with) and for ``docker stack deploy``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import yaml
from dotenv import dotenv_values

from . import compose, externals, images, network_join
from .cluster import STACK_LABEL, Cluster, Service
from .commands import run_docker
from .errors import CommandError, PortClash, StackError
from .waiting import Poll, wait_for

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $VAR; $$ is a literal $.
_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class StackSource:
    """What to deploy: an env (name and file) and the compose files, in order."""

    env: str
    env_file: Path
    compose_files: tuple[Path, ...]
    stack_name: str | None = None  # overrides the name derived from the env
    overrides: tuple[tuple[str, str], ...] = ()  # --swarm-set: set over the env file's variables

    def values(self) -> dict[str, str]:
        return {**load_env(self.env_file), **dict(self.overrides)}

    def name(self) -> str:
        return self.stack_name or stack_name(self.env, self.values())


def load_env(env_file: Path) -> dict[str, str]:
    """The env file's variables (python-dotenv); a key without a value is an error.

    Example::

        assert load_env(Path(".env_DEV"))["ENV"] == "DEV"
    """
    if not env_file.is_file():
        found = sorted(p.stem for p in env_file.parent.glob("*.env"))
        raise StackError(f"env file {env_file} does not exist; env files found: {', '.join(found) or 'none'}")
    values = dotenv_values(env_file, interpolate=True)
    empty = [key for key, value in values.items() if value is None]
    if empty:
        raise StackError(f"{env_file}: {', '.join(empty)} has no value; write KEY=VALUE")
    return {key: str(value) for key, value in values.items()}


def stack_name(env: str, values: Mapping[str, str]) -> str:
    """The env's ``ENV`` value if it sets one (as the lesson's DEV), else the env name upper-cased."""
    return values.get("ENV") or env.upper()


def required_variables(text: str) -> set[str]:
    """Variables ``text`` uses without a default (``${X:-d}`` and ``${X-d}`` have one)."""
    required = set()
    for match in _VARIABLE.finditer(text):
        braced, modifier, bare = match.groups()
        name = braced or bare
        if name and not (modifier or "").startswith((":-", "-")):
            required.add(name)
    return required


def _strings(node: Any) -> Iterable[str]:
    """Every string of a parsed YAML document, keys included (comments are already gone)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def missing_variables(files: Sequence[Path], values: Mapping[str, str]) -> dict[str, list[str]]:
    """Variable -> files that need it, for every variable neither the env file nor the process sets."""
    missing: dict[str, list[str]] = {}
    for path in files:
        text = "\n".join(_strings(yaml.safe_load(path.read_text())))
        for name in sorted(required_variables(text)):
            if name not in values and name not in os.environ:
                missing.setdefault(name, []).append(str(path))
    return missing


def cli_environment(values: Mapping[str, str]) -> dict[str, str]:
    """The docker CLI's environment: the process's, with the env file's values on top."""
    return {**os.environ, **values}


def check_stack_config_support() -> None:
    try:
        run_docker(["stack", "config", "--help"], timeout=20)
    except CommandError as exc:
        raise StackError(
            "this docker CLI has no `docker stack config` (it needs a client >= 23; Debian's 20.10 "
            f"client lacks it): put a newer docker client first on PATH. ({exc})"
        ) from exc


def render(source: StackSource) -> dict[str, Any]:
    """Validate, then render the stack as ``docker stack deploy`` will see it.

    Example::

        model = render(StackSource("dev", Path(".env_DEV"), (Path("docker-compose.yml"),)))
        assert model["services"]["ui"]["deploy"]["replicas"] == 3
    """
    if not source.compose_files:
        raise StackError(f"no compose file to render {source.env} from: give them with --swarm-stacks")
    compose.check(source.compose_files)
    values = source.values()
    missing = missing_variables(source.compose_files, values)
    if missing:
        lines = [f"  {name} (used in {', '.join(files)})" for name, files in sorted(missing.items())]
        raise StackError(
            f"variables the stack needs are not set in {source.env_file}:\n"
            + "\n".join(lines)
            + f"\nadd them to {source.env_file} (KEY=VALUE)"
        )
    check_stack_config_support()
    try:
        text = _stack_config(source.compose_files, values)
    except CommandError as exc:
        raise StackError(
            f"docker refuses the stack of {source.env}: {_refused_by(source, values, exc)}"
        ) from exc
    model: dict[str, Any] = yaml.safe_load(text)
    return compose.absolute_paths(model, compose.base_dir(source.compose_files))


def _stack_config(files: Sequence[Path], values: Mapping[str, str]) -> str:
    args = ["stack", "config", *(a for f in files for a in ("-c", str(f)))]
    return run_docker(args, timeout=60, env=cli_environment(values))


def _refused_by(source: StackSource, values: Mapping[str, str], error: CommandError) -> str:
    """Docker's reason, with the compose file it is about: docker names none, so each file is
    rendered alone; when each passes alone, it is about how they combine."""
    reason = str(error).partition("` exited ")[2].partition(": ")[2] or str(error)
    if len(source.compose_files) > 1:
        for path in source.compose_files:
            try:
                _stack_config([path], values)
            except CommandError:
                return f"{path}: {reason}"
        return f"{', '.join(map(str, source.compose_files))} (together): {reason}"
    return f"{source.compose_files[0]}: {reason}"


def published_ports(model: Mapping[str, Any], ingress_only: bool = False) -> dict[int, str]:
    """Published port -> service, from a rendered model; ``ingress_only``: the ports of the
    routing mesh (every node answers), not those of ``mode: host`` (only a task's node does)."""
    ports: dict[int, str] = {}
    for service, spec in (model.get("services") or {}).items():
        for port in spec.get("ports") or []:
            if not isinstance(port, Mapping) or port.get("published") is None:
                continue
            if not ingress_only or port.get("mode", "ingress") == "ingress":
                ports[int(port["published"])] = service
    return ports


def port_clashes(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Published ports two stacks both claim: ``9292: DEV ui and STAGE ui``."""
    owner: dict[int, str] = {}
    clashes = []
    for stack, model in models.items():
        for port, service in sorted(published_ports(model).items()):
            if port in owner:
                clashes.append(f"port {port}: {owner[port]} and {stack} {service}")
            else:
                owner[port] = f"{stack} {service}"
    return clashes


def ports_in_use(cluster: Cluster, except_stack: str) -> dict[str, dict[str, Any]]:
    """A rendered-model-like view of the published ports of every other stack on the cluster."""
    models: dict[str, dict[str, Any]] = {}
    for service in cluster.services():
        if service.stack == except_stack:
            continue
        ports = (service.attrs.get("Endpoint") or {}).get("Spec", {}).get("Ports") or []
        published = [{"published": p["PublishedPort"]} for p in ports if p.get("PublishedPort")]
        if published:
            stack = service.stack or "(no stack)"
            short = service.name.removeprefix(f"{stack}_")
            models.setdefault(stack, {"services": {}})["services"][short] = {"ports": published}
    return models


def check_ports_free(cluster: Cluster, name: str, model: dict[str, Any], env_file: Path) -> None:
    """Name a published port another stack already uses, before anything is deployed."""
    clashes = port_clashes({**ports_in_use(cluster, name), name: model})
    if clashes:
        raise PortClash(
            f"stack {name} publishes ports already in use on this cluster: {'; '.join(clashes)}; "
            f"give it other ports in {env_file}"
        )


def service_images(model: Mapping[str, Any]) -> dict[str, str]:
    return {
        name: str(spec["image"]) for name, spec in (model.get("services") or {}).items() if spec.get("image")
    }


@dataclass
class DeployedStack:
    """A stack deployed on a cluster.

    Attributes:
        name: the stack name (DEV); services are named ``<name>_<service>``.
        source: the env and compose files it came from.
        values: the env file's variables.
        model: the rendered compose model (what the files declare).
        standins: services whose image is an offline stand-in.
        unconverged: why the stack did not converge in time ("" when it did).

    Example::

        ui = swarm_stack.service("ui")
        declared = swarm_stack.declared("ui")["deploy"]["replicas"]
        assert ui.running == declared
    """

    name: str
    source: StackSource
    values: dict[str, str]
    model: dict[str, Any]
    cluster: Cluster
    standins: list[str] = field(default_factory=list)
    seconds_to_converge: float = 0.0
    unconverged: str = ""  # why it did not converge within the timeout, if it did not
    # the services that had each node join the networks before the deploy (network_join),
    # removed once the stack has converged (or failed to)
    network_joins: list[str] = field(default_factory=list)

    @property
    def declared_services(self) -> list[str]:
        return sorted(self.model.get("services") or {})

    def declared(self, service: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.model["services"][service]
        return spec

    def full_name(self, service: str) -> str:
        return f"{self.name}_{service}"

    def services(self) -> list[Service]:
        return self.cluster.services(self.name)

    def service(self, service: str) -> Service:
        return self.cluster.service(self.full_name(service))

    def published_port(self, service: str) -> int | None:
        """The service's first port on the routing mesh (None when it publishes none there)."""
        for port, owner in published_ports(self.model, ingress_only=True).items():
            if owner == service:
                return port
        return None

    def deploy(self, timeout: float = 300) -> None:
        # --prune would remove the network-join services before the stack's tasks are in place
        prune = [] if self.network_joins else ["--prune"]
        args = ["stack", "deploy", "--resolve-image", "never", *prune, "--detach=true"]
        args += [a for f in self.source.compose_files for a in ("-c", str(f))]
        try:
            run_docker(
                [*args, self.name],
                host=self.cluster.manager_url,
                timeout=timeout,
                env=cli_environment(self.values),
            )
        except CommandError as exc:
            raise StackError(f"deploying {self.name} failed: {exc}") from exc

    def converge(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Wait until every service runs its desired tasks and no update is under way
        (``sleep``: between two looks, e.g. one that ends the wait when the run stops)."""
        started = time.monotonic()
        expected = set(self.declared_services)

        def probe() -> Poll[None]:
            services = {s.name: s for s in self.services()}
            pending = []
            for short in sorted(expected):
                service = services.get(self.full_name(short))
                if service is None:
                    pending.append(f"{short} absent")
                elif not _converged(service):
                    update = f", update {service.update_state}" if service.update_state else ""
                    pending.append(f"{short} {service.running}/{service.desired}{update}")
            return Poll(not pending, "; ".join(pending) or "all converged")

        try:
            wait_for(probe, what=f"stack {self.name} converged", timeout=timeout, interval=0.5, sleep=sleep)
        except Exception as exc:
            errors = self.task_errors()
            detail = "\n".join(f"  {line}" for line in errors) or "  (no task error reported)"
            raise type(exc)(
                f"{exc}\ntask errors:\n{detail}\nhint: DOCKER_HOST={self.cluster.manager_url} "
                f"docker stack ps {self.name} --no-trunc"
            ) from exc
        finally:
            network_join.remove_join_services(self.cluster, self.network_joins)
            self.network_joins = []
        self.seconds_to_converge = time.monotonic() - started

    def task_errors(self) -> list[str]:
        lines = []
        for service in self.services():
            error = service.last_error()
            if error and service.running < max(service.desired, 1):
                lines.append(f"{service.name}: {error}")
        return lines

    def remove(self, timeout: float = 120) -> None:
        """``docker stack rm``, then wait for its services, networks and volumes to be gone.

        ``docker stack rm`` removes the services, then the networks at once: a network whose
        tasks the manager has not reaped yet is refused ("is in use by task") and the CLI exits 1
        with the rest removed. What it leaves is removed here, by the stack's label, once free.
        """
        try:
            run_docker(["stack", "rm", self.name], host=self.cluster.manager_url, timeout=60)
        except CommandError as exc:
            if "in use by task" not in str(exc):
                raise
        label = {"label": f"{STACK_LABEL}={self.name}"}
        client = self.cluster.client

        def probe() -> Poll[None]:
            left = len(client.api.services(filters=label)) + _remove_networks(client, label)
            left += _remove_volumes(self.cluster.engines.values(), self.name)
            return Poll(left == 0, f"{left} services, networks or volumes left")

        wait_for(probe, what=f"stack {self.name} removed", timeout=timeout, interval=0.5)


def _converged(service: Service) -> bool:
    if service.update_state in ("updating", "rollback_started"):
        return False
    if service.mode == "replicated":
        return service.running == service.desired == service.replicas
    return service.desired > 0 and service.running == service.desired


def _remove_networks(client: docker.DockerClient, label: Mapping[str, str]) -> int:
    """Try to remove the stack's networks left once their services are gone; returns how many are
    still there (a task of a removed service still holds it until the manager reaps it)."""
    left = 0
    if client.api.services(filters=label):
        return len(client.api.networks(filters=label))  # docker stack rm is still at work
    for network in client.api.networks(filters=label):
        try:
            client.api.remove_network(network["Id"])
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            left += 1
    return left


def _remove_volumes(engines: Iterable[docker.DockerClient], stack: str) -> int:
    """Try to remove the stack's volumes on every node; returns how many are still there."""
    left = 0
    for engine in engines:
        for volume in engine.volumes.list(filters={"label": f"{STACK_LABEL}={stack}"}):
            try:
                volume.remove()
            except docker.errors.APIError:
                left += 1  # still in use by a task container being removed
    return left


def deploy(
    cluster: Cluster,
    load_images: Callable[[Sequence[str]], None],
    source: StackSource,
    *,
    local: docker.DockerClient,
    build: Mapping[str, Path],
    offline: Mapping[str, Path],
    timeout: float,
    progress: Callable[[str], None],
    on_deployed: Callable[[DeployedStack], None] = lambda _stack: None,
    wait: bool = True,
    join_networks_first: bool = True,
    external_files: Mapping[str, Path] | None = None,
    labels: Mapping[str, str] | None = None,
) -> DeployedStack:
    """Render, prepare and load the images, make the external configs and secrets the cluster
    lacks (from ``external_files``, labelled ``labels``), deploy, and (``wait``) wait for
    convergence.

    ``on_deployed`` is told of the stack as soon as it exists on the cluster, so a caller can
    remove it even when convergence then fails.
    """
    model = render(source)
    name = source.name()
    check_ports_free(cluster, name, model, source.env_file)
    externals.ensure(cluster.client, model, external_files or {}, labels or {}, progress)
    plan = images.prepare_stack_images(local, model, build, offline, progress)
    networks = network_join.networks_needing_joins(cluster, name, model) if join_networks_first else []
    if not images.image_exists(local, network_join.IMAGE):
        networks = []  # nothing to join them with (it is the base of every image built here)
    load_images([*plan.refs, network_join.IMAGE] if networks else plan.refs)
    stack = DeployedStack(
        name=name,
        source=source,
        values=source.values(),
        model=model,
        cluster=cluster,
        standins=sorted(plan.standins),
    )
    if networks:
        on_deployed(stack)  # the join services are in the stack: removed with it if what follows fails
        started = time.monotonic()
        stack.network_joins = network_join.join_networks(cluster, name, model, networks, timeout)
        took = time.monotonic() - started
        progress(f"stack {name}: the nodes joined {', '.join(networks)}, one by one, in {took:.1f} s")
    stack.deploy()
    if not networks:
        on_deployed(stack)
    progress(f"stack {stack.name} deployed ({len(stack.declared_services)} services)")
    if wait:
        stack.converge(timeout)
        progress(f"stack {stack.name} converged in {stack.seconds_to_converge:.1f} s")
    return stack
