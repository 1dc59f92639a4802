"""Unpack every wheel in WHEELS into SITE (what `pip install --target` would do, for another Python).

For the vLLM wheel it also leaves out the libraries the offline bundle does without, stubs the
flash-attention import, and prunes the kernel library's cubins to sm_90 (see build.sh).
Usage: unpack_wheels.py WHEELS SITE
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

SKIP = (
    "vllm/vllm_flash_attn/_vllm_fa",
    "vllm/_moe_C",
    "vllm/vllm-rs",
    "vllm/third_party/deep_gemm/",
    "vllm/third_party/fmha_sm100/",
)


def target(name: str) -> str | None:
    """Where a wheel member goes in the site dir; None to leave it out."""
    if name.endswith("/") or name.startswith(SKIP) or "/__pycache__/" in name:
        return None
    top, _, rest = name.partition("/")
    if not top.endswith(".data"):
        return name
    kind, _, path = rest.partition("/")
    return {"purelib": path, "platlib": path, "scripts": "bin/" + path}.get(kind)


def main() -> None:
    wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
    for whl in sorted(wheels.iterdir()):
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                member = target(name)
                if member is None:
                    continue
                out = site / member
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(name) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    fa = site / "vllm" / "vllm_flash_attn"
    if fa.is_dir():
        # vLLM imports its flash-attention package at start and needs one of its kernel libraries
        # (fa3 alone is 153 MB of sm_90 code). This stub satisfies the import; serve with
        # --attention-backend TRITON_ATTN so no flash-attention kernel is ever called.
        (fa / "_vllm_fa2_C.py").write_text(
            '"""Stub: no flash-attention kernels here; use --attention-backend TRITON_ATTN."""\n'
        )
        lib = str(site / "vllm" / "_C_stable_libtorch.abi3.so")
        prune = Path(__file__).resolve().parent / "fatbin_prune.py"
        subprocess.run([sys.executable, str(prune), "prune", lib, "90", lib], check=True)


if __name__ == "__main__":
    main()
