"""The quantization worker's command line: only ``serving`` on its path, plus an extra path."""

from __future__ import annotations

from pathlib import Path

from serving.build import worker_command


def test_the_worker_sees_serving_and_the_quantizer_path_only(tmp_path: Path) -> None:
    runtime = tmp_path / ".runtime"  # the cache's (jobs) or a temporary folder (quantize)
    python = Path("/opt/quant/bin/python")
    plain = list(worker_command(python, runtime)(tmp_path / "spec.json"))
    link_dir = tmp_path / ".runtime" / "pythonpath"
    assert plain == ["env", f"PYTHONPATH={link_dir}", str(python), "-m",
                     "serving.worker.quantize", str(tmp_path / "spec.json")]  # fmt: skip
    assert (link_dir / "serving").is_symlink()
    extra = list(worker_command(python, runtime, "/tmp/qsite")(tmp_path / "spec.json"))
    assert extra[1] == f"PYTHONPATH={link_dir}:/tmp/qsite"
