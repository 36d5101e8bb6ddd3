"""The plugin's options: each one's CLI flag, ini key, ``SWARM_*`` variable, help and default
(``settings.py`` resolves them; ``plugin.py`` registers them with pytest)."""

from __future__ import annotations

from dataclasses import dataclass

from . import envfiles
from .providers.registry import NAMES as PROVIDERS

KEEP_CHOICES = ("never", "on-failure", "always")
# Tried in the project folder, in this order, when --swarm-stacks is not given (compose's own names).
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
DEFAULT_NODE_LABELS = "master-1:reliability=high"
ATTACH_NODE_KEYS = ("address", "engine", "host")
ENGINE_SCHEMES = ("unix://", "tcp://", "ssh://")
# The lesson's machines: GCE, a small machine type, Ubuntu LTS (the lesson's 16.04 is past its
# end of life; 22.04 is the image family docker-machine's Ubuntu provisioner handles today).
DEFAULT_GCE_ZONE = "europe-west1-b"
DEFAULT_GCE_MACHINE_TYPE = "g1-small"
DEFAULT_GCE_IMAGE = (
    "https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
)


@dataclass(frozen=True)
class Option:
    """One setting: its CLI flag, ini key and environment variable derive from ``name``."""

    name: str  # e.g. "workers" -> --swarm-workers, swarm_workers, SWARM_WORKERS
    help: str
    default: str
    ini_type: str = "string"  # "string" or "linelist" (pairs one per line)
    flag: bool = False  # CLI flag without a value

    @property
    def cli(self) -> str:
        return "--swarm-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "swarm_" + self.name

    @property
    def env(self) -> str:
        return "SWARM_" + self.name.upper()

    @property
    def dest(self) -> str:
        return "swarm_" + self.name


OPTIONS: tuple[Option, ...] = (
    Option("env", "environment to deploy: the env file the patterns of swarm_env_files find for NAME", ""),
    Option("env_file", "deploy this env file (its env: --swarm-env, else its name or ENV value)", ""),
    Option(
        "env_files",
        "where env files are: patterns with {env}, tried in order",
        ",".join(envfiles.DEFAULT_PATTERNS),
        "linelist",
    ),
    Option("provider", f"where the nodes come from: {', '.join(PROVIDERS)}", "dind"),
    Option("workers", "number of worker nodes besides the managers", "2"),
    Option(
        "managers", "number of manager nodes, master-1..N (3: a manager may fail without losing quorum)", "1"
    ),
    Option("keep", f"keep the cluster after the run: {', '.join(KEEP_CHOICES)}", "never"),
    Option("reuse", "attach to the cluster kept by an earlier run (--swarm-keep)", "false", flag=True),
    Option(
        "disruptive",
        "run the disruptive suite (a cluster of its own whose nodes it kills) also where that cluster "
        "is costly (uml, machine); dind brings one up in seconds and runs it without this",
        "false",
        flag=True,
    ),
    Option("timeout", "seconds a stack gets to converge", "120"),
    Option(
        "stacks",
        "compose files in deploy order, comma separated (default: the first of "
        + ", ".join(COMPOSE_NAMES)
        + " in the project folder)",
        "",
    ),
    Option(
        "requirements",
        "the requirement profile the stack is held to: lesson, none, or a rules file (YAML); by "
        "default lesson for the lesson's app (a service plays ui, post or comment), none for another",
        "lesson",
    ),
    Option("report", "write a Markdown summary of the run to this file (for a pull request)", ""),
    Option("node_labels", "swarm node labels, NODE:KEY=VALUE", DEFAULT_NODE_LABELS, "linelist"),
    Option("engine_labels", "engine labels, NODE:KEY=VALUE (NODE * = all)", "", "linelist"),
    Option("build", "images built from source, SERVICE=BUILD_CONTEXT", "", "linelist"),
    Option(
        "offline_images",
        "images built only when the rendered image can't be pulled, SERVICE=BUILD_CONTEXT",
        "",
        "linelist",
    ),
    Option(
        "external_files",
        "the files of the configs and secrets the stack declares external, NAME=PATH (made on the "
        "test cluster when it lacks them)",
        "",
        "linelist",
    ),
    Option(
        "side_by_side", "envs deployed beside --swarm-env, comma separated (default: every other env)", ""
    ),
    Option(
        "set",
        "variables set over every env file's, KEY=VALUE, comma separated (POST_REPLICAS=1: a small machine)",
        "",
    ),
    Option(
        "roles",
        "services the profile's roles can't find by name or image, ROLE=SERVICE (e.g. ui=frontend)",
        "",
        "linelist",
    ),
    Option("context", "attach: the docker context whose endpoint is a swarm manager (else DOCKER_HOST)", ""),
    Option(
        "attach_nodes",
        "attach: per-node overrides NODE:address=IP, NODE:engine=unix://|tcp://|ssh://..., "
        "NODE:host=ssh://user@host|docker://... (testinfra)",
        "",
        "linelist",
    ),
    Option("machines", "machine: attach to these existing machines, manager first, comma separated", ""),
    Option("machine_driver", "machine: docker-machine driver of the machines it creates", "google"),
    Option("machine_args", "machine: more docker-machine create flags, space separated", ""),
    Option("gce_project", "machine (google): GCE project (else docker-machine reads GOOGLE_PROJECT)", ""),
    Option("gce_zone", "machine (google): GCE zone", DEFAULT_GCE_ZONE),
    Option("gce_machine_type", "machine (google): GCE machine type", DEFAULT_GCE_MACHINE_TYPE),
    Option("gce_image", "machine (google): GCE machine image", DEFAULT_GCE_IMAGE),
    Option(
        "ssh_hosts",
        "ssh: the hosts, NAME=[USER@]HOST[:PORT] (NAME = its hostname; the first is the manager)",
        "",
        "linelist",
    ),
    Option("ssh_key", "ssh: the private key to log in with (else ssh-agent / the ssh config's)", ""),
    Option("ssh_config", "ssh: an ssh config file used instead of ~/.ssh/config (as ssh -F)", ""),
    Option(
        "ssh_install",
        "ssh: install Debian's docker.io with apt where a host has no engine (and let the user use it)",
        "false",
        flag=True,
    ),
)
OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
