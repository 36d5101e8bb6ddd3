"""One error family: every message says what went wrong and what to do next."""

from __future__ import annotations


class SwarmError(Exception):
    """Base of every error pytest-swarm raises on purpose."""


class EngineUnreachable(SwarmError):
    """The local Docker engine (or a node's engine) does not answer."""


class ProvisioningError(SwarmError):
    """A node or the swarm could not be brought up."""


class ImageBuildError(SwarmError):
    """An image the cluster needs could not be built or loaded."""


class StackError(SwarmError):
    """A stack could not be rendered, validated or deployed."""


class PortClash(StackError):
    """A stack publishes a host port another stack on the cluster already publishes."""


class ConvergenceTimeout(SwarmError):
    """The cluster did not reach the awaited state before its deadline."""


class CommandError(SwarmError):
    """An external command failed; carries its stderr."""


class ProfileError(SwarmError):
    """A requirement profile (rules file) that can't be used: the message names the file and line."""
