"""The job queue with the fake worker: dedup, concurrency, cancel, kill, restart, progress.

The fake (tests/fakes/fake_quantizer.py) speaks the worker's protocol and quantizes nothing;
these tests are about the job logic only. Real builds: tests/test_quantization.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import FAKES, fake_worker
from serving.errors import InvalidRecipe, JobFailed, JobFinished
from serving.job import Job, JobState
from serving.jobs import JobRunner
from serving.manifest import Model
from serving.store import VariantStore


def make_model(model_dir: Path) -> Model:
    variants = {
        "gptq": {"method": "gptq"},
        "gptq-again": {"method": "gptq"},  # the same recipe under another name
        "rtn": {"method": "rtn"},
        "bad-group": {"method": "rtn", "group_size": 512},
    }
    return Model.model_validate(
        {"source": model_dir, "default_variant": "gptq", "variants": variants}
    )


def make_runner(tmp_path: Path, max_concurrent: int = 1) -> tuple[JobRunner, VariantStore]:
    store = VariantStore(tmp_path / "cache")
    return JobRunner(store, fake_worker, max_concurrent), store


async def until(check: Callable[[], bool]) -> None:
    """Poll a plain attribute of a job (no event to wait on) for up to 10 s."""
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_same_recipe_is_built_once_and_two_recipes_twice(tmp_path: Path, model_dir: Path) -> None:
    model = make_model(model_dir)
    runner, store = make_runner(tmp_path)

    async def scenario() -> None:
        jobs = [runner.submit("tiny", model, "gptq") for _ in range(20)]
        jobs.append(runner.submit("tiny", model, "gptq-again"))
        other = runner.submit("tiny", model, "rtn")
        assert len({j.id for j in jobs}) == 1 and other.id != jobs[0].id
        await until(lambda: JobState.RUNNING in (jobs[0].state, other.state))
        assert {jobs[0].state, other.state} == {JobState.RUNNING, JobState.QUEUED}  # one at a time
        await asyncio.gather(jobs[0].wait(), other.wait())

    asyncio.run(scenario())
    assert len(runner.jobs()) == 2
    assert store.is_built("tiny", model.variants["gptq"])
    assert store.is_built("tiny", model.variants["gptq-again"])  # found by its recipe
    report = store.report("tiny", model.variants["rtn"])
    assert report is not None and report["recipe"]["method"] == "rtn"
    assert report["perplexity"]["increase"] == pytest.approx(0.01)


def test_concurrency_limit_two_runs_two_at_once(tmp_path: Path, model_dir: Path) -> None:
    model = make_model(model_dir)
    runner, _ = make_runner(tmp_path, max_concurrent=2)

    async def scenario() -> None:
        a, b = runner.submit("tiny", model, "gptq"), runner.submit("tiny", model, "rtn")
        await until(lambda: a.state is b.state is JobState.RUNNING)
        await asyncio.gather(a.wait(), b.wait())

    asyncio.run(scenario())


def test_progress_and_base_perplexity_measured_once(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LAYERS", "6")
    model = make_model(model_dir)
    runner, _ = make_runner(tmp_path)

    async def scenario() -> tuple[Job, Job]:
        first = await runner.submit("tiny", model, "gptq").wait()
        return first, await runner.submit("tiny", model, "rtn").wait()

    first, second = asyncio.run(scenario())
    assert first.summary()["progress"] == {"layers_done": 6, "layers_total": 6}
    specs = [json.loads((j.log_path.parent / "spec.json").read_text()) for j in (first, second)]
    assert [s["evaluate"]["base"] for s in specs] == [True, False]  # cached after the first
    state = json.loads((first.log_path.parent / "state.json").read_text())
    assert state["state"] == "succeeded" and state["progress"]["layers_done"] == 6


def test_bad_recipe_fails_at_submit_with_no_process(tmp_path: Path, model_dir: Path) -> None:
    model = make_model(model_dir)
    runner, _ = make_runner(tmp_path)

    async def scenario() -> Job:
        job = runner.submit("tiny", model, "bad-group")
        assert job.state is JobState.FAILED and job.pid is None and job.stage == "precheck"
        with pytest.raises(InvalidRecipe, match=r"group_size 512 does not divide"):
            await job.wait()
        with pytest.raises(JobFinished, match=r"already finished \(failed: .*group_size 512"):
            await runner.cancel(job.id)
        return job

    asyncio.run(scenario())


def test_cancel_running_and_queued(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QUANT_S", "30")
    model = make_model(model_dir)
    runner, store = make_runner(tmp_path)

    async def scenario() -> tuple[Job, Job]:
        running, queued = runner.submit("tiny", model, "gptq"), runner.submit("tiny", model, "rtn")
        await until(lambda: running.pid is not None)
        await runner.cancel(queued.id)
        await runner.cancel(running.id)
        return running, queued

    running, queued = asyncio.run(scenario())
    assert (running.state, queued.state) == (JobState.CANCELLED, JobState.CANCELLED)
    with pytest.raises(JobFinished, match=r"already finished \(cancelled\)"):
        asyncio.run(runner.cancel(running.id))
    assert queued.started_at is None
    assert running.pid is not None and not _alive(running.pid)
    assert not store.is_built("tiny", model.variants["gptq"])
    assert store.staging_dirs() == []


def test_killed_worker_leaves_no_variant_and_a_clear_failure(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QUANT_S", "30")
    model = make_model(model_dir)
    runner, store = make_runner(tmp_path)

    async def scenario() -> Job:
        job = runner.submit("tiny", model, "gptq")
        await until(lambda: job.pid is not None)
        assert job.pid is not None
        os.kill(job.pid, signal.SIGKILL)
        with pytest.raises(JobFailed, match="killed by signal SIGKILL; no variant was written"):
            await job.wait()
        return job

    job = asyncio.run(scenario())
    assert job.state is JobState.FAILED
    assert not store.variant_dir("tiny", model.variants["gptq"]).exists()
    assert store.staging_dirs() == []


def test_restart_marks_running_jobs_interrupted_and_finds_built_variants(
    tmp_path: Path, model_dir: Path
) -> None:
    model = make_model(model_dir)
    runner, store = make_runner(tmp_path)
    built = asyncio.run(build(runner, model, "rtn"))
    # a gateway that died mid-build: its state says running, its worker outlived it
    orphan = Job("20260101-000000-dead", "tiny", "gptq", model.variants["gptq"].recipe_hash(),
                 model.variants["gptq"].recipe(), store.job_dir("20260101-000000-dead") / "job.log",
                 state=JobState.RUNNING, started_at=time.time())  # fmt: skip
    spec = orphan.log_path.parent / "spec.json"
    staging = store.staging_dir("tiny", model.variants["gptq"], orphan.id)
    spec.write_text(json.dumps({"source": str(model_dir), "output": str(staging),
                                "evaluate": {"base": True}}))  # fmt: skip
    env = {**os.environ, "FAKE_QUANT_S": "60"}
    worker = subprocess.Popen(
        [sys.executable, str(FAKES / "fake_quantizer.py"), str(spec)],
        env=env, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert worker.stdout is not None and worker.stdout.readline()  # it runs the job's spec now
    orphan.pid = worker.pid
    staging.mkdir()
    (orphan.log_path.parent / "state.json").write_text(json.dumps(orphan.summary()))

    restarted, _ = make_runner(tmp_path)
    assert worker.wait(10) == -signal.SIGKILL
    worker.stdout.close()
    states = {j.id: j.state for j in restarted.jobs()}
    assert states == {built.id: JobState.SUCCEEDED, orphan.id: JobState.INTERRUPTED}
    last = restarted.last("tiny", model.variants["gptq"])
    assert last is not None and "interrupted" in (last.error or "")
    assert store.staging_dirs() == [] and store.is_built("tiny", model.variants["rtn"])

    retry = asyncio.run(build(restarted, model, "gptq"))  # can be retried
    assert retry.state is JobState.SUCCEEDED


async def build(runner: JobRunner, model: Model, name: str) -> Job:
    return await runner.submit("tiny", model, name).wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_a_build_names_its_folder_by_the_variant_name(model_dir: Path, tmp_path: Path) -> None:
    runner, store = make_runner(tmp_path)
    model = make_model(model_dir)

    async def build(name: str, m: Model) -> None:
        await runner.submit("tiny", m, name).wait()

    asyncio.run(build("gptq", model))
    link = store.by_name("tiny", "gptq")
    assert link.is_symlink() and link.resolve() == store.variant_dir("tiny", model.variants["gptq"])
    assert (link / "report.json").is_file()
    # the same name with a new recipe: the link moves to the new build once it is there
    eight = {"gptq": {"method": "gptq", "bits": 8}}
    changed = Model.model_validate(
        {"source": model_dir, "default_variant": "gptq", "variants": eight}
    )
    asyncio.run(build("gptq", changed))
    assert link.resolve() == store.variant_dir("tiny", changed.variants["gptq"])
    new_dir = store.variant_dir("tiny", changed.variants["gptq"])
    assert link.readlink() == Path("..") / new_dir.name  # relative: the same on every mount
