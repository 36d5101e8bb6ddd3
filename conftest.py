"""Root conftest: pytester for the plugin's own tests (tests/plugin). Nothing else."""

pytest_plugins = ["pytester"]
