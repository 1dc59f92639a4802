#!/bin/bash
# The whole path on H100s, through Quantgate: one phase per command, each under 9.5 minutes and
# rebuilding what it needs when /tmp is empty. Estimates from measured start-up and build times,
# on 1 GPU / on 2 GPUs (the tuner then starts both kernels at once, on a GPU each):
#   bash benchmarks/gpu/run_h100.sh gptq   8B bf16 -> GPTQ job -> kernel tuning -> tuned launch
#                                          -> 1/16/64 streams, direct and via gateway  (~8.5 / ~6.5 min)
#   bash benchmarks/gpu/run_h100.sh awq    the same for AWQ                            (~8.7 / ~6.7 min)
#   bash benchmarks/gpu/run_h100.sh bf16   the bf16 base variant                       (~3.5 min)
#   bash benchmarks/gpu/run_h100.sh auto   GPTQ W4A16 with optimize_for: auto: 1, 64, then 1
#                                          stream, each until the kernel switches     (~9 min)
#                                          (AUTO_GPU_SHARE=0.85: the switches go by sleep;
#                                          run again on the same /tmp: no build or tuning)
# PIN=MarlinLinearKernel pins the kernel (no tuning: one vLLM start instead of two);
# OPTIMIZE_FOR=latency|throughput|balanced sets serve.optimize_for (which measured kernel serves).
# Needs .gpu/ (bash benchmarks/gpu/bundle/build.sh .gpu) and .whl/ (docs/benchmarks.md) in the checkout. Writes $OUT/results.json,
START=$(date +%s)
PHASE=${1:-gptq}
case "$PHASE" in gptq|awq|bf16|auto) ;; *) echo "usage: $0 gptq|awq|bf16|auto"; exit 2 ;; esac
exec bash "$(dirname "$0")/phase.sh" "$PHASE" "$START"
