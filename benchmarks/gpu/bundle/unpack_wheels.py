"""Unpack every wheel in WHEELS into SITE (what `pip install --target` would do, for another Python).

For the vLLM wheel it also leaves out the libraries the offline bundle does without, stubs the
flash-attention import, and prunes the kernel library's cubins to sm_90 (see build.sh).
Usage: unpack_wheels.py WHEELS SITE
"""
import os
import shutil
import subprocess
import sys
import zipfile

SKIP = ("vllm/vllm_flash_attn/_vllm_fa", "vllm/_moe_C", "vllm/vllm-rs",
        "vllm/third_party/deep_gemm/", "vllm/third_party/fmha_sm100/")


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
    wheels, site = sys.argv[1], sys.argv[2]
    for whl in sorted(os.listdir(wheels)):
        with zipfile.ZipFile(os.path.join(wheels, whl)) as z:
            for name in z.namelist():
                out = target(name)
                if out is None:
                    continue
                out = os.path.join(site, out)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    fa = os.path.join(site, "vllm", "vllm_flash_attn")
    if os.path.isdir(fa):
        # vLLM imports its flash-attention package at start and needs one of its kernel libraries
        # (fa3 alone is 153 MB of sm_90 code). This stub satisfies the import; serve with
        # --attention-backend TRITON_ATTN so no flash-attention kernel is ever called.
        with open(os.path.join(fa, "_vllm_fa2_C.py"), "w") as f:
            f.write('"""Stub: flash-attention kernels are not carried; use --attention-backend TRITON_ATTN."""\n')
        lib = os.path.join(site, "vllm", "_C_stable_libtorch.abi3.so")
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, os.path.join(here, "fatbin_prune.py"), "prune", lib, "90", lib], check=True)


if __name__ == "__main__":
    main()
