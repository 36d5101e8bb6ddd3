"""The EXTRA env: a copy of the main env file on other published ports."""

from __future__ import annotations

from pathlib import Path

from pytest_swarm.envfiles import shifted_env
from pytest_swarm.stack import load_env


def test_the_ports_the_stack_publishes_move_whatever_their_names_and_quotes(tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  ui: {image: u, ports: ['${UI_PORT}:9292', {target: 80, published: '${WEB_PUBLISHED:-80}'}]}\n"
        "  post: {image: p, environment: {POST_PORT: '${POST_PORT}'}}\n"
    )
    env = tmp_path / ".env_DEV"
    env.write_text('ENV=DEV\nUI_PORT="9292"\nWEB_PUBLISHED = 8080\nPOST_PORT=5000\nNOTE=it\'s "$5"\n')
    copy = shifted_env(env, tmp_path, "EXTRA", 100, [compose])
    assert load_env(copy) == {
        "ENV": "EXTRA",
        "UI_PORT": "9392",
        "WEB_PUBLISHED": "8180",
        "POST_PORT": "5000",  # the container's own port: not published, not moved
        "NOTE": 'it\'s "$5"',
    }
