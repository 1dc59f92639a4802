"""The Hub source's worker (``serving/worker/hub.py``) against a local fake Hub on a real socket,
run as Quantgate runs it: a subprocess of the quantizer environment's Python."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.hub_server import HubRequest, HubServer, add_repo, serve_hub

from serving.job import SOURCE
from serving.kube import objects
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import CacheVolume
from serving.kube.workload import QuantizationWorkload
from serving.manifest import parse_manifest
from serving.worker.protocol import FAILURE, parse

ROOT = Path(__file__).resolve().parent.parent
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"
MiB = 1024 * 1024
SERVED = {
    "config.json": b'{"model_type": "llama", "hidden_size": 64}',
    "generation_config.json": b'{"max_length": 64}',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
    "tokenizer_config.json": b'{"model_max_length": 2048}',
    "special_tokens_map.json": b'{"eos_token": "</s>"}',
    "model.safetensors": os.urandom(300_000),
}
NOT_SERVED = {
    "README.md": b"# tiny\n",
    "pytorch_model.bin": os.urandom(1000),
    "original/params.json": b"{}",
    ".gitattributes": b"*.safetensors filter=lfs\n",
}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    progress: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None

    @property
    def reason(self) -> str:
        """The last line of stderr: the worker's one-line reason when it fails."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


@pytest.fixture
def python() -> Path:
    if not QUANT_PYTHON.is_file():
        pytest.fail(f"{QUANT_PYTHON} is missing: run make install")
    return QUANT_PYTHON


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    with serve_hub(tmp_path / "hub") as server:
        yield server


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def publish(hub: HubServer, tmp_path: Path, repo: str, files: dict[str, bytes], **kw: Any) -> str:
    folder = write_folder(tmp_path / "uploads" / repo / str(time.monotonic_ns()), files)
    return add_repo(hub.root, repo, folder, **kw)


def worker_env(endpoint: str, tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env |= {"PYTHONPATH": str(ROOT), "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")}
    return env | {"HF_HUB_DISABLE_TELEMETRY": "1"} | extra


def command(python: Path, repo: str, revision: str, dest: Path, token_env: str | None) -> list[str]:
    args = [str(python), "-m", "serving.worker.hub", repo, revision, str(dest)]
    return args + (["--token-env", token_env] if token_env else [])


def fetch(
    python: Path,
    endpoint: str,
    tmp_path: Path,
    repo: str,
    revision: str = "main",
    dest: Path | None = None,
    token_env: str | None = None,
    **env: str,
) -> Run:
    completed = subprocess.run(
        command(python, repo, revision, dest or tmp_path / "dest", token_env),
        env=worker_env(endpoint, tmp_path, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    run = Run(completed.returncode, completed.stdout, completed.stderr)
    for line in completed.stdout.splitlines():
        parsed = parse(line)
        if parsed is not None and parsed[0] == "progress":
            run.progress.append(parsed[1])
        elif parsed is not None:
            run.result = parsed[1]
    return run


def succeeded(run: Run) -> dict[str, Any]:
    assert run.code == 0, run.stderr
    assert run.result is not None, run.stdout
    return run.result


def failed(run: Run, message: str) -> None:
    assert run.code == 2, (run.code, run.stdout, run.stderr)
    assert run.reason.startswith(FAILURE), run.stderr
    assert message in run.reason, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def downloaded(dest: Path) -> dict[str, bytes]:
    """The files in ``dest`` but huggingface_hub's records under ``.cache``."""
    files = (p for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in files}


def bodies(requests: list[HubRequest]) -> list[HubRequest]:
    """The requests that transfer a file's content."""
    return [r for r in requests if r.method == "GET" and not r.path.startswith("/api/")]


def test_only_the_serving_files_arrive_byte_identical(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    commit = publish(hub, tmp_path, "org/tiny", SERVED | NOT_SERVED)
    result = succeeded(fetch(python, hub.url, tmp_path, "org/tiny"))
    assert downloaded(tmp_path / "dest") == SERVED
    assert result == {
        "repo": "org/tiny",
        "revision": "main",
        "commit": commit,
        "endpoint": hub.url,
        "files": sorted(SERVED),
        "bytes": sum(len(data) for data in SERVED.values()),
    }
    asked = {r.path.rsplit("/", 1)[-1] for r in hub.requests if "/resolve/" in r.path}
    assert asked == set(SERVED)
    assert all(f"/resolve/{commit}/" in r.path for r in hub.requests if "/resolve/" in r.path)
    weights = [r for r in bodies(hub.requests) if r.path.startswith("/cdn/")]
    assert weights and all(r.authorization is None for r in weights)  # no token to the CDN


def test_progress_counts_files_and_bytes(python: Path, hub: HubServer, tmp_path: Path) -> None:
    publish(hub, tmp_path, "org/tiny", SERVED)
    run = fetch(python, hub.url, tmp_path, "org/tiny")
    succeeded(run)
    total = sum(len(data) for data in SERVED.values())
    assert run.progress[0] == {
        "stage": "download",
        "files_done": 0,
        "files_total": len(SERVED),
        "bytes_done": 0,
        "bytes_total": total,
        "file": None,
    }
    assert [p["files_done"] for p in run.progress] == list(range(len(SERVED) + 1))
    assert run.progress[-1]["bytes_done"] == total
    assert {p["file"] for p in run.progress[1:]} == set(SERVED)


def test_a_branch_and_a_commit_resolve_to_their_own_files(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    first = publish(hub, tmp_path, "org/tiny", SERVED)
    changed = SERVED | {"config.json": b'{"model_type": "llama", "hidden_size": 128}'}
    dev = publish(hub, tmp_path, "org/tiny", changed, branch="dev")
    newer = publish(hub, tmp_path, "org/tiny", SERVED | {"model.safetensors": b"newer"})

    on_dev = succeeded(fetch(python, hub.url, tmp_path, "org/tiny", "dev", tmp_path / "dev"))
    assert (on_dev["revision"], on_dev["commit"]) == ("dev", dev)
    assert downloaded(tmp_path / "dev") == changed

    pinned = succeeded(fetch(python, hub.url, tmp_path, "org/tiny", first, tmp_path / "first"))
    assert (pinned["revision"], pinned["commit"]) == (first, first)
    assert downloaded(tmp_path / "first") == SERVED

    default = succeeded(fetch(python, hub.url, tmp_path, "org/tiny", "", tmp_path / "default"))
    assert (default["revision"], default["commit"]) == ("main", newer)
    assert (tmp_path / "default" / "model.safetensors").read_bytes() == b"newer"


def test_a_second_fetch_into_the_same_folder_transfers_nothing(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    commit = publish(hub, tmp_path, "org/tiny", SERVED)
    succeeded(fetch(python, hub.url, tmp_path, "org/tiny"))
    assert len(bodies(hub.requests)) >= len(SERVED)
    seen = len(hub.requests)
    again = succeeded(fetch(python, hub.url, tmp_path, "org/tiny"))
    assert again["commit"] == commit
    assert [r.path for r in hub.requests[seen:]] == ["/api/models/org/tiny/revision/main"]
    assert downloaded(tmp_path / "dest") == SERVED


def test_an_interrupted_download_resumes_where_it_stopped(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    # huggingface_hub writes a body to disk 10 MiB at a time: stall after 11 MiB of 12.
    weights = os.urandom(12 * MiB)
    publish(hub, tmp_path, "org/big", SERVED | {"model.safetensors": weights})
    dest = tmp_path / "dest"
    stall = hub.stall("model.safetensors", after=11 * MiB)
    worker = subprocess.Popen(
        command(python, "org/big", "main", dest, None),
        env=worker_env(hub.url, tmp_path, {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert stall.reached.wait(60), "the download never reached the stall"
        deadline = time.monotonic() + 30
        while max((p.stat().st_size for p in dest.rglob("*") if p.is_file()), default=0) < 10 * MiB:
            assert time.monotonic() < deadline, "no partial file was written"
            time.sleep(0.05)
    finally:
        worker.kill()  # as a crash or a lost machine would
        worker.wait(10)
        stall.release.set()
    seen = len(hub.requests)

    succeeded(fetch(python, hub.url, tmp_path, "org/big"))
    assert (dest / "model.safetensors").read_bytes() == weights
    cdn = [r for r in bodies(hub.requests[seen:]) if r.path.startswith("/cdn/")]
    assert [r.path.rsplit("/", 1)[-1] for r in cdn] == ["model.safetensors"]
    assert cdn[0].range is not None, "the weights were downloaded again from the start"
    assert int(cdn[0].range.removeprefix("bytes=").split("-")[0]) >= 10 * MiB


def test_only_the_shards_the_index_names_are_downloaded(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    shards = {f"model-0000{i}-of-00002.safetensors": os.urandom(1000) for i in (1, 2)}
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}
    index["weight_map"]["b"] = "model-00002-of-00002.safetensors"
    files = {k: v for k, v in SERVED.items() if k != "model.safetensors"} | shards
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    publish(hub, tmp_path, "org/sharded", files | {"consolidated.safetensors": b"x" * 5000})
    result = succeeded(fetch(python, hub.url, tmp_path, "org/sharded"))
    assert downloaded(tmp_path / "dest") == files
    assert result["files"] == sorted(files)


def test_a_private_repository_is_read_with_the_named_token(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    commit = publish(hub, tmp_path, "org/private", SERVED, token="hf_right")
    run = fetch(
        python, hub.url, tmp_path, "org/private", token_env="ORG_TOKEN", ORG_TOKEN="hf_right"
    )
    assert succeeded(run)["commit"] == commit
    assert downloaded(tmp_path / "dest") == SERVED


def test_offline_the_files_come_from_the_hf_cache(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    commit = publish(hub, tmp_path, "org/tiny", SERVED | NOT_SERVED)
    seed = "from huggingface_hub import snapshot_download; snapshot_download('org/tiny')"
    env = worker_env(hub.url, tmp_path, {})
    subprocess.run([str(python), "-c", seed], env=env, check=True, capture_output=True)
    seen = len(hub.requests)
    run = fetch(python, hub.url, tmp_path, "org/tiny", HF_HUB_OFFLINE="1")
    assert succeeded(run)["commit"] == commit
    assert downloaded(tmp_path / "dest") == SERVED
    assert hub.requests[seen:] == []


def test_a_kubernetes_download_job_reaches_the_hub_from_the_offline_image(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    """The quantizer image sets the Hub offline; a download Job's own variables win."""
    dockerfile = (ROOT / "helm" / "images" / "quantizer.Dockerfile").read_text()
    image = dict(re.findall(r"\b(\w+_OFFLINE)=(\S+)", dockerfile))
    assert image["HF_HUB_OFFLINE"] == "1"
    model = parse_manifest(
        "cache_dir: /c\nmodels:\n  m:\n    source: hf://org/tiny\n    default_variant: b\n"
        "    variants: {b: {method: none}}\n",
        Path("/m.yaml"),
    ).models["m"]
    volume = CacheVolume("cache", Path("/c"))
    job = QuantizationWorkload.of("j1", "m", model, SOURCE, Path("/c/.jobs/j1/spec.json"),
                                  volume, model.origin.recipe())  # fmt: skip
    env = objects.quantizer_env(job, KubernetesSettings())
    commit = publish(hub, tmp_path, "org/tiny", SERVED)
    run = fetch(
        python, hub.url, tmp_path, "org/tiny", **(image | {e.name: str(e.value) for e in env})
    )
    assert succeeded(run)["commit"] == commit
    assert downloaded(tmp_path / "dest") == SERVED


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_no_such_repository(python: Path, hub: HubServer, tmp_path: Path) -> None:
    failed(
        fetch(python, hub.url, tmp_path, "nobody/nothing"),
        f"hf://nobody/nothing: no such repository on {hub.url} "
        "(or it is private: set HF_TOKEN to a token that can read it)",
    )


def test_a_private_repository_without_a_token_names_the_variable(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    publish(hub, tmp_path, "org/private", SERVED, token="hf_right")
    failed(
        fetch(python, hub.url, tmp_path, "org/private", token_env="ORG_TOKEN"),
        f"hf://org/private: no such repository on {hub.url} "
        "(or it is private: set ORG_TOKEN to a token that can read it)",
    )


def test_a_wrong_token_is_reported_with_its_variable(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    publish(hub, tmp_path, "org/private", SERVED, token="hf_right")
    run = fetch(python, hub.url, tmp_path, "org/private", token_env="ORG_TOKEN", ORG_TOKEN="hf_no")
    failed(run, f"{hub.url} refused the token in ORG_TOKEN (401: Invalid credentials")
    assert run.reason.endswith("set ORG_TOKEN to a valid token")


def test_a_gated_repository_without_a_token(python: Path, hub: HubServer, tmp_path: Path) -> None:
    publish(hub, tmp_path, "org/gated", SERVED, token="hf_right", gated=True)
    failed(
        fetch(python, hub.url, tmp_path, "org/gated"),
        f"hf://org/gated is gated on {hub.url}: set HF_TOKEN to a token that was granted access",
    )


def test_a_missing_revision(python: Path, hub: HubServer, tmp_path: Path) -> None:
    publish(hub, tmp_path, "org/tiny", SERVED)
    failed(
        fetch(python, hub.url, tmp_path, "org/tiny", "v9"),
        f"hf://org/tiny has no revision 'v9' on {hub.url}",
    )


def test_offline_with_nothing_cached(python: Path, hub: HubServer, tmp_path: Path) -> None:
    publish(hub, tmp_path, "org/tiny", SERVED)
    failed(
        fetch(python, hub.url, tmp_path, "org/tiny", HF_HUB_OFFLINE="1"),
        f"cannot reach {hub.url} (HF_HUB_OFFLINE is set) and hf://org/tiny@main is not in the "
        f"cache ({tmp_path / 'hf' / 'hub'})",
    )
    assert hub.requests == []


def test_an_unreachable_endpoint_with_nothing_cached(python: Path, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    run = fetch(python, endpoint, tmp_path, "org/tiny")
    failed(run, f"cannot reach {endpoint} (ConnectError: ")
    assert "and hf://org/tiny@main is not in the cache" in run.reason


def test_a_silent_endpoint_times_out(python: Path, tmp_path: Path) -> None:
    with socket.socket() as silent:  # connections complete in the backlog; nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        run = fetch(python, endpoint, tmp_path, "org/tiny", HF_HUB_ETAG_TIMEOUT="1")
    failed(run, f"cannot reach {endpoint} (ReadTimeout: ")
    assert time.monotonic() - started < 30


def test_a_repository_without_safetensors_is_refused(
    python: Path, hub: HubServer, tmp_path: Path
) -> None:
    old = {"config.json": b"{}", "pytorch_model.bin": b"\x80\x02", "tokenizer.json": b"{}"}
    publish(hub, tmp_path, "org/old", old)
    failed(
        fetch(python, hub.url, tmp_path, "org/old"),
        "hf://org/old@main has no safetensors weights (files: config.json, pytorch_model.bin, "
        "tokenizer.json); Quantgate serves safetensors checkpoints",
    )
    assert bodies(hub.requests) == []


def test_a_folder_that_cannot_be_written(python: Path, hub: HubServer, tmp_path: Path) -> None:
    publish(hub, tmp_path, "org/tiny", SERVED)
    (tmp_path / "file").write_text("not a folder")
    failed(
        fetch(python, hub.url, tmp_path, "org/tiny", dest=tmp_path / "file" / "dest"),
        f"cannot write {tmp_path / 'file' / 'dest'}: [Errno 20] Not a directory",
    )


def test_the_fake_hub_serves_what_it_was_given(hub: HubServer, tmp_path: Path) -> None:
    """The fake's own answers, read without huggingface_hub (its HEAD and Range paths)."""
    import httpx

    commit = publish(hub, tmp_path, "org/tiny", SERVED)
    head = httpx.head(f"{hub.url}/org/tiny/resolve/main/config.json")
    git = hashlib.sha1(b"blob %d\0" % len(SERVED["config.json"]) + SERVED["config.json"])
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["ETag"] == f'"{git.hexdigest()}"'
    assert head.headers["Content-Length"] == str(len(SERVED["config.json"]))
    redirect = httpx.get(f"{hub.url}/org/tiny/resolve/{commit}/model.safetensors")
    assert redirect.status_code == 302
    sha256 = hashlib.sha256(SERVED["model.safetensors"]).hexdigest()
    assert redirect.headers["X-Linked-Etag"] == f'"{sha256}"'
    tail = httpx.get(redirect.headers["Location"], headers={"Range": "bytes=299990-"})
    assert (tail.status_code, tail.content) == (206, SERVED["model.safetensors"][299990:])
    leaked = httpx.get(redirect.headers["Location"], headers={"Authorization": "Bearer x"})
    assert leaked.status_code == 400
    missing = httpx.head(f"{hub.url}/org/tiny/resolve/main/nope.json")
    assert (missing.status_code, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
