"""pytest-swarm: provision a Docker Swarm, deploy stacks, and acceptance-test what swarm promises."""

from __future__ import annotations

__version__ = "0.1.0"
