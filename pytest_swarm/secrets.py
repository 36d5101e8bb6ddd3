"""Secret masking: values of variables whose names look secret never reach what the plugin prints
or writes (progress lines, summary, evidence, the Markdown report, JUnit properties).

The values come from the env files of the stacks deployed and from the process environment;
only names are judged, so a password in ``MONGO_PASSWORD`` is masked wherever it shows up, e.g.
echoed in a service's log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MASK = "***"
# PASSWORD, PASSWD, PASSPHRASE, TOKEN, SECRET, KEY (API_KEY, SSH_KEY, ...), CREDENTIAL(S)
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|TOKEN|SECRET|KEY|CREDENTIAL", re.IGNORECASE)
# Shorter values are left alone: masking "1" or "yes" would mangle every line, and a secret that
# short protects nothing anyway.
MIN_LENGTH = 4


def looks_secret(name: str) -> bool:
    """True when a variable named ``name`` likely holds a secret."""
    return SECRET_NAME.search(name) is not None


def secret_values(env: Mapping[str, str | None]) -> set[str]:
    """The values of ``env`` (an env file's variables, os.environ) that have secret-looking names."""
    return {
        value
        for name, value in env.items()
        if value is not None and len(value.strip()) >= MIN_LENGTH and looks_secret(name)
    }


def mask(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each value replaced by ``***`` (longest values first, so
    a value containing another is masked whole)."""
    for value in sorted(set(values), key=len, reverse=True):
        if len(value) >= MIN_LENGTH:
            text = text.replace(value, MASK)
            stripped = value.strip()
            if stripped != value and len(stripped) >= MIN_LENGTH:
                text = text.replace(stripped, MASK)
    return text


class Masker:
    """The run's secret values, growing as env files are read; calling it masks a text."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values: set[str] = set(values)

    def add(self, env: Mapping[str, str | None]) -> None:
        """Remember the secret values of ``env``."""
        self.values |= secret_values(env)

    def __call__(self, text: str) -> str:
        return mask(text, self.values) if self.values else text
