"""The manifest's ``auth`` block: keys by reference only; errors name file, line and field."""

from __future__ import annotations

from pathlib import Path

from conftest import manifest_errors
from serving.manifest import parse_manifest

BASE = """\
version: 1
cache_dir: /tmp/cache
models:
  tiny:
    source: /models/tiny
    default_variant: base
    variants:
      base: {method: none}
      gptq: {method: gptq, bits: 4}
"""
AUTH = """\
auth:
  keys:
    - name: alice
      key_env: QG_ALICE
      models: ["*"]
      requests_per_minute: 60
      tokens_per_minute: 10000
      token_quota: 1000000
    - name: bob
      key_file: keys/bob.key
      models: [tiny, "tiny:gptq", "tiny:*"]
"""


def test_auth_block_parses_and_key_files_are_relative_to_the_manifest() -> None:
    manifest = parse_manifest(BASE + AUTH, Path("/m/ok.yaml"))
    assert manifest.auth is not None
    alice, bob = manifest.auth.keys
    assert (alice.name, alice.requests_per_minute, alice.token_quota) == ("alice", 60, 1000000)
    assert bob.key_file == Path("/m/keys/bob.key")
    assert bob.models == ("tiny", "tiny:gptq", "tiny:*")


def test_without_auth_the_gateway_is_open() -> None:
    assert parse_manifest(BASE, Path("/m/ok.yaml")).auth is None


def test_a_key_inline_is_rejected() -> None:
    text = BASE + AUTH.replace("key_env: QG_ALICE", "key: sk-inline")
    assert manifest_errors(text) == [
        "/m/bad.yaml:13: auth.keys.0.key: Extra inputs are not permitted"
    ]


def test_two_sources_are_rejected_with_the_key_line() -> None:
    text = BASE + AUTH.replace(
        "key_env: QG_ALICE", "key_env: QG_ALICE\n      key_sha256: " + "a" * 64
    )
    assert manifest_errors(text) == [
        "/m/bad.yaml:14: auth.keys.0.key_sha256: key_env is given already: give one of "
        "key_env, key_file, key_sha256"
    ]
    none = BASE + AUTH.replace("      key_env: QG_ALICE\n", "")
    assert manifest_errors(none)[0].endswith(
        "auth.keys.0: give one of key_env, key_file, key_sha256 (never the key)"
    )


def test_bad_digest_and_limits_name_their_field() -> None:
    text = BASE + AUTH.replace("key_env: QG_ALICE", "key_sha256: xyz").replace(
        "requests_per_minute: 60", "requests_per_minute: 0"
    )
    errors = manifest_errors(text)
    assert errors[0].startswith("/m/bad.yaml:13: auth.keys.0.key_sha256: String should match")
    assert errors[1].startswith("/m/bad.yaml:15: auth.keys.0.requests_per_minute: Input should")


def test_unknown_model_or_variant_in_a_key_names_its_line() -> None:
    text = BASE + AUTH.replace('[tiny, "tiny:gptq", "tiny:*"]', '[tiny, "tiny:awq", tinny]')
    assert manifest_errors(text) == [
        "/m/bad.yaml:20: auth.keys.1.models.1: 'tiny:awq' names no model or variant of this "
        "manifest",
        "/m/bad.yaml:20: auth.keys.1.models.2: 'tinny' names no model or variant of this manifest",
    ]


def test_duplicate_names_and_empty_keys() -> None:
    text = BASE + AUTH.replace("name: bob", "name: alice")
    assert manifest_errors(text) == [
        "/m/bad.yaml:18: auth.keys.1.name: is already a key's name; names must be unique"
    ]
    assert (
        "auth.keys: Tuple should have at least 1 item"
        in manifest_errors(BASE + "auth: {keys: []}\n")[0]
    )
    assert "auth.keys.0.models" in manifest_errors(BASE + AUTH.replace('["*"]', "[]"))[0]
