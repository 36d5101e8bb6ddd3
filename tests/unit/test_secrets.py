"""Secret masking: which names look secret, which values are masked, and how."""

from __future__ import annotations

import pytest

from pytest_swarm.secrets import MASK, Masker, looks_secret, mask, secret_values


@pytest.mark.parametrize(
    "name",
    [
        "MONGO_PASSWORD",
        "db_password",
        "SMTP_PASSWD",
        "GITHUB_TOKEN",
        "app_secret",
        "API_KEY",
        "SSH_PRIVATE_KEY",
        "GCP_CREDENTIALS",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "Registry_Credential",
        "GPG_PASSPHRASE",
    ],
)
def test_secret_looking_names(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["ENV", "UI_PORT", "USER_NAME", "MONGO_VERSION", "PATH", "HOME"])
def test_ordinary_names(name: str) -> None:
    assert not looks_secret(name)


def test_secret_values_takes_only_secret_names_and_skips_short_or_empty_values() -> None:
    env = {
        "ENV": "DEV",
        "UI_PORT": "9292",
        "MONGO_PASSWORD": "s3cr3t-pass",
        "API_TOKEN": "abc",  # too short to mask without mangling text
        "EMPTY_SECRET": "",
        "UNSET_KEY": None,
    }
    assert secret_values(env) == {"s3cr3t-pass"}


def test_mask_replaces_every_occurrence() -> None:
    text = "login with s3cr3t-pass\nmongo: auth s3cr3t-pass failed"
    assert mask(text, {"s3cr3t-pass"}) == f"login with {MASK}\nmongo: auth {MASK} failed"


def test_mask_takes_the_longest_value_first() -> None:
    """A value that contains another is masked whole, not left with a tail showing."""
    assert mask("token=abcd1234wxyz", {"abcd", "abcd1234wxyz"}) == f"token={MASK}"


def test_mask_leaves_text_without_secrets_alone() -> None:
    assert mask("DEV converged in 3.1 s", {"s3cr3t-pass"}) == "DEV converged in 3.1 s"


def test_mask_also_hides_a_value_without_its_surrounding_spaces() -> None:
    assert mask("password is hunter22", {" hunter22 "}) == f"password is {MASK}"


def test_masker_grows_with_each_env() -> None:
    masker = Masker()
    assert masker("pw1-secret and tok2-secret") == "pw1-secret and tok2-secret"
    masker.add({"DB_PASSWORD": "pw1-secret"})
    masker.add({"CI_TOKEN": "tok2-secret", "ENV": "DEV"})
    assert masker("pw1-secret and tok2-secret in DEV") == f"{MASK} and {MASK} in DEV"
