#!/bin/bash
# Two GPUs, through Quantgate: one phase per command,
# each under 9.5 minutes and rebuilding what it needs when /tmp is empty.
#   bash benchmarks/gpu/run_2gpu.sh tp     8B bf16 with tensor parallel 2, then on 1 GPU (~6.8 min)
#   bash benchmarks/gpu/run_2gpu.sh pack   two W4A16 models, one per GPU, both served at once (~4.7 min)
# Needs .gpu/ (bash benchmarks/gpu/bundle/build.sh .gpu) and .whl/ (docs/benchmarks.md) in the checkout. Writes $OUT/results.json,
# table.md, logs.tar.gz. Nothing is installed from the network.
START=$(date +%s)
PHASE=${1:-tp}
case "$PHASE" in tp|pack) ;; *) echo "usage: $0 tp|pack"; exit 2 ;; esac
exec bash "$(dirname "$0")/phase.sh" "$PHASE" "$START"
