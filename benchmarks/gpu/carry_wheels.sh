#!/bin/bash
# What run_methods.sh (SET=gguf) needs on the GPU host beside .gpu/, into .whl/:
# bitsandbytes (CUDA 13.0 library only, sm_90 cubins kept), vllm-gguf-plugin without its CUDA
# extension (Triton kernels serve), gguf, sentencepiece and diskcache for the machine's Python
# 3.12, llama-cpp-python's wheel from `make gguf` with one copy of each library, and llama.cpp's
# converter, and torchao without its CUDA extensions. ~8 MB, so that the copy to the GPU host
# stays small (the quantizer bundle, .gpu/quantizer.tar.xz, is not needed for this set).
#   bash benchmarks/gpu/carry_wheels.sh        (run from the repo root, after `make gguf`)
set -euo pipefail
PY=.venv/bin/python
DL=$(mktemp -d)
pip download -q --no-deps -d "$DL" bitsandbytes==0.50.2 vllm-gguf-plugin==0.0.5 gguf==0.19.0 diskcache==5.6.3 \
  torchao==0.18.0
pip download -q --no-deps --only-binary :all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d .whl sentencepiece==0.2.3
cp "$DL"/gguf-*.whl "$DL"/diskcache-*.whl .whl/
unzip -q -o -d "$DL/bnb" "$DL"/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda130.so'
python3 benchmarks/gpu/bundle/fatbin_prune.py prune "$DL/bnb/bitsandbytes/libbitsandbytes_cuda130.so" 90 "$DL/bnb130.so"
$PY benchmarks/gpu/trim_wheel.py "$DL"/bitsandbytes-*.whl .whl \
  --drop 'bitsandbytes/libbitsandbytes_cuda1[0-2]*.so' --drop 'bitsandbytes/libbitsandbytes_cuda13[1-9].so' \
  --drop 'bitsandbytes/libbitsandbytes_xpu*' --drop 'bitsandbytes/libbitsandbytes_rocm*' \
  --replace "bitsandbytes/libbitsandbytes_cuda130.so=$DL/bnb130.so"
$PY benchmarks/gpu/trim_wheel.py "$DL"/vllm_gguf_plugin-*.whl .whl \
  --drop 'vllm_gguf_plugin/_C_gguf*' --drop 'vllm_gguf_plugin/csrc/*'
$PY benchmarks/gpu/trim_wheel.py .quantgate/gguf/wheels/llama_cpp_python-*.whl .whl \
  --drop 'lib/*' --drop 'include/*' --drop 'bin/*' --drop 'llama_cpp/lib/libllama.so.0*' \
  --drop 'llama_cpp/lib/libggml*.so' --drop 'llama_cpp/lib/libggml*.so.0.*' --drop 'llama_cpp_python-*.data/*'
# torchao: Python only (int4 tile-packed runs on PyTorch's own tinygemm op) and no training parts
$PY benchmarks/gpu/trim_wheel.py "$DL"/torchao-*.whl .whl --drop 'torchao/*.so' --drop 'torchao/csrc/*' \
  --drop 'torchao/_models/*' --drop 'torchao/experimental/*' --drop 'torchao/prototype/spinquant/*' \
  --drop 'torchao/prototype/moe_training/*' --drop 'torchao/prototype/attention/*' \
  --drop 'torchao/prototype/inductor/*' --drop 'torchao/prototype/pat/*' \
  --drop 'torchao/prototype/blockwise_fp8_training/*' --drop 'torchao/prototype/parq/*' \
  --drop 'torchao/prototype/paretoq/*' --drop 'torchao/prototype/float8nocompile/*'
tar --exclude=__pycache__ -cJf .whl/llama-cpp-converter.tar.xz -C .venv-quant/share llama.cpp
rm -rf "$DL"
du -ch .whl/* | tail -1
