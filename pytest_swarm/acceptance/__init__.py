"""The acceptance suites: run them with ``pytest --swarm-env=dev --pyargs pytest_swarm.acceptance``."""
