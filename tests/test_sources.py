"""Model sources: parsing, where a GGUF or Hub source is prepared, and the jobs that prepare it
(with the fake worker: job logic only; real imports and downloads are in test_sources_served.py
and test_hub_source.py)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path

import httpx
import pytest

from conftest import AVX512, LiveServer, ServeFleet, fake_worker, manifest_errors, write_manifest
from gateway.settings import GatewaySettings
from serving.errors import InvalidRecipe, JobFailed
from serving.job import SOURCE, JobState
from serving.jobs import JobRunner
from serving.manifest import Manifest, Variant, parse_manifest
from serving.sources import ModelSource, SourceKind
from serving.store import VariantStore


def test_sources_parse_and_say_what_is_wrong() -> None:
    folder = ModelSource.parse("models/smol", Path("/srv"))
    assert (folder.kind, folder.path) == (SourceKind.FOLDER, Path("/srv/models/smol"))
    gguf = ModelSource.parse("/m/SmolLM2.Q4_1.GGUF")
    assert gguf.kind is SourceKind.GGUF
    hub = ModelSource.parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct@v1.0")
    assert (hub.repo, hub.revision, str(hub)) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "v1.0", "hf://HuggingFaceTB/SmolLM2-135M-Instruct@v1.0"
    )  # fmt: skip
    assert hub.checkpoint(Path("/c")) == Path(
        "/c/.sources/hf-HuggingFaceTB--SmolLM2-135M-Instruct--v1.0"
    )
    assert ModelSource.parse("hf://a/b").recipe()["revision"] is None
    for bad, why in [
        ("hf://just-a-name", "hf://org/name[@revision]"),
        ("s3://bucket/model", "a local path or hf://"),
        ("hf://a/b@no spaces", "not a branch, tag or commit"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            ModelSource.parse(bad)


def test_manifest_errors_name_line_and_field() -> None:
    text = """\
version: 1
cache_dir: /c
models:
  m:
    source: hf://nope
    default_variant: base
    variants: {base: {method: none}}
  n:
    source: /models/n
    source_token_env: MY_TOKEN
    default_variant: base
    variants: {base: {method: none}}
"""
    assert manifest_errors(text) == [
        "/m/bad.yaml:5: models.m.source: 'hf://nope': a Hub source is hf://org/name[@revision]",
        "/m/bad.yaml:10: models.n.source_token_env: is for hf:// sources",
    ]


def gguf_manifest(tmp_path: Path, gguf: Path) -> Manifest:
    text = f"""
version: 1
cache_dir: {tmp_path / "cache"}
models:
  tiny:
    source: {gguf.name}
    default_variant: base
    serve: {{startup_timeout_s: 30}}
    variants:
      base: {{method: none}}
      rtn: {{method: rtn, bits: 4}}
"""
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    return parse_manifest(text, path)


def test_a_gguf_source_is_prepared_once_under_its_hash(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake bytes")
    manifest = gguf_manifest(tmp_path, gguf)
    model = manifest.models["tiny"]
    digest = hashlib.sha256(b"GGUF fake bytes").hexdigest()
    assert model.source_path == tmp_path / "cache" / ".sources" / f"gguf-{digest[:16]}"
    runner = JobRunner(VariantStore(manifest.cache_dir), fake_worker)

    async def scenario() -> None:
        built = runner.submit("tiny", model, "rtn")  # waits for the source, then builds
        prepared = runner.prepare_source("tiny", model)
        assert prepared is not None and prepared is runner.prepare_source("tiny", model)
        assert prepared.variant == SOURCE and prepared.recipe["sha256"] == digest
        await built.wait()
        assert prepared.state is JobState.SUCCEEDED

    asyncio.run(scenario())
    assert runner.source_ready(model) and runner.prepare_source("tiny", model) is None
    report = VariantStore(manifest.cache_dir).report("tiny", model.variants["rtn"])
    assert report is not None and report["source"] == str(model.source_path)
    assert report["perplexity"]["base"]["perplexity"] == 100.0  # measured by the import, reused
    source_report = (model.source_path / "report.json").read_text()
    assert str(gguf) in source_report and f'"source_size_bytes": {gguf.stat().st_size}' in (
        source_report
    )
    # a new runner (a restart) finds the prepared source: no job
    assert JobRunner(VariantStore(manifest.cache_dir), fake_worker).source_ready(model)


def test_a_failed_import_fails_its_variants_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF, but the import fails")
    manifest = gguf_manifest(tmp_path, gguf)
    model = manifest.models["tiny"]
    runner = JobRunner(VariantStore(manifest.cache_dir), fake_worker)
    monkeypatch.setenv("FAKE_SOURCE_FAIL", "1")

    async def scenario() -> None:
        built = runner.submit("tiny", model, "rtn")
        with pytest.raises(JobFailed, match="fake import failure"):
            await built.wait()

    asyncio.run(scenario())
    assert not model.source_path.exists()
    assert list((tmp_path / "cache" / ".sources" / ".staging").iterdir()) == []
    for content, why in [(b"PK\x03\x04", "is not a GGUF file (starts b'PK"), (None, "No such")]:
        if content is None:
            gguf.unlink()  # a file that is gone
        else:
            gguf.write_bytes(content)  # a zip, say
        refused = runner.prepare_source("tiny", gguf_manifest(tmp_path, gguf).models["tiny"])
        assert refused is not None and refused.state is JobState.FAILED and refused.pid is None
        assert refused.stage == "precheck" and why in (refused.error or ""), refused.error


def test_the_base_of_a_gguf_source_is_served_from_the_import(
    tmp_path: Path, live_gateway: ServeFleet, fake_vllm_python: Path
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    manifest = gguf_manifest(tmp_path, gguf)
    server: LiveServer = live_gateway(manifest, AVX512, GatewaySettings())
    before = httpx.get(server.url + "/v1/models").json()["data"]
    assert {c["id"]: c["quantgate"]["state"] for c in before}["tiny:base"] == "missing"
    body = {"model": "tiny:base", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    jobs = httpx.get(server.url + "/admin/jobs").json()["data"]
    assert [(j["variant"], j["state"]) for j in jobs] == [(SOURCE, "succeeded")]
    variants = httpx.get(server.url + "/admin/variants").json()["data"]
    base = next(v for v in variants if v["variant"] == "base")
    assert base["state"] == "ready" and base["job"]["variant"] == SOURCE


def test_building_the_base_of_a_gguf_source_prepares_the_source(
    tmp_path: Path, live_gateway: ServeFleet
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    server: LiveServer = live_gateway(gguf_manifest(tmp_path, gguf), AVX512, GatewaySettings())
    built = httpx.post(server.url + "/admin/variants/tiny/base/build", timeout=30)
    assert built.status_code == 202, built.text
    assert built.json()["job"]["variant"] == SOURCE  # not a job for "base" itself
    deadline = time.monotonic() + 30
    while (job := httpx.get(server.url + "/admin/jobs").json()["data"][0])["state"] != "succeeded":
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.1)
    assert len(httpx.get(server.url + "/admin/jobs").json()["data"]) == 1


def test_a_group_size_the_imported_layers_refuse_fails_after_the_import(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    text = gguf_manifest(tmp_path, gguf)  # the fake import writes hidden 256, intermediate 768
    model = text.models["tiny"].model_copy(
        update={"variants": {"odd": Variant.model_validate({"method": "rtn", "group_size": 512})}}
    )
    model.bind_cache(text.cache_dir)
    runner = JobRunner(VariantStore(text.cache_dir), fake_worker)

    async def scenario() -> None:
        job = runner.submit("tiny", model, "odd")  # nothing to check against before the import
        with pytest.raises(InvalidRecipe, match="group_size 512 does not divide"):
            await job.wait()
        assert job.stage == "precheck"

    asyncio.run(scenario())
    assert runner.source_ready(model)  # the import stays; only the recipe was refused


def test_a_local_source_folder_that_is_gone_is_refused_at_once(
    tmp_path: Path, live_gateway: ServeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Served from a folder that is not there: the request is refused with the path, in far
    less than its wait, and the refusal is a log line (before, requests waited it out)."""
    gone = tmp_path / "gone"
    manifest = write_manifest(tmp_path, gone)
    server: LiveServer = live_gateway(manifest, AVX512, GatewaySettings())
    body = {"model": "tiny:base", "messages": [{"role": "user", "content": "hi"}]}
    t0 = time.monotonic()
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert time.monotonic() - t0 < 10
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "invalid_recipe"
    assert f"source {gone} does not exist" in reply.json()["error"]["message"]
    assert any("tiny:base not brought up" in r.getMessage() for r in caplog.records)
    again = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert again.json()["error"]["code"] == "invalid_recipe"


def test_an_unexpected_fault_in_a_bring_up_is_said_once_and_not_retried(
    tmp_path: Path, model_dir: Path, live_gateway: ServeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of ours while bringing a variant up (not one of the product's errors) fails
    the request at once with what happened; requests do not each try again."""
    from serving import kernels

    calls: list[Path] = []

    def broken(checkpoint: Path, at_load: object) -> object:
        calls.append(checkpoint)
        raise RuntimeError("unreadable checkpoint")

    monkeypatch.setattr(kernels, "checkpoint_scheme", broken)
    server: LiveServer = live_gateway(
        write_manifest(tmp_path, model_dir), AVX512, GatewaySettings()
    )
    body = {"model": "tiny:base", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 502, reply.text
        assert "could not be brought up: RuntimeError('unreadable checkpoint')" in reply.text
    assert len(calls) == 1
