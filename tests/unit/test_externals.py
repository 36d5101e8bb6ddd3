"""Which configs and secrets a rendered stack declares external, and who uses them."""

from pytest_swarm import externals


def test_external_configs_and_secrets_with_their_users() -> None:
    model = {
        "services": {
            "web": {"secrets": [{"source": "site_key", "target": "site.key"}], "configs": ["nginx"]},
            "api": {"secrets": ["site_key", "db_password"]},
            "db": {},
        },
        "secrets": {
            "site_key": {"external": True, "name": "staging.site.key.6"},
            "db_password": {"file": "./db_password.txt"},  # made by the stack itself
        },
        "configs": {"nginx": {"external": {"name": "nginx.conf.2"}}, "unused": {"external": True}},
    }
    assert externals.declared(model) == {
        ("secrets", "staging.site.key.6"): ["api", "web"],
        ("configs", "nginx.conf.2"): ["web"],
        ("configs", "unused"): [],
    }
