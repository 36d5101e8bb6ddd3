"""Docker engine clients every provider makes: the local engine, a node's engine by URL (unix,
ssh, or TCP with TLS), and the endpoint DOCKER_HOST or a docker context names.

Shared by the providers (none of them imports another); nothing here brings up a node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import docker
import docker.context
import docker.errors
import docker.tls
import docker.utils
import docker.utils.config
import requests

from ..errors import EngineUnreachable, ProvisioningError

# What an engine throws while it is still starting or restarting.
TRANSIENT = (docker.errors.APIError, requests.exceptions.ConnectionError, ConnectionError, OSError)
# Engine 20.10's API: the oldest this project supports (service status needs it); newer engines
# still speak it. Fixing it lets a client be made before its engine answers.
API_VERSION = "1.41"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def engine_client(
    url: str, tls: docker.tls.TLSConfig | None = None, timeout: int = 120
) -> docker.DockerClient:
    """A client of the engine at ``url`` (unix://, ssh://, or tcp:// with ``tls``); asks nothing yet."""
    if tls is None:
        return docker.DockerClient(base_url=url, version=API_VERSION, timeout=timeout)
    return docker.DockerClient(base_url=url, version=API_VERSION, timeout=timeout, tls=tls)


def local_engine() -> docker.DockerClient:
    """The engine of this machine (DOCKER_HOST or the default socket): images are built there,
    dind nodes run there.

    Raises:
        EngineUnreachable: no engine answers; says how to start one.
    """
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, *TRANSIENT) as exc:
        raise EngineUnreachable(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST', DEFAULT_SOCKET)} "
            f"({type(exc).__name__}); start dockerd (e.g. apt-get install docker.io && dockerd &) "
            "or set DOCKER_HOST"
        ) from exc
    return client


@dataclass(frozen=True)
class Endpoint:
    """Where an engine's API answers, and how to talk to it."""

    url: str
    tls: docker.tls.TLSConfig | None
    source: str  # "DOCKER_HOST", "context NAME", "the default socket"
    cert_path: str = ""  # the folder of the TLS files, for docker CLI calls


def endpoint_of(context: str, environ: Mapping[str, str]) -> Endpoint:
    """The endpoint ``context`` (or DOCKER_CONTEXT) names when given, else DOCKER_HOST's."""
    context = context or environ.get("DOCKER_CONTEXT", "")
    if context and context != "default":
        return context_endpoint(context)
    host = environ.get("DOCKER_HOST", "")
    if not host:
        return Endpoint(DEFAULT_SOCKET, None, "the default socket (no DOCKER_HOST)")
    if host.startswith("https://"):  # an https URL asks for TLS by itself
        environ = {**environ, "DOCKER_TLS_VERIFY": environ.get("DOCKER_TLS_VERIFY") or "1"}
    tls = env_tls(environ)
    # the docker CLI (stack deploy) takes tcp:// only; the SDK client both
    return Endpoint(host.replace("https://", "tcp://", 1), tls, "DOCKER_HOST", cert_folder(tls))


def env_tls(environ: Mapping[str, str]) -> docker.tls.TLSConfig | None:
    """The client TLS DOCKER_TLS_VERIFY and DOCKER_CERT_PATH ask for, read as the docker SDK (and
    the docker CLI) reads them: any DOCKER_TLS_VERIFY but "" verifies; DOCKER_CERT_PATH alone
    gives the client certificate without verifying; the folder defaults to ~/.docker.

    Raises:
        ProvisioningError: TLS is asked for but its files are missing; says which and what to set.
    """
    if not environ:
        return None  # kwargs_from_env reads os.environ when handed an empty mapping
    try:
        tls: docker.tls.TLSConfig | None = docker.utils.kwargs_from_env(environment=environ).get("tls")
    except docker.errors.TLSParameterError as exc:
        folder = environ.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
        files = [os.path.join(folder, name) for name in ("ca.pem", "cert.pem", "key.pem")]
        missing = [path for path in files if not os.path.isfile(path)]
        raise ProvisioningError(
            f"TLS is asked for (DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) but "
            f"{', '.join(missing) + ' is missing' if missing else exc}; set DOCKER_CERT_PATH to the "
            "folder holding ca.pem, cert.pem and key.pem (docker-machine env prints it)"
        ) from exc
    return tls


def cert_folder(tls: docker.tls.TLSConfig | None) -> str:
    """The folder of the client certificate, for docker CLI calls (DOCKER_CERT_PATH); "" without."""
    return os.path.dirname(tls.cert[0]) if tls is not None and tls.cert else ""


def context_endpoint(name: str) -> Endpoint:
    """The docker endpoint and TLS of the docker context ``name``, as the docker SDK reads them
    from this process's docker config folder (DOCKER_CONFIG, else ~/.docker).

    Raises:
        ProvisioningError: no such context, an unreadable one, or one with no docker endpoint.
    """
    try:
        found = docker.context.ContextAPI.get_context(name)
    except Exception as exc:  # the SDK raises a bare Exception for a corrupted meta.json
        raise ProvisioningError(
            f"--swarm-context={name}: its record can't be read ({exc}); check it with "
            f"`docker context inspect {name}`, or recreate it"
        ) from exc
    if found is None:
        folder = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
        # docker-py finds contexts only beside a config.json (docker/docker-py#2622); the CLI
        # needs none, so a context the CLI lists can be missing here
        hint = (
            f" (the docker SDK looks for contexts only where a config.json is: create "
            f"{os.path.join(folder, 'config.json')} holding {{}} if `docker context ls` shows it)"
            if docker.utils.config.find_config_file() is None
            else ""
        )
        raise ProvisioningError(
            f"--swarm-context={name}: no such context in {folder}{hint}; list the contexts with "
            "`docker context ls`, or set DOCKER_HOST instead"
        )
    url = str(found.endpoints.get("docker", {}).get("Host") or "")
    if not url:
        raise ProvisioningError(
            f"--swarm-context={name}: the context has no docker endpoint; give it one "
            f"(`docker context update {name} --docker host=...`) or set DOCKER_HOST instead"
        )
    tls: docker.tls.TLSConfig | None = found.tls_cfg.get("docker")
    material = os.path.join(found.tls_path, "docker")
    if tls is None and os.path.isdir(material):  # the SDK drops TLS files short of all three
        raise ProvisioningError(
            f"--swarm-context={name}: its TLS files in {material} are incomplete (the docker SDK "
            "needs ca.pem, cert.pem and key.pem there); recreate the context with ca=, cert= and key="
        )
    return Endpoint(url, tls, f"context {name}", cert_folder(tls))
