"""Settings: every option resolved once, CLI > SWARM_* environment > ini > default.

The resolution is a pure function of three mappings so it can be unit-tested without pytest;
plugin.py gathers the mappings and keeps the frozen result in ``config.stash``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compose, envfiles
from .errors import StackError
from .options import (
    ATTACH_NODE_KEYS,
    COMPOSE_NAMES,
    DEFAULT_GCE_IMAGE,
    DEFAULT_GCE_MACHINE_TYPE,
    DEFAULT_GCE_ZONE,
    ENGINE_SCHEMES,
    KEEP_CHOICES,
    OPTIONS,
    OPTIONS_BY_NAME,
)
from .placement import NodeFacts
from .providers.registry import NAMES as PROVIDERS


class SettingsError(ValueError):
    """A bad option value; plugin.py turns it into ``pytest.UsageError``."""


Labels = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class SshTarget:
    """One host as ``swarm_ssh_hosts`` names it: ``NAME=[USER@]HOST[:PORT]``."""

    name: str
    host: str
    user: str = ""  # "" = what the ssh config says (else the local user name)
    port: int = 22

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one pytest run."""

    rootdir: Path
    env: str | None = None
    env_file: Path | None = None  # the file of ``env``
    envs: Mapping[str, Path] = field(default_factory=dict)  # every env found: name -> file
    provider: str = "dind"
    workers: int = 2
    managers: int = 1
    keep: str = "never"
    reuse: bool = False
    disruptive: bool = False  # --swarm-disruptive: a cluster of its own for it on any provider
    timeout: float = 120.0
    stacks: tuple[Path, ...] = ()
    requirements: str = "lesson"  # lesson, none, or the path of a rules file
    report: Path | None = None  # --swarm-report: the Markdown summary
    node_labels: Labels = field(default_factory=dict)
    engine_labels: Labels = field(default_factory=dict)
    build: Mapping[str, Path] = field(default_factory=dict)
    offline_images: Mapping[str, Path] = field(default_factory=dict)
    external_files: Mapping[str, Path] = field(default_factory=dict)  # external config/secret -> file
    side_by_side: tuple[str, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)  # --swarm-set: over every env file's
    roles: Mapping[str, str] = field(default_factory=dict)  # role -> service, where given
    context: str = ""
    attach_nodes: Labels = field(default_factory=dict)  # node -> address/engine/host
    machines: tuple[str, ...] = ()
    machine_driver: str = "google"
    machine_args: tuple[str, ...] = ()
    gce_project: str = ""
    gce_zone: str = DEFAULT_GCE_ZONE
    gce_machine_type: str = DEFAULT_GCE_MACHINE_TYPE
    gce_image: str = DEFAULT_GCE_IMAGE
    ssh_hosts: tuple[SshTarget, ...] = ()
    ssh_key: Path | None = None
    ssh_config: Path | None = None
    ssh_install: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)  # option -> cli|env|ini|default

    def envs_found(self) -> str:
        """The envs the env-file patterns found, for messages: ``dev (envs/dev.env), ...``."""
        return envfiles.describe(self.envs, self.rootdir)

    def env_file_of(self, env: str) -> Path:
        """The file of ``env``: --swarm-env's own, or one the patterns found."""
        if env == self.env and self.env_file is not None:
            return self.env_file
        if env in self.envs:
            return self.envs[env]
        raise StackError(f"no env file for {env!r}; envs found: {envfiles.describe(self.envs, self.rootdir)}")

    @property
    def manager_names(self) -> tuple[str, ...]:
        if self.provider == "ssh" and self.ssh_hosts:  # the first host named is the manager
            return (self.ssh_hosts[0].name,)
        return tuple(f"master-{i}" for i in range(1, self.managers + 1))

    @property
    def node_names(self) -> tuple[str, ...]:
        if self.provider == "ssh" and self.ssh_hosts:  # the hosts named, manager first
            return tuple(target.name for target in self.ssh_hosts)
        return (*self.manager_names, *(f"worker-{i}" for i in range(1, self.workers + 1)))

    def planned_nodes(self) -> list[NodeFacts]:
        """The nodes of the cluster the stack is meant for, as configured (names, roles, labels):
        what placement rules are judged on before any node exists."""
        return [
            NodeFacts(
                id=name,
                hostname=name,
                role="manager" if name in self.manager_names else "worker",
                labels=self.labels_for(name, self.node_labels),
                engine_labels=self.labels_for(name, self.engine_labels),
            )
            for name in self.node_names
        ]

    def labels_for(self, node: str, labels: Labels) -> dict[str, str]:
        """Labels of ``node``: those given for ``*`` first, then the node's own."""
        return {**labels.get("*", {}), **labels.get(node, {})}

    def describe(self) -> str:
        """One line for the report header."""
        stacks = ",".join(_short(p, self.rootdir) for p in self.stacks)
        return (
            f"swarm: provider={self.provider} env={self.env or '-'} "
            + (f"managers={self.managers} " if self.managers != 1 else "")
            + f"workers={self.workers} "
            f"keep={self.keep} reuse={'yes' if self.reuse else 'no'} timeout={self.timeout:g}s "
            f"stacks={stacks}"
            + (" disruptive=on" if self.disruptive else "")
            + "".join(f" set {key}={value}" for key, value in sorted(self.variables.items()))
        )


def _short(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def resolve(
    cli: Mapping[str, Any],
    environ: Mapping[str, str],
    ini: Mapping[str, Any],
    rootdir: Path,
) -> Settings:
    """Resolve the settings. ``cli`` and ``ini`` are keyed by option name; unset is None/''/[].

    Raises:
        SettingsError: a value is invalid; the message names the valid ones.
    """
    raw: dict[str, str | list[str]] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        for source, value in (
            ("cli", cli.get(opt.name)),
            ("env", environ.get(opt.env)),
            ("ini", ini.get(opt.name)),
            ("default", opt.default),
        ):
            if value not in (None, "", []):
                raw[opt.name] = value
                sources[opt.name] = source
                break
        else:
            raw[opt.name] = ""
            sources[opt.name] = "default"

    def text(name: str) -> str:
        value = raw[name]
        return " ".join(value) if isinstance(value, list) else str(value).strip()

    def items(name: str) -> list[str]:
        value = raw[name]
        parts = value if isinstance(value, list) else str(value).replace(",", " ").split()
        return [p.strip() for p in parts if p.strip()]

    def path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else rootdir / p

    provider = _choice("provider", text("provider"), PROVIDERS)
    ssh_hosts = parse_ssh_hosts(items("ssh_hosts"))
    workers = _integer("workers", text("workers"), minimum=0)
    if provider == "ssh":
        workers = _ssh_workers(ssh_hosts, workers, sources["workers"])
    stacks = tuple(path(p) for p in items("stacks")) or _default_stacks(rootdir)
    patterns = tuple(_env_pattern(p) for p in items("env_files"))
    envs = envfiles.find_envs(rootdir, patterns, exclude=compose.referenced_env_files(stacks))
    env, env_file = _env(text("env") or None, text("env_file"), envs, patterns, rootdir, path)
    if env is not None:
        _check_stacks(stacks, rootdir)

    return Settings(
        rootdir=rootdir,
        env=env,
        env_file=env_file,
        envs=envs,
        provider=provider,
        workers=workers,
        managers=_integer("managers", text("managers"), minimum=1),
        keep=_choice("keep", text("keep"), KEEP_CHOICES),
        reuse=_boolean("reuse", text("reuse")),
        disruptive=_boolean("disruptive", text("disruptive")),
        timeout=_number("timeout", text("timeout")),
        stacks=stacks,
        requirements=text("requirements"),
        report=_report_path(text("report"), path),
        node_labels=parse_node_labels("node_labels", items("node_labels")),
        engine_labels=parse_node_labels("engine_labels", items("engine_labels")),
        build=_service_paths("build", items("build"), path),
        offline_images=_service_paths("offline_images", items("offline_images"), path),
        external_files=_service_paths("external_files", items("external_files"), path),
        side_by_side=_side_by_side(items("side_by_side"), env, envs, rootdir),
        variables=_variables(items("set")),
        roles=_pairs("roles", items("roles")),
        context=text("context"),
        attach_nodes=parse_attach_nodes(items("attach_nodes")),
        machines=_machine_names(items("machines")),
        machine_driver=text("machine_driver"),
        machine_args=tuple(shlex.split(text("machine_args"))),
        gce_project=text("gce_project"),
        gce_zone=text("gce_zone"),
        gce_machine_type=text("gce_machine_type"),
        gce_image=text("gce_image"),
        ssh_hosts=ssh_hosts,
        ssh_key=_existing_file("ssh_key", text("ssh_key"), path),
        ssh_config=_existing_file("ssh_config", text("ssh_config"), path),
        ssh_install=_boolean("ssh_install", text("ssh_install")),
        sources=sources,
    )


def _report_path(value: str, path: Callable[[str], Path]) -> Path | None:
    if not value:
        return None
    report = path(value)
    if report.is_dir():
        raise SettingsError(f"--swarm-report={value}: {report} is a folder; give a file, e.g. report.md")
    return report


def _default_stacks(rootdir: Path) -> tuple[Path, ...]:
    for name in COMPOSE_NAMES:
        if (rootdir / name).is_file():
            return (rootdir / name,)
    return ()


def _check_stacks(stacks: Sequence[Path], rootdir: Path) -> None:
    if not stacks:
        seen = sorted(p.name for p in rootdir.glob("*.y*ml") if "compose" in p.name)
        hint = f" (compose-like files here: {', '.join(seen)})" if seen else ""
        raise SettingsError(
            f"no compose file: none of {', '.join(COMPOSE_NAMES)} is in {rootdir}{hint}; "
            "give them with --swarm-stacks=a.yml,b.yml (in deploy order) or the ini key swarm_stacks"
        )
    missing = [str(p) for p in stacks if not p.is_file()]
    if missing:
        raise SettingsError(
            f"--swarm-stacks: compose file not found: {', '.join(missing)} "
            "(give existing files, comma separated, in deploy order)"
        )


def _env_pattern(pattern: str) -> str:
    try:
        return envfiles.check_pattern(pattern)
    except ValueError as exc:
        raise SettingsError(f"swarm_env_files: {exc}") from exc


def _env(
    env: str | None,
    env_file: str,
    envs: Mapping[str, Path],
    patterns: Sequence[str],
    rootdir: Path,
    path: Callable[[str], Path],
) -> tuple[str | None, Path | None]:
    """The env to deploy and its file, from --swarm-env and --swarm-env-file."""
    if env_file:
        file = path(env_file)
        if not file.is_file():
            raise SettingsError(f"--swarm-env-file={env_file}: no such file ({file})")
        if env is None:
            from dotenv import dotenv_values  # reads ENV the way the deploy will

            values = {k: v or "" for k, v in dotenv_values(file).items()}
            env = envfiles.env_of_file(file, rootdir, patterns, values)
        return env.lower(), file
    if env is None:
        return None, None
    if env.lower() not in envs:
        raise SettingsError(
            f"--swarm-env={env}: no env file for it; envs found: {envfiles.describe(envs, rootdir)} "
            f"(looked for {', '.join(p.replace('{env}', env) for p in patterns)} in {rootdir}; "
            "give the file with --swarm-env-file PATH, or its name pattern with the ini key swarm_env_files)"
        )
    return env.lower(), envs[env.lower()]


def _side_by_side(
    named: Sequence[str], env: str | None, envs: Mapping[str, Path], rootdir: Path
) -> tuple[str, ...]:
    unknown = [e for e in named if e.lower() not in envs]
    if unknown:
        raise SettingsError(
            f"--swarm-side-by-side: no env file for {', '.join(unknown)}; "
            f"envs found: {envfiles.describe(envs, rootdir)}"
        )
    return tuple(e for e in ([n.lower() for n in named] or sorted(envs)) if e != env)


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise SettingsError(
            f"{OPTIONS_BY_NAME[name].cli}={value!r} is not valid; choose one of: {', '.join(choices)}"
        )
    return value


def _integer(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise SettingsError(
            f"{OPTIONS_BY_NAME[name].cli}={value!r} is not valid; give a whole number >= {minimum}"
        )
    return number


def _number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise SettingsError(
            f"{OPTIONS_BY_NAME[name].cli}={value!r} is not valid; give a number of seconds > 0"
        )
    return number


def _boolean(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{OPTIONS_BY_NAME[name].ini}={value!r} is not valid; use true or false")


def parse_node_labels(name: str, entries: Sequence[str]) -> dict[str, dict[str, str]]:
    """``master-1:reliability=high`` entries -> {"master-1": {"reliability": "high"}}."""
    labels: dict[str, dict[str, str]] = {}
    for entry in entries:
        node, sep, pair = entry.partition(":")
        key, eq, value = pair.partition("=")
        if not (sep and eq and node and key):
            raise SettingsError(
                f"{OPTIONS_BY_NAME[name].ini}: {entry!r} is not valid; "
                "write NODE:KEY=VALUE, e.g. master-1:reliability=high"
            )
        labels.setdefault(node, {})[key] = value
    return labels


def parse_attach_nodes(entries: Sequence[str]) -> dict[str, dict[str, str]]:
    """``worker-1:engine=unix:///s.sock`` entries -> {"worker-1": {"engine": "unix:///s.sock"}}."""
    nodes = parse_node_labels("attach_nodes", entries)
    for node, given in nodes.items():
        for key, value in given.items():
            if key not in ATTACH_NODE_KEYS:
                raise SettingsError(
                    f"swarm_attach_nodes: {node}:{key}= is not valid; the keys are "
                    f"{', '.join(ATTACH_NODE_KEYS)} (e.g. {node}:engine=unix:///run/docker.sock)"
                )
            if key == "engine" and not value.startswith(ENGINE_SCHEMES):
                raise SettingsError(
                    f"swarm_attach_nodes: {node}:engine={value!r} is not valid; give a URL starting "
                    f"with {', '.join(ENGINE_SCHEMES)}"
                )
            if key == "host" and "://" not in value:
                raise SettingsError(
                    f"swarm_attach_nodes: {node}:host={value!r} is not valid; give a testinfra host "
                    "URL such as ssh://user@host or docker://container"
                )
            if not value:
                raise SettingsError(f"swarm_attach_nodes: {node}:{key}= needs a value")
    return nodes


def _machine_names(names: Sequence[str]) -> tuple[str, ...]:
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", n)]
    if bad:
        raise SettingsError(
            f"--swarm-machines: {', '.join(bad)} is not a docker-machine name; give names like "
            "master-1,worker-1,worker-2 (the first one is the manager)"
        )
    if len(set(names)) != len(names):
        raise SettingsError(f"--swarm-machines: a machine is named twice in {','.join(names)}")
    return tuple(names)


def parse_ssh_hosts(entries: Sequence[str]) -> tuple[SshTarget, ...]:
    """``master-1=root@10.0.0.5:2222`` entries -> SshTarget, in the order given (manager first)."""
    form = "write NAME=[USER@]HOST[:PORT], e.g. master-1=root@10.0.0.5 or worker-1=deploy@node2:2222"
    targets: list[SshTarget] = []
    for entry in entries:
        name, eq, where = entry.partition("=")
        user, at, host_port = where.rpartition("@")
        host, colon, port = host_port.partition(":")
        if not (
            eq
            and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", name)
            and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", host)
            and (not at or re.fullmatch(r"[A-Za-z0-9._][A-Za-z0-9._-]*", user))
            and (not colon or (port.isdigit() and 0 < int(port) < 65536))
        ):
            raise SettingsError(f"swarm_ssh_hosts: {entry!r} is not valid; {form}")
        targets.append(SshTarget(name=name, host=host, user=user, port=int(port) if colon else 22))
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingsError(f"swarm_ssh_hosts: {', '.join(twice)} named twice; give each host its own name")
    return tuple(targets)


def _ssh_workers(hosts: Sequence[SshTarget], workers: int, source: str) -> int:
    """The ssh provider's workers are its hosts after the first; --swarm-workers may only agree."""
    if not hosts:
        raise SettingsError(
            "--swarm-provider=ssh needs the hosts: give swarm_ssh_hosts in the ini file (or "
            "SWARM_SSH_HOSTS), one NAME=[USER@]HOST[:PORT] per line, the manager first"
        )
    if source != "default" and workers != len(hosts) - 1:
        raise SettingsError(
            f"--swarm-workers={workers} does not match swarm_ssh_hosts ({len(hosts)} hosts: the "
            f"manager and {len(hosts) - 1} workers); leave --swarm-workers out with --swarm-provider=ssh"
        )
    return len(hosts) - 1


def _existing_file(name: str, value: str, path: Callable[[str], Path]) -> Path | None:
    if not value:
        return None
    found = path(value)
    if not found.is_file():
        raise SettingsError(f"{OPTIONS_BY_NAME[name].cli}={value}: no such file ({found})")
    return found


def _variables(entries: Sequence[str]) -> dict[str, str]:
    pairs = _pairs("set", entries)
    bad = [key for key in pairs if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)]
    if bad:
        raise SettingsError(f"--swarm-set: {', '.join(bad)} is not a variable name (letters, digits, _)")
    return pairs


def _pairs(name: str, entries: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` entries; a malformed one names the option and the form it takes."""
    form = {
        "roles": "ROLE=SERVICE, e.g. ui=frontend",
        "set": "KEY=VALUE, e.g. POST_REPLICAS=1",
        "external_files": "NAME=PATH, e.g. site.key=tests/site.key",
    }.get(name, "SERVICE=BUILD_CONTEXT, e.g. ui=stacks/images/ui")
    result: dict[str, str] = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        if not (eq and key and value):
            raise SettingsError(f"{OPTIONS_BY_NAME[name].ini}: {entry!r} is not valid; write {form}")
        result[key] = value
    return result


def _service_paths(name: str, entries: Sequence[str], path: Callable[[str], Path]) -> dict[str, Path]:
    return {service: path(context) for service, context in _pairs(name, entries).items()}
