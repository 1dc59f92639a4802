"""KeyRing: keys by reference, digests only, 401 messages without the key, model patterns."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from gateway.errors import Unauthorized
from gateway.keys import ANONYMOUS, KeyRing, Principal
from serving.errors import ManifestError
from serving.manifest import ApiKey, Auth

SECRET_ENV = "sk-env-7f3a9c"
SECRET_FILE = "sk-file-51be02"
SECRET_HASHED = "sk-hashed-c0ffee"


def ring(tmp_path: Path) -> KeyRing:
    key_file = tmp_path / "bob.key"
    key_file.write_text(SECRET_FILE + "\n")
    key_file.chmod(0o600)
    auth = Auth(
        keys=(
            ApiKey(name="alice", key_env="QG_ALICE", models=("*",), requests_per_minute=5),
            ApiKey(name="bob", key_file=key_file, models=("tiny:gptq",)),
            ApiKey(
                name="carol",
                key_sha256=hashlib.sha256(SECRET_HASHED.encode()).hexdigest(),
                models=("tiny",),
            ),
        )
    )
    return KeyRing.from_auth(auth, environ={"QG_ALICE": SECRET_ENV})


def test_each_reference_kind_authenticates(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    assert keys.authenticate(f"Bearer {SECRET_ENV}").name == "alice"
    assert keys.authenticate(f"bearer  {SECRET_FILE} ").name == "bob"
    assert keys.authenticate(f"Bearer {SECRET_HASHED}").name == "carol"
    assert keys.authenticate(f"Bearer {SECRET_ENV}").requests_per_minute == 5


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic abc", SECRET_ENV, "Bearer sk-wrong"]
)
def test_missing_or_invalid_key_is_unauthorized_without_echoing_it(
    tmp_path: Path, header: str | None
) -> None:
    with pytest.raises(Unauthorized) as info:
        ring(tmp_path).authenticate(header)
    assert "sk-" not in str(info.value)


def test_only_digests_are_kept(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    state = repr(vars(keys))
    for secret in (SECRET_ENV, SECRET_FILE, SECRET_HASHED):
        assert secret not in state
        assert secret.encode() not in state.encode()


def test_no_auth_block_means_open_access() -> None:
    keys = KeyRing.from_auth(None)
    assert keys.open_access
    assert keys.authenticate(None) is ANONYMOUS
    assert ANONYMOUS.allows("any", "thing") and not ANONYMOUS.limited


def test_unreadable_keys_are_manifest_errors_naming_the_field(tmp_path: Path) -> None:
    auth = Auth(
        keys=(
            ApiKey(name="a", key_env="QG_UNSET", models=("*",)),
            ApiKey(name="b", key_file=tmp_path / "missing.key", models=("*",)),
        )
    )
    with pytest.raises(ManifestError) as info:
        KeyRing.from_auth(auth, environ={})
    issues = [str(issue) for issue in info.value.issues]
    assert issues[0] == (
        "manifest: auth.keys.0.key_env: environment variable QG_UNSET is not set or empty"
    )
    assert issues[1].startswith("manifest: auth.keys.1.key_file: ")


def test_two_names_for_one_key_is_an_error() -> None:
    auth = Auth(
        keys=(
            ApiKey(name="a", key_env="K1", models=("*",)),
            ApiKey(name="b", key_env="K2", models=("*",)),
        )
    )
    with pytest.raises(ManifestError, match="same key"):
        KeyRing.from_auth(auth, environ={"K1": "same", "K2": "same"})


def test_loading_logs_names_never_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = ring(tmp_path)
    with pytest.raises(Unauthorized):
        keys.authenticate("Bearer sk-guess")
    keys.authenticate(f"Bearer {SECRET_ENV}")
    assert "alice" in caplog.text
    for secret in (SECRET_ENV, SECRET_FILE, SECRET_HASHED, "sk-guess"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("patterns", "model", "variant", "allowed"),
    [
        (("*",), "tiny", "gptq", True),
        (("tiny",), "tiny", "gptq", True),
        (("tiny:*",), "tiny", "awq", True),
        (("tiny:gptq",), "tiny", "gptq", True),
        (("tiny:gptq",), "tiny", "awq", False),
        (("tiny",), "other", "base", False),
        (("other", "tiny:awq"), "tiny", "awq", True),
    ],
)
def test_model_patterns(patterns: tuple[str, ...], model: str, variant: str, allowed: bool) -> None:
    assert Principal("p", patterns).allows(model, variant) is allowed
