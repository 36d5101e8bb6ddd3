"""pytest-swarm: provision a Docker Swarm, deploy stacks, and acceptance-test what swarm promises.

The fixtures (``swarm``, ``swarm_stack``, ``deploy_stack``, ``swarm_task_exec`` ...) hand a test
the live cluster; these names are what a team's own checks use with them (the suites shipped in
``pytest_swarm.acceptance`` use nothing else).

Example::

    from pytest_swarm import Poll, declared, wait_for

    def test_web_keeps_its_replicas(swarm_stack):
        web = swarm_stack.service("web")
        want = declared.replicas(swarm_stack.declared("web"))
        wait_for(lambda: Poll(web.reload().running == want, f"{web.running}/{want}"),
                 what="web at its replicas", timeout=60)
"""

from __future__ import annotations

from . import compose, declared, disruption, mesh, resilience, rolling
from .capabilities import FEATURES, judged_on
from .cluster import STACK_LABEL, Cluster, Node, Service, Task, seconds
from .commands import run_docker
from .envfiles import shifted_env
from .errors import (
    CommandError,
    ConvergenceTimeout,
    ImageBuildError,
    PortClash,
    ProfileError,
    ProvisioningError,
    StackError,
    SwarmError,
)
from .evidence import show_on_failure, show_text_on_failure
from .images import variant_ref
from .lifecycle import SwarmLifecycle, lifecycle_of
from .placement import NodeFacts, eligible, satisfies
from .providers.base import Provider
from .requirements import Profile, Requirement, load_profile
from .resilience_scenarios import Disruptions
from .rules import Declared
from .settings import Settings
from .stack import DeployedStack, StackSource, load_env, port_clashes, published_ports, render
from .together import (
    EARLY,
    Together,
    early_work_last,
    early_work_so_far,
    remove_all,
    selected_params,
    take_early,
    wait_early,
)
from .waiting import Poll, wait_for

__version__ = "0.1.0"

__all__ = [
    "EARLY",
    "FEATURES",
    "STACK_LABEL",
    "Cluster",
    "CommandError",
    "ConvergenceTimeout",
    "Declared",
    "DeployedStack",
    "Disruptions",
    "ImageBuildError",
    "Node",
    "NodeFacts",
    "Poll",
    "PortClash",
    "Profile",
    "ProfileError",
    "Provider",
    "ProvisioningError",
    "Requirement",
    "Service",
    "Settings",
    "StackError",
    "StackSource",
    "SwarmError",
    "SwarmLifecycle",
    "Task",
    "Together",
    "compose",
    "declared",
    "disruption",
    "early_work_last",
    "early_work_so_far",
    "eligible",
    "judged_on",
    "lifecycle_of",
    "load_env",
    "load_profile",
    "mesh",
    "port_clashes",
    "published_ports",
    "remove_all",
    "render",
    "resilience",
    "rolling",
    "run_docker",
    "satisfies",
    "seconds",
    "selected_params",
    "shifted_env",
    "show_on_failure",
    "show_text_on_failure",
    "take_early",
    "variant_ref",
    "wait_early",
    "wait_for",
]
