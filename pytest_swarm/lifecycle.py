"""One run's swarm: brought up (or reattached) once, stacks deployed once each, then removed or kept.

The session fixtures are thin ``with``-style wrappers around this object; the plugin's terminal
summary reads what it recorded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import pytest

from . import declared
from .cluster import Cluster, Node
from .errors import ConvergenceTimeout, ProvisioningError, StackError, SwarmError
from .images import prepare_stack_images
from .ownership import Session, forget_kept, read_kept, record_stack, run_root, write_kept
from .placement import missing_labels
from .providers.base import Provider, ProviderRun
from .providers.engines import local_engine
from .providers.registry import NAMES, provider_class
from .requirements import Profile, load_profile
from .roles import find_roles
from .runs import RecordedRun, find_run
from .settings import Settings
from .stack import DeployedStack, StackSource, deploy, render
from .timing import Timing

if TYPE_CHECKING:
    from .disruption import IsolatedCluster
    from .resilience import Figure

Progress = Callable[[str], None]
LIFECYCLE = pytest.StashKey["SwarmLifecycle"]()
LESSON_APP_ROLES = ("ui", "post", "comment")  # a stack playing one is the lesson's app


def lifecycle_of(config: pytest.Config) -> SwarmLifecycle:
    """The run's SwarmLifecycle, from a hook or fixture's ``config``.

    Example::

        def pytest_generate_tests(metafunc):
            services = lifecycle_of(metafunc.config).declared_model()["services"]
    """
    return config.stash[LIFECYCLE]


class SwarmLifecycle:
    """Owns the provider, the cluster and the deployed stacks of one pytest run.

    Example (a module of checks that needs a stack of its own, removed after it)::

        @pytest.fixture(scope="module")
        def canary(request):
            run = lifecycle_of(request.config)
            stack = run.deploy(replace(run.source("dev"), stack_name="CANARY"))
            yield stack
            stack.remove()
    """

    def __init__(
        self, settings: Settings, progress: Progress, on_first_use: Callable[[], None] = lambda: None
    ) -> None:
        """``on_first_use`` runs once, before the cluster is first brought up or reattached.

        Raises ProfileError when --swarm-requirements names a rules file that can't be used.
        """
        self.settings = settings
        self._on_first_use = on_first_use
        self._first_used = False
        self._finished = False
        self._profile: Profile | None = load_profile(settings.requirements, settings.rootdir)
        self._profile_judged = False
        self.no_profile_because = "--swarm-requirements=none: the stack is held to no requirement profile"
        self.progress = progress
        self.session = Session.new(settings.rootdir)
        self.provider: Provider | None = None
        self._cluster: Cluster | None = None
        self._error: BaseException | None = None
        self.reused = False
        self.stacks: dict[tuple[str, tuple[Path, ...]], DeployedStack] = {}
        self.summary: list[str] = []
        self.timings: list[Timing] = []  # passed tests that declared waits, in the order they ran
        self.nodes_seen: list[Node] = []  # the cluster's nodes when it came up (for the report)
        self.isolated: list[IsolatedCluster] = []  # clusters of their own (disruption.py), by age
        self.figures: list[Figure] = []  # what the disruptive checks measured (for the report)
        self._local: docker.DockerClient | None = None
        self._model: dict[str, Any] | None = None
        self._early_images: threading.Thread | None = None

    @property
    def local(self) -> docker.DockerClient:
        """The engine images are built on (and, for dind, the nodes run on)."""
        if self._local is None:
            self._local = local_engine()
        return self._local

    def cluster(self) -> Cluster:
        """The cluster, brought up on first use; a failure is remembered, not retried per test."""
        if self._error is not None:
            raise self._error
        if self._cluster is None:
            try:
                self.first_use()
                self._cluster = self._reattach() if self.settings.reuse else None
                if self._cluster is None:
                    self._cluster = self._up()
            except BaseException as exc:
                self._error = exc
                raise
            self._announce(self._cluster)
        return self._cluster

    def first_use(self) -> None:
        """What runs once before the run's first cluster (of any kind) comes up: the plugin
        makes SIGTERM unwind like Ctrl-C. Call it from the main thread."""
        if not self._first_used:
            self._first_used = True
            self._on_first_use()

    @property
    def used(self) -> bool:
        """Whether this run asked for a cluster or rendered a stack."""
        return (
            self._cluster is not None
            or self._error is not None
            or self._model is not None
            or bool(self.isolated)
        )

    @property
    def brought_up(self) -> Cluster | None:
        """The cluster of this run if one was brought up or reattached (still set once removed)."""
        return self._cluster

    def _provider(self, session: Session, preload: Sequence[str] = ()) -> Provider:
        run = ProviderRun(self.settings, session, self.progress, local=lambda: self.local, preload=preload)
        return provider_class(self.settings.provider)(run)

    def _up(self) -> Cluster:
        kind = provider_class(self.settings.provider)
        if not kind.preloads_images:
            self._build_images_early()
        provider = self._provider(self.session, self.images_to_preload() if kind.preloads_images else ())
        self.provider = provider
        self.progress(f"provisioning {self.settings.provider}: master-1 + {self.settings.workers} workers")
        return provider.up()

    def _build_images_early(self) -> None:
        """Build the stack's images while the nodes come up: on a first run the node image and
        the stack's images (each waiting for the same base image) are then built at the same
        time. A daemon thread, so a Ctrl-C does not wait for a build; a failure is left to
        the deploy, which builds again and names the service."""
        if self.settings.env is None:
            return
        try:
            self.declared_model()  # rendered here, not in the thread and again meanwhile
        except SwarmError:
            return  # the stack's tests report it; the cluster's own tests still run

        def build() -> None:
            with contextlib.suppress(Exception):  # the deploy builds again and reports it
                self.images_to_preload()

        self._early_images = threading.Thread(target=build, name="swarm-images", daemon=True)
        self._early_images.start()

    def images_to_preload(self) -> list[str]:
        """Every image the run's stacks need, built before the nodes boot, for a provider that
        ``preloads_images`` (uml bakes them into node disks; attach checks them on the nodes)."""
        if self.settings.env is None:
            return []
        plan = prepare_stack_images(
            self.local,
            self.declared_model(),
            self.settings.build,
            self.settings.offline_images,
            self.progress,
        )
        return sorted(set(plan.refs))

    def _reattach(self) -> Cluster | None:
        record = read_kept(self.settings.rootdir)
        if record is None:
            self.progress("--swarm-reuse: no kept cluster for this project; creating one (it will be kept)")
            return None
        if record.get("provider", "dind") != self.settings.provider:
            self.progress(
                f"--swarm-reuse: the kept cluster is {record.get('provider')}, not {self.settings.provider}; "
                "creating another"
            )
            return None
        session = Session(id=str(record["session"]), owner=self.session.owner, rootdir=self.settings.rootdir)
        provider = self._provider(session)
        try:
            cluster = provider.attach(str(record["nodes"]).split(","))
        except (SwarmError, docker.errors.DockerException) as exc:
            self.progress(f"--swarm-reuse: kept cluster {session.id} is not usable ({exc}); replacing it")
            provider.down()
            forget_kept(session.id, self.settings.rootdir)
            return None
        session.make_run_dir()  # this process owns it now: `down` and `ls` see it in use
        self.session, self.provider, self.reused = session, provider, True
        return cluster

    def _announce(self, cluster: Cluster) -> None:
        verb = "reattached" if self.reused else "ready"
        self.progress(f"cluster {self.session.id} {verb} in {cluster.seconds_to_ready:.1f} s")
        self.nodes_seen = cluster.nodes()
        for node in self.nodes_seen:
            caps = cluster.capabilities.get(node.name, {})
            flags = " ".join(f"{k}={'yes' if v else 'NO'}" for k, v in sorted(caps.items()))
            self.progress(f"  {node.describe()}, {flags}")

    def stack(self, source: StackSource) -> DeployedStack:
        """The stack of ``source``, deployed once per run and given the timeout to converge.

        A stack that does not converge is still handed to the suites (its ``unconverged`` says
        why): the tests of the services that did not come up fail by name, the others run.
        """
        key = (source.env, source.compose_files)
        if key not in self.stacks:
            stack = self.deploy(source, wait=False)
            try:
                stack.converge(self.settings.timeout)
                self.progress(f"stack {stack.name} converged in {stack.seconds_to_converge:.1f} s")
            except ConvergenceTimeout as exc:
                stack.unconverged = str(exc)
                self.progress(f"stack {stack.name} did NOT converge: {exc}")
                self.summary.append(f"{stack.name} did not converge within {self.settings.timeout:g} s")
            self.stacks[key] = stack
        return self.stacks[key]

    def deploy(
        self,
        source: StackSource,
        timeout: float | None = None,
        on_deployed: Callable[[DeployedStack], None] = lambda _stack: None,
        wait: bool = True,
    ) -> DeployedStack:
        """Deploy ``source`` on the cluster (not cached) and, with ``wait``, let it converge."""
        cluster = self.cluster()
        assert self.provider is not None
        record_stack(self.session, source.name())  # before it exists: a killed run's sweep finds it
        return self.deploy_on(cluster, self.provider, source, timeout, on_deployed, wait)

    def deploy_on(
        self,
        cluster: Cluster,
        provider: Provider,
        source: StackSource,
        timeout: float | None = None,
        on_deployed: Callable[[DeployedStack], None] = lambda _stack: None,
        wait: bool = True,
    ) -> DeployedStack:
        """Deploy ``source`` on ``cluster`` (the run's, or one of its own that ``provider``
        brought up) with the run's images and settings."""
        if self._early_images is not None:  # the same builds, not twice at once
            self._early_images.join()
            self._early_images = None
        stack = deploy(
            cluster,
            provider.load_images,
            source,
            local=self.local,
            build=self.settings.build,
            offline=self.settings.offline_images,
            timeout=timeout or self.settings.timeout,
            progress=self.progress,
            on_deployed=on_deployed,
            wait=wait,
            join_networks_first=provider.joins_networks_first,
            external_files=self.settings.external_files,
            labels=self.session.labels,
        )
        for service in stack.standins:
            line = f"{stack.name}: {service} runs a stand-in image ({stack.declared(service).get('image')})"
            if line not in self.summary:
                self.summary.append(line)
        return stack

    def declared_model(self) -> dict[str, Any]:
        """The rendered model of --swarm-env (no cluster needed): for collecting per-service tests."""
        if self._model is None:
            if self.settings.env is None:
                raise StackError("no --swarm-env given: there is no stack to test")
            self._model = render(self.source(self.settings.env))
        return self._model

    def check_labels(self) -> None:
        """Name, before anything is deployed, each constraint on a label that no node of the
        cluster to come carries (the label kinds the provider ``gives_labels``: swarm_node_labels,
        and where its nodes are this run's own, swarm_engine_labels): no task of that service could
        ever start.

        Raises:
            StackError: naming each service, constraint and the ini line that sets the label.
        """
        kinds = list(provider_class(self.settings.provider).gives_labels)
        services = {
            name: (spec.get("deploy") or {}).get("placement", {}).get("constraints") or []
            for name, spec in (self.declared_model().get("services") or {}).items()
        }
        missing = missing_labels(services, self.settings.planned_nodes(), kinds)
        if not missing:
            return
        lines = []
        for service, constraint in missing:
            kind = "node" if constraint.key.lower().startswith("node.") else "engine"
            label = constraint.key.split(".", 2)[2]
            where = "*" if kind == "engine" else "master-1"
            lines.append(
                f"  {service}: {constraint} -> swarm_{kind}_labels = {where}:{label}={constraint.value}"
            )
        raise StackError(
            f"no node of this {self.settings.provider} cluster carries the labels these placement "
            "constraints ask for, so their tasks could never start. The target cluster's nodes carry "
            "them (e.g. docker-machine's google driver sets the engine label provider=google); give "
            "the nodes here the same labels in the ini file (or SWARM_NODE_LABELS / SWARM_ENGINE_LABELS):\n"
            + "\n".join(lines)
        )

    def note_team_files_bound(self) -> None:
        """Say once, before the deploy, which services bind-mount the team's own files (paths
        under the rootdir or a compose file's folder) where the nodes are this run's own: swarm
        starts such a task only on a node that has the path, and these nodes are fresh, so each
        check of the service would otherwise fail on docker's "bind source path does not exist"
        with nothing to say why. On a team's own swarm the nodes may have them: no note there."""
        if not provider_class(self.settings.provider).owns_swarm:
            return
        roots = {self.settings.rootdir, *(f.parent for f in self.settings.stacks)}
        roots = {r.resolve() for r in roots} - {Path("/")}
        for name, spec in sorted((self.declared_model().get("services") or {}).items()):
            ours = [p for p in declared.bind_sources(spec) if any(Path(p).is_relative_to(r) for r in roots)]
            if ours:
                self.note(
                    f"{name} bind-mounts this machine's {', '.join(ours)}: swarm starts its tasks only "
                    f"on nodes that have these paths, and the {self.settings.provider} nodes are new "
                    "(its tasks are rejected: bind source path does not exist). On a swarm of several "
                    "nodes each one that may run it needs them: ship a file as a config or secret, "
                    "data in a named volume, or pin the service to the node that has them"
                )

    def note(self, line: str) -> None:
        """A line for the terminal summary and the report's notes (each said once)."""
        if line not in self.summary:
            self.summary.append(line)

    @property
    def profile(self) -> Profile | None:
        """The requirement profile the stack is held to. By default the lesson's, if the stack is
        the lesson's app (a service plays its ui, post or comment, by name or image); another
        team's app is held to none unless it names one (--swarm-requirements)."""
        if not self._profile_judged:
            self._profile_judged = True
            if self._profile is not None and self.settings.sources.get("requirements") == "default":
                try:
                    roles = find_roles(self.declared_model(), self._profile.roles, self.settings.roles)
                except SwarmError:
                    return self._profile  # the stack's own tests name what is wrong with it
                if not any(roles.get(role) for role in LESSON_APP_ROLES):
                    self._profile = None
                    self.no_profile_because = (
                        "no service plays the lesson's ui, post or comment (by name, image or "
                        "swarm_roles): the lesson's requirement profile is not applied to another "
                        "app; give your own rules with --swarm-requirements=PATH (or =lesson)"
                    )
        return self._profile

    def requirement_titles(self) -> list[tuple[str, str]]:
        """(id, title) of each requirement of the profile (none without one)."""
        return [(r.id, r.title) for r in self.profile.requirements] if self.profile else []

    def roles(self) -> dict[str, list[str]]:
        """role -> services of the --swarm-env stack playing it: by the profile's names (the
        lesson's where the run has no profile) and the ini key swarm_roles."""
        profile = self._profile or load_profile("lesson", self.settings.rootdir)
        assert profile is not None
        return find_roles(self.declared_model(), profile.roles, self.settings.roles)

    def source(self, env: str, compose_files: tuple[Path, ...] | None = None) -> StackSource:
        return StackSource(
            env=env,
            env_file=self.settings.env_file_of(env),
            compose_files=compose_files or self.settings.stacks,
            overrides=tuple(sorted(self.settings.variables.items())),
        )

    def finish(self, failed: bool) -> None:
        """Remove the cluster, or keep it (--swarm-keep, --swarm-reuse) and say how to reach it;
        once (later calls do nothing)."""
        for isolated in list(self.isolated):
            isolated.close()  # the suite that made it closes it first; this is for a run cut short
        if self.provider is None or self._finished:
            return
        self._finished = True
        s = self.settings
        keep = s.keep == "always" or (s.keep == "on-failure" and failed)
        if s.reuse and s.sources.get("keep") == "default":
            keep = True  # reuse means: leave it for the next run, unless told --swarm-keep=never
        if keep and self._cluster is not None:
            record = self.provider.keep()
            write_kept(self.session, s.rootdir, record)
            self.summary.append(
                f"cluster {self.session.id} kept: DOCKER_HOST={record['DOCKER_HOST']} docker node ls; "
                f"reuse it with --swarm-reuse; remove it with: pytest-swarm down {self.session.id}"
            )
            return
        if not self.provider.owns_swarm and self._cluster is not None:
            self._remove_stacks()  # the swarm stays: what this run deployed on it goes
        self.provider.down()
        forget_kept(self.session.id, s.rootdir)
        self.summary.append(f"cluster {self.session.id} removed")

    def _remove_stacks(self) -> None:
        for stack in self.stacks.values():
            try:
                stack.remove()
            except SwarmError as exc:
                self.summary.append(f"stack {stack.name} not removed: {exc}")
            else:
                self.summary.append(f"stack {stack.name} removed from the attached swarm")


def down_kept(rootdir: Path) -> str:
    """Remove the cluster kept for ``rootdir``; returns what was done (also when nothing was kept)."""
    record = read_kept(rootdir)
    if record is None:
        return f"no kept cluster recorded under {rootdir}: nothing to remove (`pytest-swarm ls` lists all)"
    session_id = str(record["session"])
    run = find_run(session_id)
    if run is not None:
        _refuse_if_in_use(run)
    _remove(session_id, str(record.get("provider", "dind")), rootdir)
    return f"cluster {session_id} removed"


def down_run(session_id: str) -> str:
    """Remove the cluster (kept or left behind) of the run recorded as ``session_id``."""
    run = find_run(session_id)
    if run is None:
        raise SwarmError(
            f"no run {session_id!r} is recorded in {run_root()}: `pytest-swarm ls` lists the recorded "
            "runs and kept clusters by id"
        )
    _refuse_if_in_use(run)
    _remove(run.id, run.provider, run.project)
    return f"cluster {run.id} removed ({run.provider}{', was kept' if run.kept else ''})"


def _refuse_if_in_use(run: RecordedRun) -> None:
    if run.owner_alive:
        raise SwarmError(
            f"run {run.id} belongs to pytest process {run.owner_pid}, which is still running: end that "
            "run (Ctrl-C; it removes its cluster unless told to keep it), then try again"
        )


def _remove(session_id: str, provider: str, rootdir: Path | None) -> None:
    """Remove what the run recorded as ``session_id`` made, by its provider's record, and forget it."""
    problems = provider_class(provider).remove_session(session_id, local_engine)
    forget_kept(session_id, rootdir)
    if problems:
        raise ProvisioningError(
            f"cluster {session_id} removed only in part: {'; '.join(problems)}; once that is fixed, "
            "`pytest-swarm sweep` removes the rest"
        )


def sweep_leftovers(progress: Progress) -> list[str]:
    """Remove what earlier runs on this machine left: runs whose pytest process is gone and whose
    cluster was not kept (dind containers, UML kernels and links, machines they created), each by
    its run's own record. Returns the sessions swept."""
    swept: list[str] = []
    for name in NAMES:
        swept += provider_class(name).sweep(progress, local_engine)
    return swept
