"""Copy a wheel without some of its files, so that the offline bundle stays small (a copy of a
few tens of MiB to the GPU host).

    python benchmarks/gpu/trim_wheel.py WHEEL OUT_DIR --drop GLOB [--drop GLOB ...]
        [--replace MEMBER=FILE ...]

Used for the GPU run of more methods (docs/benchmarks.md): bitsandbytes keeps the CUDA 13.0 library only
(the GPU host's torch is cu130; the wheel carries one per CUDA version, 129 MB), its cubins
for GPUs other than sm_90 zero-filled by benchmarks/gpu/bundle/fatbin_prune.py (``--replace``), and
vllm-gguf-plugin leaves out its CUDA extension (28 MB; its Triton kernels serve instead,
``VLLM_GGUF_USE_CUDA=0``). RECORD is rewritten for the files kept; the wheel's name stays.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import zipfile
from pathlib import Path


def trim(wheel: Path, out_dir: Path, drop: list[str], replace: dict[str, Path]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in src.infolist():
            name = info.filename
            if name == record_name or any(fnmatch.fnmatch(name, g) for g in drop):
                continue
            data = replace[name].read_bytes() if name in replace else src.read(name)
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append(f"{name},sha256={digest.decode()},{len(data)}")
        rows.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(rows) + "\n")
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--drop", action="append", default=[], help="glob of member names to leave out")
    ap.add_argument("--replace", action="append", default=[], help="MEMBER=FILE: its new content")
    args = ap.parse_args()
    replace = {m: Path(f) for m, _, f in (r.partition("=") for r in args.replace)}
    target = trim(args.wheel, args.out_dir, args.drop, replace)
    print(f"{target} {target.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
