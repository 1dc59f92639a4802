#!/bin/bash
# An offline bundle of vLLM and the quantizer for a GPU host that has Python 3.12 and CUDA torch
# 2.11 but no package access (what the GPU benchmarks ran on). Built on any Linux machine with
# PyPI access; the host then needs nothing but this folder.
#   vLLM 0.26.0 (the newest release built for torch 2.11.0+cu130), its kernel library's cubins
#   pruned to sm_90 (Hopper: H100, H200; pass other archs to fatbin_prune.py for other GPUs),
#   without flash-attention and the MoE kernels (serve with --attention-backend TRITON_ATTN),
#   plus the pure dependencies such a host lacks and Quantgate's own (quantgate-deps.txt);
#   llm-compressor 0.14 with its own
#   compressed-tensors, as a second site (it runs as its own process, as Quantgate's jobs do).
# Usage, from the repository root: bash benchmarks/gpu/bundle/build.sh .gpu
#   -> .gpu/payload.tar.xz (~56 MB), .gpu/quantizer.tar.xz (~4 MB), .gpu/install.sh.
# On the GPU host, from the repository root: `source .gpu/install.sh` unpacks both once into
# /tmp/site and /tmp/qsite and sets PYTHONPATH and QUANTIZER_PYTHONPATH.
set -euo pipefail
DEST=${1:-.gpu}; HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DEST"; DEST=$(cd "$DEST" && pwd)
WORK=${WORK:-/tmp/quantgate-gpu-build}
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp)
for n in 17 24 26 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# pack NAME REQUIREMENTS...: download wheels, unpack them into one site dir, write DEST/NAME.tar.xz
pack() {
  local name=$1; shift
  rm -rf "$WORK/$name-wheels" "$WORK/$name-site"; mkdir -p "$WORK/$name-wheels" "$WORK/$name-site"
  python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$WORK/$name-wheels" "$@"
  python3 "$HERE/unpack_wheels.py" "$WORK/$name-wheels" "$WORK/$name-site"
  chmod +x "$WORK/$name-site"/bin/* 2>/dev/null || true
  tar -C "$WORK/$name-site" -cf - . | xz -T0 -6 > "$DEST/$name.tar.xz"
}
# vLLM, what the host lacks, and Quantgate's own dependencies for `quantgate serve` on the host
# (left out: the Kubernetes client, for a cluster runs the image, which has it, and psycopg: the
# ledger is SQLite unless QUANTGATE_LEDGER_URL names PostgreSQL)
pack payload vllm==0.26.0 -r "$HERE/vllm-deps.txt" -r "$HERE/quantgate-deps.txt"
pack quantizer -r "$HERE/quantizer-deps.txt"                  # llm-compressor, its own compressed-tensors
cp "$HERE/install.sh" "$DEST/"
ls -la "$DEST"
